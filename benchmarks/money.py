"""Money (issue 12, item 3): what counting the discount given costs a redemption.

In-process, on SQLite and on PostgreSQL, each on a fresh database seeded through the service's
own repository (seeding is not part of any figure). Three kinds of redemption, interleaved so
that the machine's noise falls on all of them alike, each call timed:

- ``no_amount``: a percent coupon redeemed without an order amount (the coupon's UPDATE and the
  trail's row; nothing to count), what a redemption wrote before this item;
- ``percent``: a percent coupon with an amount: the discount computed and set, and added to the
  campaign's spend (two upserts of ``campaign_spend``: the total and the day);
- ``fixed``: a fixed-discount coupon with a minimum order and a money budget, the terms checked
  in the UPDATE's WHERE, likewise counted.

Then ``--threads`` threads redeem ``--parallel`` fixed coupons at once (the spend rows are the
contended ones): wall time, and the check that the spend equals the trail exactly. Then
``Reports.stats`` with its revenue figures over every decided user, timed.

The machine is shared with other work: figures are medians of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from benchmarks.common import save, this_command
from benchmarks.harness import BACKENDS, fresh_database
from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.offers.campaigns import Campaign
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.tables import campaign_spend, coupon_ledger

KINDS = ("no_amount", "percent", "fixed")


def _campaigns() -> dict[str, Campaign]:
    unlimited: dict[str, Any] = {"holdout_percent": 0, "max_per_day": None}
    return {
        "percent": Campaign(campaign_id="percent", **unlimited),
        "fixed": Campaign(
            campaign_id="fixed",
            fixed_discount=Decimal("5.00"),
            currency="EUR",
            min_order_amount=Decimal("10.00"),
            max_discount_total=Decimal("100000000"),
            **unlimited,
        ),
    }


def _seed(base: Repository, now: datetime, users: list[str]) -> None:
    start = now - timedelta(hours=2)
    for user in users:
        base.upsert_user(user, signed_up_at=start)
    events = [
        NewEvent(u, "view", start + timedelta(minutes=n + 1), item_id=f"i{n}")
        for u in users
        for n in range(11)
    ]
    for first in range(0, len(events), 2_000):
        base.add_events(events[first : first + 2_000])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_backend(url: str, per_kind: int, parallel: int, threads: int) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    clock: Callable[[], datetime] = lambda: now  # noqa: E731
    engine = make_engine(url, timeout_seconds=30, pool_size=threads + 2)
    try:
        migrate(engine)
        base = Repository(engine, clock)
        repository = OfferRepository(base)
        campaigns = _campaigns()
        offers = OfferEngine(campaigns, repository, clock)
        coupons = Coupons(repository, clock)
        users = [f"m{n}" for n in range(2 * per_kind + parallel)]
        _seed(base, now, users)
        codes: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
        for n, user in enumerate(users):
            kind = "fixed" if n >= 2 * per_kind or n % 2 else "percent"
            coupon = offers.evaluate(user, kind).coupon
            assert coupon is not None
            codes["no_amount" if kind == "percent" and n % 4 == 0 else kind].append(
                (user, coupon.code)
            )
        serial = {k: v[: per_kind // 2] for k, v in codes.items()}
        rest = codes["fixed"][per_kind // 2 :][:parallel]
        seconds: dict[str, list[float]] = {k: [] for k in KINDS}
        amount = Decimal("40.00")
        for i in range(min(len(v) for v in serial.values())):
            for kind in KINDS:
                user, code = serial[kind][i]
                started = time.perf_counter()
                if kind == "no_amount":
                    coupons.redeem(code, user, f"o-{code}")
                else:
                    coupons.redeem(code, user, f"o-{code}", amount, "EUR")
                seconds[kind].append(time.perf_counter() - started)
        barrier = threading.Barrier(threads)

        def redeem(chunk: list[tuple[str, str]]) -> None:
            barrier.wait()
            for user, code in chunk:
                coupons.redeem(code, user, f"o-{code}", amount, "EUR")

        chunks = [rest[t::threads] for t in range(threads)]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(redeem, chunks))
        wall = time.perf_counter() - started
        with engine.connect() as conn:
            spend = {
                (r.campaign_id, r.period): r.spent
                for r in conn.execute(campaign_spend.select())
                if r.period == "total"
            }
            ledger: dict[str, Decimal] = {}
            for r in conn.execute(coupon_ledger.select()):
                if r.discount_amount is not None:
                    ledger[r.campaign_id] = ledger.get(r.campaign_id, Decimal(0)) + (
                        r.discount_amount
                    )
        exact = all(spend.get((c, "total"), Decimal(0)) == v for c, v in ledger.items())
        later = now + timedelta(days=2)
        bought = [
            NewEvent(
                u,
                "purchase",
                now + timedelta(hours=1),
                item_id="i1",
                order_id=f"p-{u}",
                quantity=1 + n % 3,
                price=Decimal("12.50"),
                currency="EUR",
            )
            for n, u in enumerate(users)
            if n % 3
        ]
        Repository(engine, lambda: later).add_events(bought)
        reports = Reports(campaigns, repository, lambda: later)
        started = time.perf_counter()
        reports.stats("fixed")
        stats_seconds = time.perf_counter() - started
        return {
            "redeem_ms": {
                k: {
                    "calls": len(v),
                    "p50": round(statistics.median(v) * 1000, 2),
                    "p95": round(_pct(v, 0.95) * 1000, 2),
                }
                for k, v in seconds.items()
            },
            "parallel": {
                "threads": threads,
                "redemptions": len(rest),
                "seconds": round(wall, 3),
                "per_second": round(len(rest) / wall, 1),
                "spend_equals_trail": exact,
            },
            "stats_seconds": round(stats_seconds, 3),
            "decided_users": len(users),
        }
    finally:
        engine.dispose()


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Offers: what counting the discount given costs a redemption (issue 12, item 3)",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}, while other agents loaded the "
        "machine (medians of the rounds).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "`Coupons.redeem` in-process, one call after the other, the three kinds interleaved: "
        "`no_amount` (a percent coupon without an order amount: the coupon's UPDATE and the "
        "trail's row only), `percent` (with an amount: the discount set, as before this item, "
        "and now also added to `campaign_spend`, total and day: `percent` minus `no_amount` "
        "bounds what the money budget adds), `fixed` (a fixed discount with a minimum order "
        "and a money budget, its terms in the UPDATE's WHERE). Then threads redeeming fixed "
        "coupons at once (every one adds to the same two spend rows), and `GET .../stats` "
        "(`Reports.stats`, revenue included) over every decided user, two thirds of whom "
        "bought.",
        "",
        "| database | no_amount p50 / p95 ms | percent p50 / p95 ms | fixed p50 / p95 ms | "
        "parallel redemptions/s (threads) | spend = trail | stats s (users) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for backend, row in doc["backends"].items():
        r, p = row["redeem_ms"], row["parallel"]
        cells = " | ".join(f"{r[k]['p50']:.2f} / {r[k]['p95']:.2f}" for k in KINDS)
        out.append(
            f"| {backend} | {cells} | {p['per_second']:.0f} ({p['threads']}) | "
            f"{'yes' if p['spend_equals_trail'] else 'NO'} | "
            f"{row['stats_seconds']:.2f} ({row['decided_users']:,}) |"
        )
    return [*out, ""]


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds; the checks must hold in every round."""
    first = rounds[0]

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        "redeem_ms": {
            k: {
                "calls": first["redeem_ms"][k]["calls"],
                "p50": med([r["redeem_ms"][k]["p50"] for r in rounds]),
                "p95": med([r["redeem_ms"][k]["p95"] for r in rounds]),
            }
            for k in KINDS
        },
        "parallel": {
            **first["parallel"],
            "per_second": med([r["parallel"]["per_second"] for r in rounds]),
            "spend_equals_trail": all(r["parallel"]["spend_equals_trail"] for r in rounds),
        },
        "stats_seconds": med([r["stats_seconds"] for r in rounds]),
        "decided_users": first["decided_users"],
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=400, help="coupons per kind and round")
    parser.add_argument("--parallel", type=int, default=200, help="coupons redeemed at once")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends: dict[str, Any] = {}
    for backend in BACKENDS:
        rounds = []
        for _ in range(args.rounds):
            with fresh_database(backend, "bench_money") as url:
                if url is None:
                    break
                rounds.append(run_backend(url, args.per_kind, args.parallel, args.threads))
        if rounds:
            backends[backend] = _median_of(rounds)
            print(backend, backends[backend]["redeem_ms"], backends[backend]["parallel"])
    path = save("money", this_command(), {"backends": backends})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
