"""The API workers' memory with the model memory-mapped (an earlier commit) and owned (this
tree), side by side on the same Online Retail model.

Since issue 11, item 9 the service reads each model file once into memory it owns instead of
mapping it, so a file changed in place cannot kill it with SIGBUS. A mapped file's pages are
shared by every worker (one copy in the page cache); owned arrays are one copy per worker. This
measures what that costs: ``python -m service --workers N`` of each tree (the earlier one
exported with ``git archive``), after 500 requests of every kind of user, the resident set
(RSS) of each worker and the proportional set (PSS: shared pages split between the processes
that map them) summed over the whole server, the figure that adds up to the machine's memory.
Trees take turns (A B B A ...), ``--rounds`` each; medians.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.against_commit import export, in_tree, warm
from benchmarks.api_latency import DATA, recommendation_paths
from benchmarks.common import PYTHON, ROOT, WORK, save, this_command
from benchmarks.harness import FRONTEND_KEY, HOST, Server, fresh_sqlite
from service.artifact import ModelStore, load_artifact

DEFAULT_BASELINE = "9efaacd"  # main before item 9: the model memory-mapped


def model_root() -> Path:
    """An Online Retail model (untuned: the arrays are what matters), trained once."""
    root = WORK / "models-or-memory"
    if ModelStore(root).current() is None:
        command = [PYTHON, "-m", "training.cli", "train", "--data", str(DATA)]
        command += ["--format", "online-retail", "--model-dir", str(root), "--tune-seconds", "0"]
        subprocess.run(command, cwd=ROOT, check=True)
    return root


def service_in(tree: Path, workers: int, port: int) -> list[str]:
    argv = [PYTHON, "-m", "service", "--host", HOST, "--port", str(port)]
    return in_tree(tree, [*argv, "--workers", str(workers)])


def _kib(pid: int, file: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/{file}")


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *_descendants(int(child))]
    return out


def memory_of(server: Server, workers: int) -> dict[str, Any]:
    """RSS of each worker and PSS of the whole server (master, workers, helpers), in MiB."""
    everyone = [server.proc.pid, *_descendants(server.proc.pid)]
    if workers == 1:
        worker_pids = [server.proc.pid]
    else:
        worker_pids = [
            pid
            for pid in everyone[1:]
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
    if len(worker_pids) != workers:
        raise RuntimeError(f"found {len(worker_pids)} workers, not {workers}")
    rss = [_kib(pid, "status", "VmRSS") / 1024 for pid in worker_pids]
    pss = sum(_kib(pid, "smaps_rollup", "Pss") for pid in everyone) / 1024
    return {"worker_rss_mib": [round(r, 1) for r in rss], "server_pss_mib": round(pss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=2, help="servers per tree and workers")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    baseline = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    trees = {f"{baseline} (mapped)": export(baseline), "this tree (owned)": ROOT}
    root = model_root()
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    model_mib = sum(spec.bytes for spec in artifact.manifest.arrays.values()) / 2**20
    users = [str(u) for u in artifact.arrays["user_ids"]]
    items = [str(i) for i in artifact.arrays["item_ids"]]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {w: [] for w in args.workers} for name in trees
    }
    with fresh_sqlite("serving-memory") as url:
        paths = recommendation_paths(url, users, items)
        env = {
            "RECOFFER_MODEL_DIR": str(root),
            "RECOFFER_DATABASE_URL": url,
            "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
            "RECOFFER_LOG_LEVEL": "WARNING",
            "RECOFFER_ACCESS_LOG": "false",
        }
        for workers in args.workers:
            order = [n for r in range(args.rounds) for n in list(trees)[:: 1 - 2 * (r % 2)]]
            for name in order:
                command = functools.partial(service_in, trees[name], workers)
                with Server(env, command=command) as server:
                    # spread over the workers: each connection lands on one of them
                    for _ in range(2 * workers):
                        warm(server, paths, requests=500 // workers)
                    figures = memory_of(server, workers)
                runs[name][workers].append(figures)
                print(name, f"{workers} worker(s)", figures, flush=True)
    summary = {
        name: {
            str(w): {
                "worker_rss_mib": statistics.median(
                    statistics.median(r["worker_rss_mib"]) for r in per
                ),
                "server_pss_mib": statistics.median(r["server_pss_mib"] for r in per),
            }
            for w, per in by_workers.items()
        }
        for name, by_workers in runs.items()
    }
    save(
        "serving_memory",
        this_command(),
        {
            "baseline": baseline,
            "model_version": artifact.version,
            "model_files_mib": round(model_mib, 1),
            "runs": runs,
            "medians": summary,
        },
    )
    print(f"model files {model_mib:.1f} MiB")
    print("| tree | workers | RSS per worker (MiB) | PSS of the server (MiB) |")
    print("|---|---:|---:|---:|")
    for name, by_workers in summary.items():
        for w, m in by_workers.items():
            print(f"| {name} | {w} | {m['worker_rss_mib']:.1f} | {m['server_pss_mib']:.1f} |")


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    m = doc["machine"]
    out = [
        "## Serving memory: model arrays owned by each worker",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs. "
        f"Command: `{doc['command']}`",
        "",
        f"`python -m service --workers N` serving the Online Retail model "
        f"({doc['model_files_mib']} MiB of files), `{doc['baseline']}` (arrays memory-mapped) "
        "against this tree (each file read once into the worker's own memory, so a file changed "
        "in place cannot crash it), medians of the runs:",
        "",
        "| tree | workers | RSS per worker (MiB) | PSS of the whole server (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for tree, by_workers in doc["medians"].items():
        for workers, row in sorted(by_workers.items()):
            out.append(
                f"| {tree} | {workers} | {row['worker_rss_mib']:.1f} | "
                f"{row['server_pss_mib']:.1f} |"
            )
    out += [
        "",
        "Each worker's RSS is unchanged; the machine's total (PSS) grows by about one model's "
        "files per extra worker, since workers no longer share the mapped pages.",
        "",
    ]
    return out


if __name__ == "__main__":
    main()
