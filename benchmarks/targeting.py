"""Uplift targeting (issue 12, item 4): what refreshing a campaign's verdicts costs, and what a
decision pays for its side once they are cached, on SQLite and on PostgreSQL.

For each database: a fresh one with ``--decisions`` decisions of one campaign spread over the
loyalty types and users without a segment (a tenth held out, of the rest a third of the
mercenary ones ``not_targeted``), and a purchase inside the conversion window for every tenth
user (not timed). Then, ``--rounds`` times: ``ReportRepository.segment_counts`` (the one
grouped read behind a campaign's verdicts, made once per ``uplift_refresh_seconds`` and per
replica) timed, and ``UpliftTargeting.side`` for 10,000 users with the verdicts cached.
Medians of the rounds.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from benchmarks.common import median, save, this_command
from benchmarks.harness import BACKENDS, fresh_database
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.offers.campaigns import Campaign
from service.offers.repository import OfferRepository
from service.offers.rules import UserFacts, in_holdout
from service.offers.targeting import UpliftTargeting
from service.tables import LOYALTY_TYPES, events, offer_decisions

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CAMPAIGN = Campaign(campaign_id="bench_targeting", uplift_targeting=True)
CHUNK = 5_000
SIDES = 10_000


def seed(url: str, decisions: int) -> int:
    """The campaign's decisions and their purchases; returns the purchases written."""
    engine = make_engine(url, timeout_seconds=120)
    migrate(engine)
    decided_at = NOW - timedelta(hours=2)
    kinds = (*LOYALTY_TYPES, None)
    purchases = 0
    try:
        for first in range(0, decisions, CHUNK):
            rows, bought = [], []
            for n in range(first, min(first + CHUNK, decisions)):
                user = f"u{n:07d}"
                loyalty = kinds[n % len(kinds)]
                if in_holdout(CAMPAIGN.campaign_id, user, CAMPAIGN.holdout_percent):
                    kind = "holdout"
                elif loyalty == "mercenary" and n % 3 == 0:
                    kind = "not_targeted"
                else:
                    kind = "issued"
                rows.append(
                    {
                        "campaign_id": CAMPAIGN.campaign_id,
                        "user_id": user,
                        "decision": kind,
                        "attribution_id": f"{n:032d}",
                        "views": 1,
                        "decided_at": decided_at,
                        "convert_until": decided_at + timedelta(hours=24),
                        "lifecycle_stage": None if loyalty is None else "active",
                        "loyalty_type": loyalty,
                    }
                )
                if n % 10 == 0:
                    bought.append(
                        {
                            "user_id": user,
                            "item_id": "i1",
                            "type": "purchase",
                            "ts": decided_at + timedelta(hours=1),
                            "order_id": f"o{n}",
                            "received_at": decided_at + timedelta(hours=1),
                        }
                    )
            with engine.begin() as conn:
                conn.execute(insert(offer_decisions), rows)
                conn.execute(insert(events), bought)
            purchases += len(bought)
    finally:
        engine.dispose()
    return purchases


def measure_backend(url: str, decisions: int, rounds: int) -> dict[str, Any]:
    purchases = seed(url, decisions)
    engine = make_engine(url, timeout_seconds=120)
    repository = OfferRepository(Repository(engine, lambda: NOW))
    reads, sides = [], []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            counts = repository.reports.segment_counts(CAMPAIGN.campaign_id, NOW)
            reads.append(time.perf_counter() - started)
            assert sum(n for n, _ in counts["loyalty_type"].values()) == decisions
            targeting = UpliftTargeting(repository.reports, lambda: NOW)
            targeting.results(CAMPAIGN)  # the verdicts read once, as the first decision does
            facts = [
                UserFacts(f"x{n}", NOW, 1, 1, False, loyalty_type=LOYALTY_TYPES[n % 5])
                for n in range(SIDES)
            ]
            started = time.perf_counter()
            for one in facts:
                targeting.side(CAMPAIGN, one)
            sides.append((time.perf_counter() - started) / SIDES)
    finally:
        engine.dispose()
    return {
        "decisions": decisions,
        "purchases": purchases,
        "segment_counts_ms": [round(s * 1000, 2) for s in reads],
        "segment_counts_ms_median": round(median(reads) * 1000, 2),
        "side_us_median": round(median(sides) * 1e6, 2),
    }


def render(doc: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section of ``benchmarks/results/targeting.json``."""
    m = doc["machine"]
    out = [
        "## Uplift targeting: refreshing the verdicts",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}; the machine was shared with "
        "other agents' builds and tests, so read the figures as orders of magnitude.",
        "",
        f"Command: `{doc['command']}`",
        "",
        "One campaign's per-segment counts (`ReportRepository.segment_counts`: decisions by "
        "lifecycle stage, loyalty type and side, with the conversions inside each decision's "
        "window, one grouped read), the read "
        "behind its verdicts, made once per `uplift_refresh_seconds` (60 s by default) per "
        "replica; and the side of one decision (`UpliftTargeting.side`) with the verdicts "
        f"cached. Medians of {doc['rounds']} rounds.",
        "",
        "| database | decisions | purchases | segment counts (ms) | side of a decision (µs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend, row in doc["backends"].items():
        if row is None:
            out.append(f"| {backend} | skipped: unavailable | | | |")
            continue
        out.append(
            f"| {backend} | {row['decisions']:,} | {row['purchases']:,} | "
            f"{row['segment_counts_ms_median']:,.1f} | {row['side_us_median']:.1f} |"
        )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    backends: dict[str, Any] = {}
    for backend in BACKENDS:
        with fresh_database(backend, "targeting") as url:
            backends[backend] = (
                None if url is None else measure_backend(url, args.decisions, args.rounds)
            )
            print(backend, backends[backend], flush=True)
    path = save("targeting", this_command(), {"rounds": args.rounds, "backends": backends})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
