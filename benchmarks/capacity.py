"""What one API worker costs per user and per item: the measurements behind docs/scaling.md.

For each (users, items) probe an artifact is written with ``service.artifact.write_artifact``
(64 factors, seeded random factors, ``--history`` distinct items per user, Zipf popularity:
the costs measured here depend on the sizes, not on what the vectors mean), then a fresh
child process loads it as a worker does (``load_artifact(mmap=False)``, ``prepare`` with the
service's default ``candidates_per_user`` and ``precompute_max_cells``) and reports:

- ``artifact_bytes``: the version's files; ``load_seconds``: load and prepare;
- ``rss_before_mib`` / ``rss_after_mib`` / ``peak_mib``: the child's resident memory after a
  worker's imports (``service.app``), once the model is prepared, and its peak (``VmHWM``: the
  load's buffers, while the version is read and checked);
- ``precomputed``: whether candidates were precomputed (users x items within the limit), and
  ``candidates_bytes``: their arrays' size;
- per request, in process on one thread (``Recommender.recommend``, limit 10): ``known`` (a
  user of the model) and ``session`` (an unknown user with 3 recent views: the fold-in),
  ``cpu_us`` (median process CPU time; the BLAS libraries limited to one thread, so that is
  one core's), ``p50_ms`` and ``p99_ms`` (wall).

The HTTP part of a request (parsing, the key check, the middleware, the JSON) is measured by
``benchmarks.experiment_serving`` (server CPU per request); docs/scaling.md adds the two.

    python -m benchmarks.capacity                      # the default probes
    python -m benchmarks.capacity --probes 20k:5k --requests 50   # a quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, ROOT, WORK, save, this_command

FACTORS = 64
DEFAULT_PROBES = "20k:5k,100k:20k,1m:20k,100k:200k,10k:1m"
DEFAULT_HISTORY = 10
# one core: the BLAS libraries' own threads off, so a request's CPU is one thread's
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def write_probe(root: Path, users: int, items: int, history: int, seed: int = 0) -> Path:
    """A model version of ``users`` x ``items`` under ``root`` (replaced when present)."""
    from service.artifact import ManifestBody, write_artifact

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    per_user = min(history, items)
    # distinct items per user: a random start and stride (stride x per_user <= items)
    start = rng.integers(0, items, size=(users, 1))
    stride = rng.integers(1, max(2, items // per_user + 1), size=(users, 1))
    rows = (start + np.arange(per_user)[None, :] * stride) % items
    indices = np.sort(rows, axis=1).astype(np.int32).ravel()
    popularity = (items / np.arange(1, items + 1)).astype(np.float32)
    arrays = {
        "user_ids": np.array([f"u{i:08d}" for i in range(users)]),
        "item_ids": np.array([f"i{i:07d}" for i in range(items)]),
        "user_factors": rng.standard_normal((users, FACTORS), dtype=np.float32) * 0.1,
        "item_factors": rng.standard_normal((items, FACTORS), dtype=np.float32) * 0.1,
        "history_indptr": np.arange(0, users * per_user + 1, per_user, dtype=np.int64),
        "history_indices": indices,
        "history_counts": np.ones(users * per_user, dtype=np.float32),
        "history_age_days": rng.uniform(0, 365, users * per_user).astype(np.float32),
        "popularity": popularity,
        "trending": popularity[rng.permutation(items)],
    }
    recipe = {"weights": {"als": 1.0, "repeat": 0.5, "popularity": 0.1}}
    body = ManifestBody.model_validate(
        {
            "created_at": datetime.now(UTC),
            "reference_time": datetime(2026, 12, 1),
            "counts": {"users": users, "items": items, "factors": FACTORS},
            "recipes": {"all": recipe, "novel": recipe},
            "served": {"all": "probe", "novel": "probe"},
            "metrics": {"test": {}},
            "engine": {"name": "benchmark-probe", "fit": "random"},
        }
    )
    return write_artifact(root, "probe", arrays, body)


def _rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024
    return float("nan")


def child(path: Path, requests: int) -> dict[str, Any]:
    """Load ``path`` as a worker does and time requests on one core."""
    import service.app  # noqa: F401  (a worker's imports: its resident set before any model)
    from service.activity.records import Activity
    from service.artifact import load_artifact
    from service.recommend.recommender import Query, Recommender
    from service.recommend.serving import prepare
    from service.settings import Settings

    settings = Settings(model_dir=path.parent.parent, auth_disabled=True)
    before = _rss_mib()
    started = time.perf_counter()
    artifact = load_artifact(path, mmap=False)
    model = prepare(
        artifact,
        candidates_per_user=settings.candidates_per_user,
        precompute_max_cells=settings.precompute_max_cells,
    )
    recommender = Recommender(model)
    load_seconds = time.perf_counter() - started
    after = _rss_mib()
    rng = np.random.default_rng(1)
    now = datetime(2026, 12, 1, 12)
    kinds: dict[str, dict[str, float]] = {}
    for kind in ("known", "session"):
        cpu, wall = [], []
        recent: tuple[Activity, ...]
        for n in range(requests):
            if kind == "known":
                query, recent = Query(user_id=f"u{n % len(model.user_index):08d}"), ()
            else:
                query = Query(user_id=f"visitor-{n}")
                views = rng.integers(0, model.n_items, 3)
                recent = tuple(
                    Activity(
                        item_id=model.item_labels[int(i)],
                        type="view",
                        ts=now - timedelta(minutes=5),
                    )
                    for i in views
                )
            t0, c0 = time.perf_counter(), time.process_time()
            result = recommender.recommend(query, recent, now=now)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            assert result.source == ("model" if kind == "known" else "session"), result.source
        wall_ms = sorted(w * 1000 for w in wall)
        kinds[kind] = {
            "cpu_us": round(statistics.median(cpu) * 1e6, 1),
            "p50_ms": round(statistics.median(wall_ms), 3),
            "p99_ms": round(wall_ms[min(len(wall_ms) - 1, int(0.99 * len(wall_ms)))], 3),
            "requests": requests,
        }
    return {
        "artifact_bytes": sum(spec.bytes for spec in artifact.manifest.arrays.values()),
        "load_seconds": round(load_seconds, 2),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "peak_mib": round(_rss_mib("VmHWM"), 1),
        "precomputed": bool(model.candidates),
        "candidates_bytes": sum(a.nbytes + b.nbytes for a, b in model.candidates.values()),
        "precompute_max_cells": settings.precompute_max_cells,
        "candidates_per_user": settings.candidates_per_user,
        **kinds,
    }


def probe(users: int, items: int, history: int, requests: int) -> dict[str, Any]:
    root = WORK / "capacity" / f"{users}x{items}"
    path = write_probe(root, users, items, history)
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks.capacity", "--child", str(path), "--requests", str(requests)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **ONE_THREAD},
    )
    shutil.rmtree(root, ignore_errors=True)
    measured: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"users": users, "items": items, "history_per_user": history, **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", default=DEFAULT_PROBES, help="users:items,... (k, m)")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.requests)))
        return
    probes = []
    for spec in args.probes.split(","):
        users, items = (_count(part) for part in spec.split(":"))
        row = probe(users, items, args.history, args.requests)
        print(json.dumps(row), file=sys.stderr)
        probes.append(row)
    path = save("capacity", this_command(), {"factors": FACTORS, "probes": probes})
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md (docs/scaling.md uses the same file)."""
    m = doc["machine"]
    out = [
        "## Capacity probes: one worker's cost per user and per item",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs (shared, busy). "
        f"Command: `{doc['command']}`",
        "",
        f"Artifacts of {doc['factors']} seeded random factors written with `write_artifact`, each "
        "loaded by a fresh process as a worker does (owned, checked, prepared with the default "
        "settings); requests in process on one core (BLAS limited to one thread). "
        "docs/scaling.md derives the capacity page from these.",
        "",
        "| users x items | artifact (MiB) | RSS after imports / prepared / peak (MiB) | load (s) "
        "| precomputed | known: CPU µs, p50 / p99 ms | session: CPU µs |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for p in doc["probes"]:
        k, s = p["known"], p["session"]
        out.append(
            f"| {p['users']:,} x {p['items']:,} | {p['artifact_bytes'] / 2**20:,.1f} | "
            f"{p['rss_before_mib']:,.0f} / {p['rss_after_mib']:,.0f} / {p['peak_mib']:,.0f} | "
            f"{p['load_seconds']:.1f} | {'yes' if p['precomputed'] else 'no'} | "
            f"{k['cpu_us']:,.0f}, {k['p50_ms']:.2f} / {k['p99_ms']:.2f} | {s['cpu_us']:,.0f} |"
        )
    return [*out, ""]
