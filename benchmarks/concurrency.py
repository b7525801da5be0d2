"""Recommendation latency percentiles and throughput against concurrency 1..64, with plots.

One uvicorn worker (service.app) pinned to CPU 0 on the Online Retail model (the one
benchmarks.api_latency trains); wrk pinned to CPU 1, closed loop: `c` connections each send
the next request as soon as the previous answer arrives, for known users (source model),
session users (8 recent views folded in) and unknown users (popularity). Writes
benchmarks/results/concurrency.json and docs/img/api_concurrency.png.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.api_latency import model_root, recommendation_paths, wrk_script
from benchmarks.common import ROOT, WORK, save, this_command
from benchmarks.harness import FRONTEND_KEY, Server, fresh_sqlite
from service.artifact import ModelStore, load_artifact

LEVELS = (1, 2, 4, 8, 16, 32, 64)
PLOT = ROOT / "docs" / "img" / "api_concurrency.png"
PORT = 8121
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk_latency(paths: list[str], connections: int, seconds: int) -> dict[str, float]:
    """Throughput and latency percentiles of one closed-loop wrk run."""
    script = wrk_script(WORK / "wrk-concurrency.lua", paths)
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    command += ["--latency", "-s", str(script), f"http://127.0.0.1:{PORT}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = (int(errors.group(1)) if errors else 0) + (
        sum(int(g) for g in socket.groups()) if socket else 0
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(percentiles["50"]),
        "p90_ms": _ms(percentiles["90"]),
        "p99_ms": _ms(percentiles["99"]),
        "failures": failures,
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, rows in doc["kinds"].items():
        levels = [r["connections"] for r in rows]
        left.plot(levels, [r["rps"] for r in rows], marker="o", label=kind)
        line = right.plot(levels, [r["p99_ms"] for r in rows], marker="o", label=f"{kind} p99")
        right.plot(
            levels,
            [r["p50_ms"] for r in rows],
            marker=".",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{kind} p50",
        )
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(LEVELS), [str(n) for n in LEVELS])
        axis.set_xlabel("concurrent connections (closed loop)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylabel("requests per second")
    left.set_title("Throughput, one worker on one core")
    right.set_yscale("log")
    right.set_ylabel("latency (ms)")
    right.set_title("Latency percentiles")
    fig.suptitle(f"GET /v1/users/{{id}}/recommendations — {doc['date']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per level and kind")
    args = parser.parse_args()
    root = model_root()
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    users = [str(u) for u in artifact.arrays["user_ids"]]
    items = [str(i) for i in artifact.arrays["item_ids"]]
    env = {
        "RECOFFER_MODEL_DIR": str(root),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_ACCESS_LOG": "false",
    }
    results: dict[str, list[dict[str, float]]] = {}
    with fresh_sqlite("concurrency") as url:
        kinds = recommendation_paths(url, users, items)
        with Server({**env, "RECOFFER_DATABASE_URL": url}, port=PORT, cpus="0"):
            for kind, paths in kinds.items():
                wrk_latency(paths, 8, 2)  # warm-up
                results[kind] = []
                for level in LEVELS:
                    row = {"connections": level, **wrk_latency(paths, level, args.seconds)}
                    results[kind].append(row)
                    print(kind, row, flush=True)
    path = save(
        "concurrency",
        this_command(),
        {"model": artifact.version, "seconds_per_level": args.seconds, "kinds": results},
    )
    plot(json.loads(path.read_text()), PLOT)
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    out = [
        "## Recommendations against concurrency",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')}, "
        f"{doc['machine'].get('cpus')} CPUs. Command: `{doc['command']}`",
        "",
        "One uvicorn worker pinned to one core, wrk on the other, closed loop, "
        f"{doc['seconds_per_level']} s per level, Online Retail model `{doc['model']}`.",
        "",
        f"![throughput and latency against concurrency]({PLOT.relative_to(ROOT / 'docs')})",
        "",
        "| users | connections | req/s | p50 ms | p90 ms | p99 ms | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in doc["kinds"].items():
        for r in rows:
            out.append(
                f"| {kind} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {int(r['failures'])} |"
            )
    out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
