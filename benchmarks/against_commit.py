"""This tree against an earlier commit, side by side in one run: recommendation throughput and
the API worker's memory.

The earlier commit is exported with ``git archive`` into ``var/bench/`` and served from there
with this virtualenv (same libraries, same Online Retail model, same SQLite data). Servers of
the two trees take turns (A B B A ...) so slow phases of the machine hit both alike.

- throughput: one uvicorn worker (``uvicorn service.app:create_app_from_env``, as in
  ``benchmarks.api_latency``) pinned to CPU 0, wrk on CPU 1, 64 connections, known users,
  after a 3 s warm-up; with the server's CPU time per request (less sensitive than req/s to
  what else the machine runs);
- memory: RSS of the API process as each tree's documented command starts it, after 2,000
  requests of every kind: ``python -m service`` here; the earlier ``recoffer serve``
  (``python -m training.cli serve``), which ran the API inside the trainer's CLI process.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.api_latency import model_root, recommendation_paths, wrk
from benchmarks.common import PYTHON, ROOT, WORK, save, this_command
from benchmarks.harness import FRONTEND_KEY, HOST, SERVICE_APP, Server, fresh_sqlite
from service.artifact import ModelStore, load_artifact

DEFAULT_BASELINE = "f22ca76"  # main before "One owner per fact" (issue 10)


def export(commit: str) -> Path:
    """The tree of ``commit`` under var/bench/tree-<commit> (reused when present)."""
    target = WORK / f"tree-{commit}"
    if (target / "service").is_dir():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "archive", commit], cwd=ROOT, stdout=archive, check=True)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(target, filter="data")
    return target


def in_tree(tree: Path, argv: list[str]) -> list[str]:
    """``argv`` run from ``tree`` (``python -m`` puts the working directory first on the path)."""
    return ["env", "-C", str(tree), f"PYTHONPATH={tree}", *argv]


def uvicorn_in(tree: Path, port: int) -> list[str]:
    command = [PYTHON, "-m", "uvicorn", SERVICE_APP, "--factory", "--host", HOST]
    return in_tree(
        tree, [*command, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    )


def service_entry(tree: Path, port: int) -> list[str]:
    return in_tree(tree, [PYTHON, "-m", "service", "--host", HOST, "--port", str(port)])


def cli_serve(tree: Path, port: int) -> list[str]:
    return in_tree(
        tree, [PYTHON, "-m", "training.cli", "serve", "--host", HOST, "--port", str(port)]
    )


def warm(server: Server, paths: dict[str, list[str]], requests: int = 2000) -> None:
    """``requests`` of every kind of user, one connection (the server sees every path kind)."""
    import httpx

    with httpx.Client(base_url=server.url, headers={"X-API-Key": FRONTEND_KEY}) as client:
        for kind_paths in paths.values():
            for n in range(requests):
                client.get(kind_paths[n % len(kind_paths)]).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs per tree")
    parser.add_argument("--seconds", type=int, default=10, help="wrk seconds per run")
    args = parser.parse_args()
    baseline = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    trees = {"baseline": export(baseline), "this tree": ROOT}
    root = model_root()
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    users = [str(u) for u in artifact.arrays["user_ids"]]
    items = [str(i) for i in artifact.arrays["item_ids"]]
    throughput: dict[str, list[float]] = {name: [] for name in trees}
    cpu_us: dict[str, list[float]] = {name: [] for name in trees}
    memory: dict[str, dict[str, Any]] = {}
    with fresh_sqlite("against-commit") as url:
        paths = recommendation_paths(url, users, items)
        env = {
            "RECOFFER_MODEL_DIR": str(root),
            "RECOFFER_DATABASE_URL": url,
            "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
            "RECOFFER_LOG_LEVEL": "WARNING",
            "RECOFFER_ACCESS_LOG": "false",
        }
        order = [name for r in range(args.rounds) for name in (list(trees)[:: 1 - 2 * (r % 2)])]
        for name in order:
            command = functools.partial(uvicorn_in, trees[name])
            with Server(env, command=command, cpus="0") as server:
                wrk(server.port, paths["known"], 3)  # warm-up
                before = server.cpu_seconds()
                rps, failures = wrk(server.port, paths["known"], args.seconds)
                used = server.cpu_seconds() - before
            if failures:
                raise SystemExit(f"{name}: {failures} failed requests")
            throughput[name].append(rps)
            cpu_us[name].append(round(used / (rps * args.seconds) * 1e6, 1))
            print(name, f"{rps:,.0f} req/s, {cpu_us[name][-1]} µs CPU a request", flush=True)
        launchers: dict[str, tuple[str, Callable[[Path, int], list[str]]]] = {
            "baseline": ("recoffer serve", cli_serve),
            "this tree": ("python -m service", service_entry),
        }
        for name, (label, launcher) in launchers.items():
            command = functools.partial(launcher, trees[name])
            with Server(env, command=command) as server:
                warm(server, paths)
                memory[name] = {"command": label, "rss_mib": round(server.rss_mib(), 1)}
            print(name, memory[name], flush=True)
    medians = {name: statistics.median(runs) for name, runs in throughput.items()}
    save(
        "against_commit",
        this_command(),
        {
            "baseline": baseline,
            "head": head,
            "model": artifact.version,
            "seconds": args.seconds,
            "throughput_rps": throughput,
            "median_rps": medians,
            "ratio": medians["this tree"] / medians["baseline"],
            "cpu_us_per_request": cpu_us,
            "median_cpu_us": {name: statistics.median(runs) for name, runs in cpu_us.items()},
            "memory": memory,
        },
    )


def render(doc: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md."""
    runs, machine = doc["throughput_rps"], doc["machine"]
    out = [
        "## This tree against an earlier commit",
        "",
        f"Measured {doc['date']} on {machine['cpu']}, {machine['cpus']} CPUs. "
        f"Command: `{doc['command']}`",
        "",
        f"Known-user recommendations, one uvicorn worker on CPU 0, wrk on CPU 1 (64 connections, "
        f"{doc['seconds']} s a run), the two trees taking turns; Online Retail model "
        f"{doc['model']}, SQLite, access log off. Only the two trees' figures of one run compare: "
        "the shared machine's speed changes from hour to hour.",
        "",
        "| tree | runs (req/s) | median req/s | server CPU per request, median |",
        "|---|---|---:|---:|",
    ]
    labels = {"baseline": f"`{doc['baseline']}` (before)", "this tree": f"`{doc['head']}`"}
    for name, label in labels.items():
        shown = ", ".join(f"{r:,.0f}" for r in runs[name])
        out.append(
            f"| {label} | {shown} | {doc['median_rps'][name]:,.0f} | "
            f"{doc['median_cpu_us'][name]:,.0f} µs |"
        )
    out += [
        "",
        f"Ratio of medians, this tree / before: **{doc['ratio']:.2f}**.",
        "",
        "API process memory (RSS after 2,000 requests of each kind of user), each tree started "
        "the way its README starts it:",
        "",
        "| tree | command | RSS MiB |",
        "|---|---|---:|",
    ]
    for name, label in labels.items():
        m = doc["memory"][name]
        out.append(f"| {label} | `{m['command']}` | {m['rss_mib']:,.1f} |")
    return [*out, ""]


if __name__ == "__main__":
    main()
