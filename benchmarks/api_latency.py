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
import json
import os
import re
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, save, this_command
from service.artifact import ModelStore, load_artifact

KEY = "bench-frontend-key-0123456789"
DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
PG_ADMIN = os.environ.get(
    "RECOFFER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def model_root() -> Path:
    root = WORK / "models-or-tuned"
    if ModelStore(root).current() is None:
        subprocess.run(
            [
                PYTHON,
                "-m",
                "training.cli",
                "train",
                "--data",
                str(DATA),
                "--format",
                "online-retail",
                "--model-dir",
                str(root),
                "--tune-seconds",
                "60",
            ],
            cwd=ROOT,
            check=True,
        )
    return root


def start(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            PYTHON,
            "-m",
            "uvicorn",
            app,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if "service.app" not in app:
                probe = f"http://127.0.0.1:{port}/v1/users/probe/recommendations"
                with urllib.request.urlopen(probe, timeout=1):
                    return proc
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if json.loads(r.read())["ready"]:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{app} did not become ready")


def wrk_script(script: Path, paths: list[str], body: str | None = None) -> Path:
    """A wrk Lua script cycling through ``paths`` with the API key (POSTing ``body`` if given)."""
    lua_paths = ",".join(json.dumps(p) for p in paths)
    lines = [f"local paths = {{{lua_paths}}}", "local i = 0", f'wrk.headers["X-API-Key"] = "{KEY}"']
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
) -> float:
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
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, failures


def latency(port: int, paths: list[str], rate: float, seconds: float) -> dict[str, float]:
    file = WORK / "paths.txt"
    file.write_text("\n".join(paths) + "\n")
    command = ["taskset", "-c", "1", PYTHON, "-m", "benchmarks.loadgen", "--port", str(port)]
    command += ["--paths-file", str(file), "--rate", str(rate), "--seconds", str(seconds)]
    command += ["--header", f"X-API-Key: {KEY}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"load generator failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def seed_sessions(database_url: str, item_ids: list[str], users: int) -> list[str]:
    from service.db import make_engine, migrate
    from service.events import NewEvent, Repository

    engine = make_engine(database_url)
    migrate(engine)
    repo = Repository(engine)
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    names = [f"session-{n}" for n in range(users)]
    batch = [
        NewEvent(user_id=u, type="view", item_id=str(i), ts=now - timedelta(minutes=10 - k))
        for u in names
        for k, i in enumerate(rng.choice(item_ids, size=8, replace=False))
    ]
    for start_at in range(0, len(batch), 1000):
        repo.add_events(batch[start_at : start_at + 1000])
    engine.dispose()
    return names


def fresh_postgres(name: str) -> str | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # no PostgreSQL here: that part is skipped and said so
        print(f"PostgreSQL unavailable, skipping: {exc}")
        return None
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


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
        "RECOFFER_FRONTEND_KEYS": KEY,
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


def recommendation_paths(
    db_name: str, users: list[str], items: list[str]
) -> tuple[str, dict[str, list[str]]]:
    """A fresh SQLite database under WORK with 1,000 session users, and request paths for the
    three kinds of user: (database URL, {"known" | "session" | "unknown": paths})."""
    db = WORK / db_name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    sessions = seed_sessions(url, items, 1000)
    return url, {
        "known": [f"/v1/users/{u}/recommendations" for u in users],
        "session": [f"/v1/users/{u}/recommendations" for u in sessions],
        "unknown": [f"/v1/users/nobody-{n}/recommendations" for n in range(1000)],
    }


def recommendation_figures(
    args: argparse.Namespace, env: dict[str, str], users: list[str], items: list[str]
) -> dict[str, object]:
    sqlite_url, kinds = recommendation_paths("api-bench.db", users, items)
    out: dict[str, object] = {}
    bare = start("benchmarks.bare_app:create_app", 8101, {})
    try:
        rps, failures = wrk(8101, kinds["unknown"], args.throughput_seconds)
        out["bare"] = {
            "throughput_rps": rps,
            "throughput_failures": failures,
            "latency": latency(8101, kinds["unknown"], args.rate, args.seconds),
        }
        print("bare", out["bare"], flush=True)
    finally:
        bare.terminate()
        bare.wait()
    server = start(
        "service.app:create_app_from_env", 8102, {**env, "RECOFFER_DATABASE_URL": sqlite_url}
    )
    try:
        for kind, paths in kinds.items():
            rps, failures = wrk(8102, paths, args.throughput_seconds)
            out[kind] = {
                "throughput_rps": rps,
                "throughput_failures": failures,
                "latency": latency(8102, paths, args.rate, args.seconds),
            }
            print(kind, out[kind], flush=True)
    finally:
        server.terminate()
        server.wait()
    bare_rps = out["bare"]["throughput_rps"]  # type: ignore[index]
    out["throughput_ratio_known_vs_bare"] = out["known"]["throughput_rps"] / bare_rps  # type: ignore[index]
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
    for backend in ("sqlite", "postgresql"):
        if backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{WORK / 'ingest.db'}{suffix}").unlink(missing_ok=True)
            url: str | None = f"sqlite:///{WORK / 'ingest.db'}"
        else:
            url = fresh_postgres("recoffer_bench")
        if url is None:
            continue
        server = start(
            "service.app:create_app_from_env", 8103, {**env, "RECOFFER_DATABASE_URL": url}
        )
        try:
            rps, failures = wrk(
                8103, ["/v1/events"], args.throughput_seconds, connections=8, body=body
            )
            out[backend] = {
                "batches_per_second": rps,
                "events_per_second": rps * 100,
                "failures": failures,
            }
            print(backend, out[backend], flush=True)
        finally:
            server.terminate()
            server.wait()
    return out


if __name__ == "__main__":
    main()
