"""HTTP latency and throughput of recommendations, against a bare FastAPI endpoint.

One uvicorn worker (uvicorn[standard]) pinned to CPU 0; the load generators pinned to CPU 1.
- throughput: wrk, 64 connections, 10 s, cycling through user ids;
- latency: benchmarks.loadgen, open loop at a fixed rate (1,000 req/s), 20 s;
for known users (source model), session users (folded in from 8 recent views each) and unknown
users (popularity), on the Online Retail model; plus the bare endpoint returning a typed
constant list of 10 items, measured the same way in the same run. Then event ingestion:
POST /v1/events with batches of 100, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ONLINE_RETAIL,
    PYTHON,
    RESULTS,
    ROOT,
    WORK,
    save,
    this_command,
    train_online_retail,
)
from benchmarks.harness import (
    BACKENDS,
    FRONTEND_KEY,
    Server,
    fresh_database,
    fresh_sqlite,
    seed_sessions,
    session_users,
    uvicorn_command,
)
from service.artifact import ModelStore, load_artifact

DATA = ONLINE_RETAIL
BARE_APP = "benchmarks.bare_app:create_app"
# the bare app has no /readyz: it is up when it answers this
BARE_PROBE = "/v1/users/probe/recommendations"


def model_root() -> Path:
    root = WORK / "models-or-tuned"
    if ModelStore(root).current() is None:
        train_online_retail(root, "--tune-seconds", "60")
    return root


def wrk_script(script: Path, paths: list[str], body: str | None = None) -> Path:
    """A wrk Lua script cycling through ``paths`` with the API key (POSTing ``body`` if given)."""
    lua_paths = ",".join(json.dumps(p) for p in paths)
    lines = [
        f"local paths = {{{lua_paths}}}",
        "local i = 0",
        f'wrk.headers["X-API-Key"] = "{FRONTEND_KEY}"',
    ]
    if body is not None:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = {json.dumps(body)}",
        ]
    lines += [
        "request = function()",
        "  i = i % #paths + 1",
        "  return wrk.format(nil, paths[i])",
        "end",
    ]
    script.write_text("\n".join(lines) + "\n")
    return script


def wrk(
    port: int, paths: list[str], seconds: int = 10, connections: int = 64, body: str | None = None
) -> tuple[float, int]:
    """Closed-loop throughput with wrk on CPU 1: (requests per second, failed requests)."""
    script = wrk_script(WORK / "wrk.lua", paths, body)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    failures = (int(errors.group(1)) if errors else 0) + (int(timeouts.group(1)) if timeouts else 0)
    throughput = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if throughput is None:
        raise SystemExit(f"no Requests/sec in wrk's output:\n{out[-3000:]}")
    return float(throughput.group(1)), failures


def latency(port: int, paths: list[str], rate: float, seconds: float) -> dict[str, float]:
    file = WORK / "paths.txt"
    file.write_text("\n".join(paths) + "\n")
    result: dict[str, float] = loadgen(port, ["--paths-file", str(file)], rate, seconds)
    return result


def loadgen(port: int, options: list[str], rate: float, seconds: float) -> Any:
    """``benchmarks.loadgen`` on CPU 1 at ``rate`` for ``seconds`` with the frontend key and
    ``options`` (what to request); its JSON report."""
    command = ["taskset", "-c", "1", PYTHON, "-m", "benchmarks.loadgen", "--port", str(port)]
    command += [*options, "--rate", str(rate), "--seconds", str(seconds)]
    command += ["--header", f"X-API-Key: {FRONTEND_KEY}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"load generator failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--throughput-seconds", type=int, default=10)
    parser.add_argument("--only", choices=("recommendations", "ingestion"), default=None)
    args = parser.parse_args()
    root = model_root()
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    users = [str(u) for u in artifact.arrays["user_ids"]]
    items = [str(i) for i in artifact.arrays["item_ids"]]
    env = {
        "RECOFFER_MODEL_DIR": str(root),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
    }
    previous = RESULTS / "api_latency.json"
    results: dict[str, object] = json.loads(previous.read_text()) if previous.is_file() else {}
    for key in ("name", "date", "command", "machine"):
        results.pop(key, None)
    if args.only in (None, "recommendations"):
        results.update(recommendation_figures(args, env, users, items))
        results["recommendations_date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        results["model"], results["users"], results["items"] = (
            artifact.version,
            len(users),
            len(items),
        )
    if args.only in (None, "ingestion"):
        results["ingestion"] = ingestion_figures(args, env, items)
        results["ingestion_date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    save("api_latency", this_command(), results)


def recommendation_paths(url: str, users: list[str], items: list[str]) -> dict[str, list[str]]:
    """Seed 1,000 session users (8 recent views each) into the database at ``url``; request
    paths for the three kinds of user: {"known" | "session" | "unknown": paths}."""
    sessions = session_users(1000)
    seed_sessions(
        url, sessions, items, views=8, newest_ago=timedelta(minutes=3), seed=7, distinct_items=True
    )
    return {
        "known": [f"/v1/users/{u}/recommendations" for u in users],
        "session": [f"/v1/users/{u}/recommendations" for u in sessions],
        "unknown": [f"/v1/users/nobody-{n}/recommendations" for n in range(1000)],
    }


def recommendation_figures(
    args: argparse.Namespace, env: dict[str, str], users: list[str], items: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bare_command = functools.partial(uvicorn_command, BARE_APP)
    with fresh_sqlite("api-bench") as sqlite_url:
        kinds = recommendation_paths(sqlite_url, users, items)
        with Server(port=8101, command=bare_command, probe=BARE_PROBE, cpus="0"):
            rps, failures = wrk(8101, kinds["unknown"], args.throughput_seconds)
            out["bare"] = {
                "throughput_rps": rps,
                "throughput_failures": failures,
                "latency": latency(8101, kinds["unknown"], args.rate, args.seconds),
            }
            print("bare", out["bare"], flush=True)
        with Server({**env, "RECOFFER_DATABASE_URL": sqlite_url}, port=8102, cpus="0"):
            for kind, paths in kinds.items():
                rps, failures = wrk(8102, paths, args.throughput_seconds)
                out[kind] = {
                    "throughput_rps": rps,
                    "throughput_failures": failures,
                    "latency": latency(8102, paths, args.rate, args.seconds),
                }
                print(kind, out[kind], flush=True)
    out["throughput_ratio_known_vs_bare"] = (
        out["known"]["throughput_rps"] / out["bare"]["throughput_rps"]
    )
    return out


def ingestion_figures(
    args: argparse.Namespace, env: dict[str, str], items: list[str]
) -> dict[str, object]:
    body = json.dumps(
        {
            "events": [
                {"user_id": f"bench-{n % 37}", "type": "view", "item_id": items[n % len(items)]}
                for n in range(100)
            ]
        }
    )
    out: dict[str, object] = {}
    for backend in BACKENDS:
        with fresh_database(backend, "recoffer_bench_ingest") as url:
            if url is None:
                continue
            with Server({**env, "RECOFFER_DATABASE_URL": url}, port=8103, cpus="0"):
                rps, failures = wrk(
                    8103, ["/v1/events"], args.throughput_seconds, connections=8, body=body
                )
                out[backend] = {
                    "batches_per_second": rps,
                    "events_per_second": rps * 100,
                    "failures": failures,
                }
                print(backend, out[backend], flush=True)
    return out


if __name__ == "__main__":
    main()
