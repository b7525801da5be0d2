"""Exactly-once under concurrency, on SQLite and PostgreSQL: many threads, several processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from benchmarks.harness import all_at_once, processes_at_once
from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.errors import CouponAlreadyRedeemed
from service.offers.campaigns import Campaign
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.offers.rules import in_holdout
from service.tables import coupon_ledger, coupons, offer_decisions

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _engine_for(url: str, campaign: Campaign) -> OfferEngine:
    engine = make_engine(url, timeout_seconds=30, pool_size=25)
    base = Repository(engine, lambda: NOW)
    return OfferEngine({campaign.campaign_id: campaign}, OfferRepository(base), lambda: NOW)


@pytest.fixture
def offers(database_url: str) -> Iterator[OfferEngine]:
    campaign = Campaign(holdout_percent=10)
    engine = _engine_for(database_url, campaign)
    migrate(engine.repository.engine)
    yield engine
    engine.repository.engine.dispose()


def _hesitating(engine: OfferEngine, user_id: str, views: int = 11) -> None:
    base = engine.repository.base
    start = NOW - timedelta(hours=2)
    base.upsert_user(user_id, signed_up_at=start)
    base.add_events(
        [
            NewEvent(user_id, "view", start + timedelta(minutes=n + 1), item_id=f"i{n}")
            for n in range(views)
        ]
    )


def _treated(prefix: str) -> str:
    return next(
        f"{prefix}{i}"
        for i in range(100)
        if not in_holdout("new_user_high_intent", f"{prefix}{i}", 10)
    )


def test_fifty_parallel_evaluations_of_one_user_issue_one_coupon(offers: OfferEngine) -> None:
    user = _treated("race-")
    _hesitating(offers, user)
    results = all_at_once(50, lambda _: offers.evaluate(user, "new_user_high_intent"))
    kinds = Counter(r.decision if not isinstance(r, BaseException) else repr(r) for r in results)
    assert kinds == {"issued": 1, "already_decided": 49}
    codes = {r.coupon.code for r in results if not isinstance(r, BaseException) and r.coupon}
    assert len(codes) == 1  # every answer names the one coupon
    with offers.repository.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(offer_decisions)).scalar_one() == 1


def test_hundred_parallel_redemptions_of_one_code_succeed_once(offers: OfferEngine) -> None:
    user = _treated("redeem-")
    _hesitating(offers, user)
    coupon = offers.evaluate(user, "new_user_high_intent").coupon
    assert coupon is not None
    redeem = Coupons(offers.repository, offers.clock).redeem
    results = all_at_once(100, lambda i: redeem(coupon.code, user, f"order-{i}"))
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, CouponAlreadyRedeemed)]
    others = [repr(r) for r in results if isinstance(r, BaseException) and r not in refused]
    assert (len(succeeded), len(refused)) == (1, 99), others[:3]
    stored = offers.repository.coupons.coupon(coupon.code)
    assert stored is not None
    assert stored.order_id == succeeded[0][0].coupon.order_id


def test_a_total_cap_holds_under_parallel_evaluations(database_url: str) -> None:
    campaign = Campaign(holdout_percent=0, max_total=5, max_per_day=100)
    offers = _engine_for(database_url, campaign)
    try:
        migrate(offers.repository.engine)
        users = [f"capped-{n}" for n in range(40)]
        for user in users:
            _hesitating(offers, user)
        results = all_at_once(40, lambda i: offers.evaluate(users[i], campaign.campaign_id))
        kinds = Counter(
            r.decision if not isinstance(r, BaseException) else repr(r) for r in results
        )
        assert kinds == {"issued": 5, "budget_exhausted": 35}
        with offers.repository.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 5
        assert offers.repository.reports.budget_used(campaign.campaign_id, NOW)["total"] == 5
    finally:
        offers.repository.engine.dispose()


# one process of the multi-process test: 25 threads redeem the code, print what happened
WORKER = """
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from service.db import make_engine
from service.activity.repository import Repository
from service.offers.coupons import Coupons
from service.offers.repository import OfferRepository

url, code, user, worker = sys.argv[1:5]
now = datetime.fromisoformat(sys.argv[5])
mode = sys.argv[6] if len(sys.argv) > 6 else "redeem"
engine = make_engine(url, timeout_seconds=30, pool_size=6)
coupons = Coupons(OfferRepository(Repository(engine, lambda: now)), lambda: now)
barrier = threading.Barrier(25)

def run(i):
    barrier.wait()
    try:
        if mode == "redeem" or i % 2:
            coupons.redeem(code, user, f"order-{worker}-{i}")
            return "ok"
        coupons.release(code, user, "order-first")  # "race": half release the first order
        return "released"
    except Exception as exc:
        return type(exc).__name__

with ThreadPoolExecutor(25) as pool:
    print(json.dumps(list(pool.map(run, range(25)))))
