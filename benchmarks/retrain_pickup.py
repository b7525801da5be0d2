"""Online Retail retraining from the README's schedule command, until a running service serves it.

A service (`recoffer serve`, default reload interval) serves a first Online Retail model; then
`recoffer schedule --every 24h --run-now --max-runs 1 --data online_retail.csv.gz --format
online-retail --model-dir ... --tune-seconds 0` runs, and the clock stops when `GET /v1/model`
answers with the new version. Recommendations are requested throughout; every answer must be a
200. Three runs; the median is the figure (target: under 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, WORK, median, save, this_command
from benchmarks.harness import Server
from service.artifact import ModelStore

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
KEY = "bench-admin-key-0123456789"
PORT = 8791
RATE = 50.0  # recommendation requests per second during the runs
TRAIN = ["--data", str(DATA), "--format", "online-retail", "--tune-seconds", "0"]


def _get(path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", headers={"X-API-Key": KEY})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def _serve_command(root: Path, db: Path) -> Callable[[int], list[str]]:
    """``recoffer serve``, as the README starts the service (what this benchmark times)."""

    def command(port: int) -> list[str]:
        serve = [PYTHON, "-m", "training.cli", "serve", "--model-dir", str(root)]
        return [*serve, "--database-url", f"sqlite:///{db}", "--port", str(port)]

    return command


class _Traffic(threading.Thread):
    """Recommendations for a few users at RATE per second, counting answers by status."""

    def __init__(self, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.users = users
        self.statuses: dict[int, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        # paced like a shop's steady traffic: back-to-back requests would take a core from
        # the trainer on a 2-core machine and measure the contention instead
        while not self.halt.wait(1 / RATE) and n < 1_000_000:
            status, _ = _get(f"/v1/users/{self.users[n % len(self.users)]}/recommendations")
            self.statuses[status] = self.statuses.get(status, 0) + 1
            n += 1


def one_run(root: Path, users: list[str]) -> dict[str, Any]:
    before = ModelStore(root).current()
    traffic = _Traffic(users)
    traffic.start()
    started = time.perf_counter()
    command = [PYTHON, "-m", "training.cli", "schedule", "--every", "24h", "--run-now"]
    command += ["--max-runs", "1", "--model-dir", str(root), *TRAIN]
    trainer = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    served_at = None
    deadline = started + 300
    trained_at = None
    while time.perf_counter() < deadline:
        if trained_at is None and trainer.poll() is not None:
            trained_at = time.perf_counter()
        _, body = _get("/v1/model")
        if body.get("version") not in (None, before):
            served_at = time.perf_counter()
            break
        time.sleep(0.05)
    trainer.wait(timeout=120)
    trained_at = trained_at or time.perf_counter()
    traffic.halt.set()
    traffic.join(timeout=10)
    after = ModelStore(root).current()
    return {
        "seconds_to_served": None if served_at is None else round(served_at - started, 2),
        "trainer_seconds": round(trained_at - started, 2),
        "trainer_exit": trainer.returncode,
        "promoted": after != before,
        "served_version": _get("/v1/model")[1].get("version"),
        "requests": traffic.statuses,
        "failed_requests": sum(n for s, n in traffic.statuses.items() if s != 200),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"needs {DATA}")
    work = WORK / "retrain-pickup"
    root, db = work / "models", work / "recoffer.db"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    subprocess.run(
        [PYTHON, "-m", "training.cli", "train", "--model-dir", str(root), *TRAIN],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "RECOFFER_ADMIN_KEYS": KEY,
        "RECOFFER_ACCESS_LOG": "false",
        "RECOFFER_LOG_LEVEL": "WARNING",
    }
    with Server(env, port=PORT, command=_serve_command(root, db)):
        users = ["17850", "13047", "12583", "13748", "15100", "visitor-1"]
        runs = [one_run(root, users) for _ in range(args.runs)]
    served = [r["seconds_to_served"] for r in runs if r["seconds_to_served"] is not None]
    doc = {
        "schedule_command": "recoffer schedule --every 24h --run-now --max-runs 1 "
        "--model-dir MODELS " + " ".join(TRAIN).replace(str(DATA), "online_retail.csv.gz"),
        "rate": RATE,
        "runs": runs,
        "median_seconds_to_served": median(served) if served else None,
        "all_promoted_and_served": len(served) == len(runs) and all(r["promoted"] for r in runs),
        "failed_requests": sum(r["failed_requests"] for r in runs),
    }
    save("retrain_pickup", this_command(), doc)
    print(json.dumps(doc, indent=1))
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    target = doc["median_seconds_to_served"]
    ok = target is not None and target < 30 and doc["all_promoted_and_served"]
    out = [
        "## Scheduled retraining on Online Retail, until served",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')}, "
        f"{doc['machine'].get('cpus')} CPUs. Command: `{doc['command']}`",
        "",
        f"A running `recoffer serve` (reload interval 2 s, recommendations requested at "
        f"{doc.get('rate', RATE):g}/s throughout) and the README's schedule command: "
        f"`{doc['schedule_command']}`. "
        "Timed from launching the scheduler until `GET /v1/model` names the new version.",
        "",
        "| run | scheduler to served (s) | trainer process (s) | promoted | requests | failed |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for n, r in enumerate(doc["runs"], 1):
        total = sum(r["requests"].values())
        out.append(
            f"| {n} | {r['seconds_to_served']} | {r['trainer_seconds']} | {r['promoted']} | "
            f"{total:,} | {r['failed_requests']} |"
        )
    verdict = "**met**" if ok else "**not met**"
    out += [
        "",
        f"- Median {target} s from the schedule command to the new version being served "
        f"(target under 30 s): {verdict}; failed requests during the swaps: "
        f"{doc['failed_requests']}.",
        "",
    ]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
