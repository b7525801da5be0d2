"""Campaigns managed at run time: what the poll costs, and how soon a change reaches a replica.

For each database, a fresh one:

* in-process: the poll's probe (``CampaignRepository.signature``, the count and the sum of the
  versions) timed ``--probes`` times, and a full reload (every definition read, validated and
  swapped in) of the built-in campaign plus ``--campaigns`` win-back campaigns, 20 times;
* served: two server processes (``python -m service``, one worker each, no model) on that
  database, ``RECOFFER_CAMPAIGN_POLL_SECONDS`` = ``--poll``. ``--rounds`` times: a PATCH of the
  built-in campaign through server A, then server B's ``GET /v1/campaigns/{id}/stats`` asked
  every 20 ms until its ``definition_version`` (the version B applies) is the new one; each
  PATCH waits a random part of a poll first (seeded), so changes land anywhere in B's poll.
  The pick-up time is from A's answer to the first answer of B showing it; the target is one
  poll.

Medians (and the largest pick-up) are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, WORK, median, save, this_command
from benchmarks.harness import BACKENDS, Server, fresh_database
from benchmarks.offers import MARKETING_KEY, call
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.offers.campaigns import BUILT_IN, Campaign, load_campaigns
from service.offers.repository.store import CampaignRepository
from service.offers.store import CampaignStore

STEP_SECONDS = 0.02  # how often B is asked while waiting


def in_process(url: str, campaigns: int, probes: int) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        migrate(engine)
        store = CampaignStore(
            CampaignRepository(Repository(engine)),
            lambda: datetime.now(UTC),
            file_campaigns=load_campaigns(None),
        )
        store.refresh()
        for i in range(campaigns):
            fields = {"campaign_id": f"win_back_{i}", "kind": "win_back", "min_orders": 2}
            store.create(Campaign.model_validate(fields), "benchmark")
        probe = []
        for _ in range(probes):
            started = time.perf_counter()
            store.repository.signature()
            probe.append(time.perf_counter() - started)
        reload = []
        for _ in range(20):
            store._seen = None  # forget the probe: the full read the poll does after a change
            started = time.perf_counter()
            store.refresh()
            reload.append(time.perf_counter() - started)
        return {
            "campaigns": campaigns + 1,
            "probe_ms": round(median(probe) * 1000, 3),
            "reload_ms": round(median(reload) * 1000, 1),
        }
    finally:
        engine.dispose()


@contextlib.contextmanager
def two_servers(url: str, poll: float) -> Iterator[tuple[int, int]]:
    models = Path(tempfile.mkdtemp(prefix="campaign-store-models-", dir=WORK))
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(models),
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_ACCESS_LOG": "false",
        "RECOFFER_CAMPAIGN_POLL_SECONDS": str(poll),
    }
    try:
        with Server(env, stop_seconds=30) as a, Server(env, stop_seconds=30) as b:
            yield a.port, b.port
    finally:
        shutil.rmtree(models, ignore_errors=True)


def served(url: str, poll: float, rounds: int) -> dict[str, Any]:
    path = f"/v1/campaigns/{BUILT_IN}"
    pickups, patches = [], []
    with two_servers(url, poll) as (a, b):
        rng = random.Random(20261201)
        for n in range(rounds):
            # a change lands at any moment of B's poll, not just after B's last pick-up
            time.sleep(rng.uniform(0, poll))
            body = {"min_views": 11 + (n % 2) + 1}
            status, changed, seconds = call(a, "PATCH", path, MARKETING_KEY, body)
            if status != 200:
                raise SystemExit(f"PATCH answered {status}: {changed}")
            done = time.perf_counter()
            patches.append(seconds)
            while True:
                _, stats, _ = call(b, "GET", f"{path}/stats", MARKETING_KEY)
                if stats.get("definition_version") == changed["version"]:
                    break
                if time.perf_counter() - done > 10 * poll + 10:
                    raise SystemExit("server B did not apply the change")
                time.sleep(STEP_SECONDS)
            pickups.append(time.perf_counter() - done)
    return {
        "poll_seconds": poll,
        "rounds": rounds,
        "patch_ms": round(median(patches) * 1000, 1),
        "pickup_seconds": round(median(pickups), 3),
        "pickup_max_seconds": round(max(pickups), 3),
        "met": max(pickups) <= poll + 0.5,  # one poll, plus B's answer on a loaded machine
    }


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Offers: campaigns managed at run time",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}, while other agents kept the "
        "machine busy (figures are medians).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "`probe ms`: the poll's query every worker runs every `RECOFFER_CAMPAIGN_POLL_SECONDS` "
        "(the count and the sum of the versions); `reload ms`: after a change, every "
        "definition read, validated and swapped in. Served: a PATCH through one server "
        "process (at a random moment of the other's poll), then the other process's stats "
        "asked every 20 ms until they show the new version; the target is one poll.",
        "",
        "| database | campaigns | probe ms | reload ms | poll s | PATCH ms | pick-up s "
        "(median) | pick-up s (max) | within a poll |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backend, row in doc["backends"].items():
        s = row["served"]
        out.append(
            f"| {backend} | {row['campaigns']} | {row['probe_ms']:.3f} | {row['reload_ms']:.1f} "
            f"| {s['poll_seconds']:g} | {s['patch_ms']:.1f} | {s['pickup_seconds']:.2f} | "
            f"{s['pickup_max_seconds']:.2f} | {'**met**' if s['met'] else '**not met**'} |"
        )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"backends": {}}
    for backend in [args.backend] if args.backend else list(BACKENDS):
        with fresh_database(backend, "recoffer_bench_campaigns") as url:
            if url is None:
                continue
            row = in_process(url, args.campaigns, args.probes)
        with fresh_database(backend, "recoffer_bench_campaigns") as url:
            assert url is not None
            row["served"] = served(url, args.poll, args.rounds)
        results["backends"][backend] = row
        print(backend, row)
    save("campaign_store", this_command(), results, args.out)


if __name__ == "__main__":
    main()