engine.dispose()
"""


def _four_processes(database_url: str, code: str, user: str, *mode: str) -> Counter[str]:
    """Run WORKER in four processes at once (``mode`` "race": releases against redemptions)
    and add up what their 25 threads each met."""
    return processes_at_once(
        WORKER, [[database_url, code, user, str(w), NOW.isoformat(), *mode] for w in range(4)]
    )


def test_redemptions_from_four_processes_succeed_once(
    offers: OfferEngine, database_url: str
) -> None:
    """Each process has its own write queue: here only the database itself keeps it exact."""
    user = _treated("procs-")
    _hesitating(offers, user)
    coupon = offers.evaluate(user, "new_user_high_intent").coupon
    assert coupon is not None
    outcomes = _four_processes(database_url, coupon.code, user)
    successes = outcomes.pop("ok", 0)
    errors = list(outcomes.elements())
    assert successes == 1
    assert set(errors) == {"CouponAlreadyRedeemed"}
    assert len(errors) == 99


def _trail(offers: OfferEngine, code: str) -> list[tuple[str, int, str]]:
    return [(e.action, e.redemption, e.order_id) for e in offers.repository.coupons.trail(code)]


def test_fifty_parallel_releases_of_one_redemption_succeed_once(offers: OfferEngine) -> None:
    user = _treated("unrelease-")
    _hesitating(offers, user)
    coupon = offers.evaluate(user, "new_user_high_intent").coupon
    assert coupon is not None
    coupons = Coupons(offers.repository, offers.clock, max_releases=5)
    coupons.redeem(coupon.code, user, "order-1")
    results = all_at_once(50, lambda _: coupons.release(coupon.code, user, "order-1"))
    outcomes = Counter(type(r).__name__ for r in results)
    assert outcomes == {"CouponStatus": 1, "CouponNotRedeemed": 49}
    assert _trail(offers, coupon.code) == [("redeem", 1, "order-1"), ("release", 1, "order-1")]
    stored = offers.repository.coupons.coupon(coupon.code)
    assert stored is not None
    assert (stored.redeemed_at, stored.releases) == (None, 1)


def test_racing_releases_and_redemptions_keep_one_order_at_a_time(offers: OfferEngine) -> None:
    user = _treated("seesaw-")
    _hesitating(offers, user)
    coupon = offers.evaluate(user, "new_user_high_intent").coupon
    assert coupon is not None
    coupons = Coupons(offers.repository, offers.clock)  # one release allowed
    coupons.redeem(coupon.code, user, "order-first")

    def release_or_redeem(i: int) -> object:
        if i % 2:
            return coupons.redeem(coupon.code, user, f"order-{i}")
        return coupons.release(coupon.code, user, "order-first")

    results = all_at_once(40, release_or_redeem)
    released = [r for i, r in enumerate(results) if i % 2 == 0 and not isinstance(r, Exception)]
    redeemed = [r for i, r in enumerate(results) if i % 2 and not isinstance(r, Exception)]
    refusals = {type(r).__name__ for r in results if isinstance(r, Exception)}
    assert len(released) == 1  # the first order's use comes back exactly once
    assert len(redeemed) <= 1  # and at most one other order takes it
    assert refusals <= {"CouponNotRedeemed", "CouponAlreadyRedeemed", "CouponOrderMismatch"}
    _assert_trail_matches_the_coupon(offers, coupon.code, redeemed=len(redeemed))


def _assert_trail_matches_the_coupon(offers: OfferEngine, code: str, *, redeemed: int) -> None:
    """The trail: the first order, its release, then at most one more order; the coupon agrees."""
    trail = _trail(offers, code)
    assert trail[:2] == [("redeem", 1, "order-first"), ("release", 1, "order-first")]
    assert [(a, n) for a, n, _ in trail[2:]] == [("redeem", 2)] * redeemed
    stored = offers.repository.coupons.coupon(code)
    assert stored is not None
    assert stored.releases == 1
    assert stored.order_id == (trail[2][2] if redeemed else None)
    with offers.repository.engine.connect() as conn:
        rows = conn.execute(
            select(func.count()).select_from(coupon_ledger).where(coupon_ledger.c.code == code)
        ).scalar_one()
    assert rows == 2 + redeemed


def test_releases_and_redemptions_from_four_processes_keep_one_order_at_a_time(
    offers: OfferEngine, database_url: str
) -> None:
    user = _treated("procrelease-")
    _hesitating(offers, user)
    coupon = offers.evaluate(user, "new_user_high_intent").coupon
    assert coupon is not None
    Coupons(offers.repository, offers.clock).redeem(coupon.code, user, "order-first")
    outcomes = _four_processes(database_url, coupon.code, user, "race")
    assert outcomes.pop("released") == 1
    redeemed = outcomes.pop("ok", 0)
    assert redeemed <= 1
    assert set(outcomes) <= {"CouponNotRedeemed", "CouponAlreadyRedeemed", "CouponOrderMismatch"}
    _assert_trail_matches_the_coupon(offers, coupon.code, redeemed=redeemed)


def test_a_cap_added_later_counts_the_coupons_already_issued(database_url: str) -> None:
    uncapped = _engine_for(database_url, Campaign(holdout_percent=0))
    capped = _engine_for(database_url, Campaign(holdout_percent=0, max_total=3, max_per_day=10))
    try:
        migrate(uncapped.repository.engine)
        users = [f"before-{n}" for n in range(4)]
        for user in users:
            _hesitating(uncapped, user)
        assert [uncapped.evaluate(u, "new_user_high_intent").decision for u in users[:2]] == [
            "issued",
            "issued",
        ]
        # the same campaign restarted with a cap of three: one coupon is left, not three
        assert [capped.evaluate(u, "new_user_high_intent").decision for u in users[2:]] == [
            "issued",
            "budget_exhausted",
        ]
        stats = Reports(capped.campaigns, capped.repository, capped.clock).stats
        assert stats("new_user_high_intent").budget["used_total"] == 3
    finally:
        uncapped.repository.engine.dispose()
        capped.repository.engine.dispose()


def test_concurrent_sweeps_decide_each_user_once(database_url: str) -> None:
    campaign = Campaign(holdout_percent=10)
    offers = _engine_for(database_url, campaign)
    try:
        migrate(offers.repository.engine)
        users = [f"swept-{n}" for n in range(60)]
        for user in users:
            _hesitating(offers, user)
        results = all_at_once(4, lambda _: offers.sweep(campaign.campaign_id))
        assert not [r for r in results if isinstance(r, BaseException)]
        made: Counter[str] = Counter()
        for r in results:
            assert not isinstance(r, BaseException)
            made.update({k: v for k, v in r.decisions.items() if k in ("issued", "holdout")})
        held = sum(in_holdout(campaign.campaign_id, u, 10) for u in users)
        # every user decided by exactly one of the four sweeps
        assert made == {"issued": 60 - held, "holdout": held}
        with offers.repository.engine.connect() as conn:
            per_user = conn.execute(
                select(coupons.c.user_id, func.count()).group_by(coupons.c.user_id)
            ).all()
        assert len(per_user) == 60 - held
        assert {n for _, n in per_user} == {1}
    finally:
        offers.repository.engine.dispose()


def test_a_daily_cap_and_the_retry_of_a_miss_hold_under_concurrency(database_url: str) -> None:
    clock = [NOW]
    campaign = Campaign(holdout_percent=0, max_per_day=3)
    engine = make_engine(database_url, timeout_seconds=30, pool_size=25)
    offers = OfferEngine(
        {campaign.campaign_id: campaign},
        OfferRepository(Repository(engine, lambda: clock[0])),
        lambda: clock[0],
    )
    try:
        migrate(engine)
        users = [f"daily-{n}" for n in range(20)]
        for user in users:
            _hesitating(offers, user)
        results = all_at_once(20, lambda i: offers.evaluate(users[i], campaign.campaign_id))
        kinds = Counter(
            r.decision if not isinstance(r, BaseException) else repr(r) for r in results
        )
        assert kinds == {"issued": 3, "budget_exhausted": 17}
        missed = next(
            u
            for u, r in zip(users, results, strict=True)
            if not isinstance(r, BaseException) and r.decision != "issued"
        )
        clock[0] = NOW + timedelta(hours=13)  # the next UTC day, still inside the window
        again = all_at_once(20, lambda _: offers.evaluate(missed, campaign.campaign_id))
        kinds = Counter(r.decision if not isinstance(r, BaseException) else repr(r) for r in again)
        assert kinds == {"issued": 1, "already_decided": 19}
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 4
    finally:
        engine.dispose()


def test_caps_hold_back_the_holdout_too_so_both_arms_stay_comparable(database_url: str) -> None:
    campaign = Campaign(holdout_percent=50, max_total=2)
    offers = _engine_for(database_url, campaign)
    try:
        migrate(offers.repository.engine)
        users = [f"arms-{n}" for n in range(12)]
        for user in users:
            _hesitating(offers, user)
        decisions = [offers.evaluate(u, campaign.campaign_id) for u in users]
        issued = [d.user_id for d in decisions if d.decision == "issued"]
        assert len(issued) == 2
        last_issue = max(users.index(u) for u in issued)
        after = decisions[last_issue + 1 :]
        # once the budget is gone, holdout-drawn users are not recorded as control either
        assert after
        assert {d.decision for d in after} == {"budget_exhausted"}
        assert any(in_holdout(campaign.campaign_id, d.user_id, 50) for d in after)
        stats = Reports(offers.campaigns, offers.repository, offers.clock).stats(
            campaign.campaign_id
        )
        assert stats.decisions["budget_exhausted"] == len(after)
    finally:
        offers.repository.engine.dispose()
