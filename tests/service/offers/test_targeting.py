"""Targeting (issue 12, item 4): audiences, excluded segments, uplift targeting, stats by segment.

Segments are written into ``user_segments`` directly (item 1 computes them); the clock is
injected; SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from benchmarks.harness import ManualClock as Clock
from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.errors import CampaignConfigError
from service.offers.audience import in_audience
from service.offers.campaigns import Campaign, load_campaigns
from service.offers.decisions import OfferEngine
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.offers.rules import in_holdout
from service.offers.targeting import UpliftTargeting, explored
from service.tables import offer_decisions, user_segments

from .test_api import (
    CAMPAIGN,
    M,
    campaigns_file,
    evaluate,
    make_client,
    sign_up,
)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def put_segment(engine: Engine, user_id: str, stage: str, loyalty: str) -> None:
    """The user's row of user_segments, as item 1 writes it (the figures do not matter here)."""
    with engine.begin() as conn:
        conn.execute(
            insert(user_segments).values(
                user_id=user_id,
                orders=0,
                coupon_orders=0,
                views=0,
                active_days=0,
                lifecycle_stage=stage,
                loyalty_type=loyalty,
                computed_at=T0,
            )
        )


# --- the definition --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"exclude_segments": ["mercenery"]}, "exclude_segments"),
        ({"audience": ["lapsed", "vip"]}, "audience"),
    ],
)
def test_an_unknown_segment_is_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, list[str]], names: str
) -> None:
    [(field, values)] = fields.items()
    text = f"[campaigns.{CAMPAIGN}]\n{field} = {values!r}\n".replace("'", '"')
    with pytest.raises(CampaignConfigError, match=rf"{names}: Value error, unknown segment"):
        load_campaigns(campaigns_file(tmp_path, text))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"audience": ["habitual"], "exclude_segments": ["habitual"]}, "also in the audience"),
        ({"exclude_segments": ["mercenary", "mercenary"]}, "names a segment twice"),
        ({"uplift_min_users": 50}, "only read with uplift_targeting"),
        ({"uplift_targeting": True, "holdout_percent": 0}, "needs holdout_percent above 0"),
    ],
)
def test_inconsistent_targeting_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Campaign.model_validate(fields)


def test_an_audience_admits_any_value_of_an_axis_and_both_axes_when_both_are_listed() -> None:
    audience = ("at_risk", "lapsed", "habitual")
    assert in_audience(audience, "lapsed", "habitual")
    assert in_audience(audience, "at_risk", "habitual")
    assert not in_audience(audience, "lapsed", "mercenary")
    assert not in_audience(audience, "active", "habitual")
    assert not in_audience(audience, None, None)  # no segment yet
    assert in_audience(("unknown", "new"), None, None)
    assert in_audience(("unknown", "new"), "new", "latent")
    assert not in_audience(("unknown",), "new", "latent")
    assert in_audience((), None, None)


# --- audience and exclusion over HTTP ----------------------------------------------------------


@pytest.fixture
def targeted_client(
    small_model_root: Path, database_url: str, tmp_path: Path
) -> Iterator[TestClient]:
    path = campaigns_file(
        tmp_path,
        f'[campaigns.{CAMPAIGN}]\nexclude_segments = ["mercenary"]\nholdout_percent = 0\n'
        '[campaigns.lapsed_only]\naudience = ["lapsed", "at_risk"]\nholdout_percent = 0\n',
    )
    with make_client(small_model_root, database_url, Clock(T0), campaigns_file=path) as c:
        yield c


def test_mercenary_users_are_refused_and_the_others_decided_with_their_segment(
    targeted_client: TestClient,
) -> None:
    c = targeted_client
    engine = c.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    for user, loyalty in (("merc", "mercenary"), ("habit", "habitual")):
        sign_up(c, user, ago=timedelta(hours=1), views=11)
        put_segment(engine, user, "new", loyalty)
    sign_up(c, "fresh", ago=timedelta(hours=1), views=11)  # no segment row yet
    body = evaluate(c, "merc")
    assert (body["decision"], body["reasons"]) == ("not_eligible", ["excluded_segment:mercenary"])
    assert evaluate(c, "habit")["decision"] == "issued"
    assert evaluate(c, "fresh")["decision"] == "issued"
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                offer_decisions.c.user_id,
                offer_decisions.c.lifecycle_stage,
                offer_decisions.c.loyalty_type,
            ).where(offer_decisions.c.campaign_id == CAMPAIGN)
        ).all()
    assert sorted(tuple(r) for r in rows) == [("fresh", None, None), ("habit", "new", "habitual")]
    stats = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
    rows_by = {(s["axis"], s["segment"]): s for s in stats["segments"]}
    assert len(rows_by) == 12  # every stage and loyalty type, and unknown, on each axis
    merc = rows_by[("loyalty_type", "mercenary")]
    assert (merc["decided"], merc["targeted"], merc["reason"]) == (0, False, "excluded")
    habitual = rows_by[("loyalty_type", "habitual")]
    assert (habitual["treated"], habitual["targeted"], habitual["reason"]) == (
        1,
        True,
        "not_measured",
    )
    assert rows_by[("lifecycle_stage", "unknown")]["treated"] == 1
    assert rows_by[("lifecycle_stage", "new")]["treated"] == 1


def test_an_audience_admits_only_its_segments(targeted_client: TestClient) -> None:
    c = targeted_client
    engine = c.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    for user, stage in (("gone", "lapsed"), ("slipping", "at_risk"), ("busy", "active")):
        sign_up(c, user, ago=timedelta(hours=1), views=11)
        put_segment(engine, user, stage, "habitual")
    sign_up(c, "nobody", ago=timedelta(hours=1), views=11)
    assert evaluate(c, "gone", "lapsed_only")["decision"] == "issued"
    assert evaluate(c, "slipping", "lapsed_only")["decision"] == "issued"
    for user in ("busy", "nobody"):
        body = evaluate(c, user, "lapsed_only")
        assert (body["decision"], body["reasons"]) == ("not_eligible", ["not_in_audience"])
    # a user whose segment changes is judged by the segment they have when evaluated
    with engine.begin() as conn:
        conn.execute(
            update(user_segments)
            .where(user_segments.c.user_id == "busy")
            .values(lifecycle_stage="at_risk")
        )
    assert evaluate(c, "busy", "lapsed_only")["decision"] == "issued"
    stats = c.get("/v1/campaigns/lapsed_only/stats", headers=M).json()
    reasons = {
        s["segment"]: s["reason"] for s in stats["segments"] if s["axis"] == "lifecycle_stage"
    }
    assert reasons["active"] == "outside_audience"
    assert reasons["unknown"] == "outside_audience"
    assert reasons["lapsed"] == "not_measured"


# --- uplift targeting ------------------------------------------------------------------------

UPLIFT = Campaign(
    campaign_id="thank_you",
    min_views=1,
    holdout_percent=50,
    max_per_day=None,
    uplift_targeting=True,
    uplift_min_users=20,
    uplift_exploration_percent=20,
    uplift_refresh_seconds=60,
)


def offer_engine(
    url: str, clock: Callable[[], datetime], *, background: bool = False
) -> tuple[OfferEngine, Reports]:
    engine = make_engine(url, timeout_seconds=30)
    migrate(engine)
    repository = OfferRepository(Repository(engine, clock))
    campaigns = {UPLIFT.campaign_id: UPLIFT}
    # verdicts re-read in the calling thread, so each decision's side is known to the test
    targeting = UpliftTargeting(repository.reports, clock, background=background)
    offers = OfferEngine(campaigns, repository, clock, targeting=targeting)
    return offers, Reports(campaigns, repository, clock)


def arrive(base: Repository, users: list[str], loyalty: str, now: datetime) -> None:
    """New users, signed up a minute before ``now`` with one view, in segment ``loyalty``."""
    for user in users:
        base.upsert_user(user, signed_up_at=now - timedelta(minutes=1))
        put_segment(base.engine, user, "new", loyalty)
    base.add_events([NewEvent(u, "view", now - timedelta(seconds=30), item_id="i1") for u in users])


def buy(base: Repository, users: list[str], at: datetime) -> None:
    base.add_events([NewEvent(u, "purchase", at, item_id="i1", order_id=f"o-{u}") for u in users])


def buyers(merc: list[str], habit: list[str], side: Mapping[str, str]) -> list[str]:
    """Mercenary users buy whatever they get: every other one on each side, so the coupon
    changes nothing; habitual ones buy when treated (four in five), never in the holdout."""
    out = []
    for kind in ("issued", "holdout", "not_targeted"):
        out += [u for u in merc if side[u] == kind][::2]
    treated = [u for u in habit if side[u] == "issued"]
    return out + [u for n, u in enumerate(treated) if n % 5 != 0]


def test_uplift_targeting_stops_treating_a_segment_without_uplift_and_keeps_its_holdout(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(T0)
    offers, reports = offer_engine(database_url, clock)
    base = offers.repository.base
    cid = UPLIFT.campaign_id
    side = {}  # user -> recorded decision

    def holdout(user: str) -> bool:
        return in_holdout(cid, user, UPLIFT.holdout_percent)

    # learning: 80 users of each segment, every one treated or held out as usual
    merc = [f"m{n:03d}" for n in range(80)]
    habit = [f"h{n:03d}" for n in range(80)]
    arrive(base, merc, "mercenary", clock.now)
    arrive(base, habit, "habitual", clock.now)
    for user in merc[:40] + habit[:40]:
        side[user] = offers.evaluate(user, cid).decision
    swept = offers.sweep(cid)  # the batched path decides the rest
    assert swept.decisions["not_targeted"] == 0
    with offers.repository.engine.connect() as conn:
        side.update(
            conn.execute(
                select(offer_decisions.c.user_id, offer_decisions.c.decision).where(
                    offer_decisions.c.campaign_id == cid
                )
            ).all()
        )
    assert all(side[u] == ("holdout" if holdout(u) else "issued") for u in merc + habit)
    bought = buyers(merc, habit, side)
    buy(base, bought, T0 + timedelta(minutes=30))

    # the verdicts are read once per refresh period, not per decision
    reads: list[str] = []
    segment_counts = offers.targeting.reports.segment_counts

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[0])
        return segment_counts(*args, **kwargs)

    monkeypatch.setattr(offers.targeting.reports, "segment_counts", counting)
    clock.advance(hours=1)  # the learning verdicts (cached at T0) are stale now
    later_merc = [f"lm{n:03d}" for n in range(120)]
    later_habit = [f"lh{n:03d}" for n in range(60)]
    arrive(base, later_merc, "mercenary", clock.now)
    arrive(base, later_habit, "habitual", clock.now)
    answers = {u: offers.evaluate(u, cid) for u in later_merc[:60] + later_habit[:30]}
    assert reads == [cid]
    offers.sweep(cid)
    assert reads == [cid]
    with offers.repository.engine.connect() as conn:
        recorded = dict(
            conn.execute(
                select(offer_decisions.c.user_id, offer_decisions.c.decision).where(
                    offer_decisions.c.campaign_id == cid
                )
            ).all()
        )
    for user in later_merc:
        if holdout(user):
            want = "holdout"
        elif explored(cid, user, UPLIFT.uplift_exploration_percent):
            want = "issued"
        else:
            want = "not_targeted"
        assert recorded[user] == want, user
        if user in answers and want == "not_targeted":
            assert answers[user].reasons == ("no_measured_uplift:mercenary",)
    for user in later_habit:
        assert recorded[user] == ("holdout" if holdout(user) else "issued"), user
    kinds = [recorded[u] for u in later_merc]
    assert kinds.count("not_targeted") > 0
    assert kinds.count("issued") > 0  # the exploration share
    assert kinds.count("holdout") > 0  # the holdout never stops
    later_bought = buyers(later_merc, later_habit, recorded)
    buy(base, later_bought, clock.now + timedelta(seconds=10))
    bought += later_bought
    clock.advance(seconds=61)
    arrive(base, ["late"], "mercenary", clock.now)
    offers.evaluate("late", cid)
    assert reads == [cid, cid]  # re-read once the period is over

    # the stats by segment, against the arithmetic of what was seeded
    stats = reports.stats(cid)
    rows = {(r.axis, r.result.segment): r for r in stats.segments}
    everyone = merc + habit + later_merc + later_habit + ["late"]
    recorded["late"] = offers.repository.decisions.recorded(cid, "late").decision  # type: ignore[union-attr]
    for loyalty, users in (
        ("mercenary", merc + later_merc + ["late"]),
        ("habitual", habit + later_habit),
    ):
        row = rows[("loyalty_type", loyalty)].result
        treated = [u for u in users if recorded[u] == "issued"]
        held = [u for u in users if recorded[u] == "holdout"]
        left = [u for u in users if recorded[u] == "not_targeted"]
        assert (row.treated, row.holdout, row.not_targeted) == (len(treated), len(held), len(left))
        assert row.decided == len(users)
        converted_t = sum(u in bought for u in treated)
        converted_h = sum(u in bought for u in held)
        assert (row.treated_converted, row.holdout_converted) == (converted_t, converted_h)
        measured = row.uplift
        assert measured is not None
        assert measured.estimate == pytest.approx(
            converted_t / len(treated) - converted_h / len(held)
        )
        assert measured.low < measured.estimate < measured.high
    merc_row, habit_row = rows[("loyalty_type", "mercenary")], rows[("loyalty_type", "habitual")]
    assert (merc_row.targeted, merc_row.reason) == (False, "no_measured_uplift")
    assert merc_row.result.uplift is not None
    assert merc_row.result.uplift.low <= 0
    assert (habit_row.targeted, habit_row.reason) == (True, "uplift_above_zero")
    assert habit_row.result.uplift is not None
    assert habit_row.result.uplift.low > 0
    assert rows[("loyalty_type", "latent")].reason == "learning"
    new = rows[("lifecycle_stage", "new")]
    assert (new.result.decided, new.reason) == (len(everyone), "not_measured")
    assert stats.decisions["not_targeted"] == sum(recorded[u] == "not_targeted" for u in everyone)


def test_the_decision_kind_constraint_knows_not_targeted(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    row = {
        "campaign_id": "c",
        "user_id": "u",
        "views": 1,
        "decided_at": T0,
        "convert_until": T0,
        "lifecycle_stage": "new",
        "loyalty_type": "mercenary",
    }
    with engine.begin() as conn:
        conn.execute(
            insert(offer_decisions).values(
                {**row, "decision": "not_targeted", "attribution_id": "a"}
            )
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            insert(offer_decisions).values(
                {**row, "user_id": "v", "decision": "maybe", "attribution_id": "b"}
            )
        )
    engine.dispose()


def seed_decisions(engine: Engine, campaign_id: str, loyalty: str, n: int, at: datetime) -> None:
    """``n`` treated and ``n`` held-out decisions in segment ``loyalty``, none converted."""
    rows = [
        {
            "campaign_id": campaign_id,
            "user_id": f"seed-{kind}-{i}",
            "decision": kind,
            "attribution_id": f"{kind[:1]}{i:031d}",
            "views": 1,
            "decided_at": at,
            "convert_until": at + timedelta(hours=24),
            "lifecycle_stage": "active",
            "loyalty_type": loyalty,
        }
        for kind in ("issued", "holdout")
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(insert(offer_decisions), rows)


def test_parallel_evaluations_of_a_left_out_user_record_one_not_targeted_decision(
    database_url: str,
) -> None:
    clock = Clock(T0)
    offers, _ = offer_engine(database_url, clock)
    base = offers.repository.base
    cid = UPLIFT.campaign_id
    seed_decisions(base.engine, cid, "mercenary", UPLIFT.uplift_min_users, T0 - timedelta(hours=2))
    user = next(
        u
        for u in (f"left-{n}" for n in range(100))
        if not in_holdout(cid, u, UPLIFT.holdout_percent)
        and not explored(cid, u, UPLIFT.uplift_exploration_percent)
    )
    arrive(base, [user], "mercenary", clock.now)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: offers.evaluate(user, cid), range(40)))
    made = [a for a in answers if a.decision == "not_targeted"]
    assert len(made) == 1
    assert made[0].reasons == ("no_measured_uplift:mercenary",)
    assert all(
        (a.decision, a.previous) == ("already_decided", "not_targeted")
        for a in answers
        if a is not made[0]
    )
    assert all(a.coupon is None for a in answers)
    with base.engine.connect() as conn:
        rows = conn.execute(
            select(offer_decisions.c.decision, offer_decisions.c.loyalty_type).where(
                offer_decisions.c.user_id == user
            )
        ).all()
    assert [tuple(r) for r in rows] == [("not_targeted", "mercenary")]


def test_stale_verdicts_serve_while_newer_ones_are_read_in_the_background(
    database_url: str,
) -> None:
    clock = Clock(T0)
    offers, _ = offer_engine(database_url, clock, background=True)
    base = offers.repository.base
    cid = UPLIFT.campaign_id
    targeting = offers.targeting
    assert targeting.results(UPLIFT)["mercenary"].decided == 0  # the first read: in the call
    seed_decisions(base.engine, cid, "mercenary", UPLIFT.uplift_min_users, T0)
    clock.advance(seconds=61)
    # stale: this call answers from the previous read and starts a new one beside it
    assert targeting.results(UPLIFT)["mercenary"].decided == 0
    targeting.wait()
    fresh = targeting.results(UPLIFT)["mercenary"]
    assert (fresh.treated, fresh.holdout) == (UPLIFT.uplift_min_users, UPLIFT.uplift_min_users)


def test_a_left_out_segment_is_answered_not_targeted_over_http(
    small_model_root: Path, database_url: str, tmp_path: Path
) -> None:
    path = campaigns_file(
        tmp_path,
        "[campaigns.thank_you]\nmin_views = 1\nholdout_percent = 50\nmax_per_day = 1000\n"
        "uplift_targeting = true\nuplift_min_users = 20\nuplift_exploration_percent = 20\n",
    )
    cid = "thank_you"
    with make_client(small_model_root, database_url, Clock(T0), campaigns_file=path) as c:
        engine = c.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
        seed_decisions(engine, cid, "mercenary", 20, T0 - timedelta(hours=3))
        left = [
            u
            for u in (f"web-{n}" for n in range(200))
            if not in_holdout(cid, u, 50) and not explored(cid, u, 20)
        ][:2]
        for user, loyalty in zip(left, ("mercenary", "committed"), strict=True):
            sign_up(c, user, ago=timedelta(hours=1), views=1)
            put_segment(engine, user, "active", loyalty)
        body = evaluate(c, left[0], cid)
        assert (body["decision"], body["reasons"]) == (
            "not_targeted",
            ["no_measured_uplift:mercenary"],
        )
        assert body["coupon"] is None
        again = evaluate(c, left[0], cid)
        assert (again["decision"], again["previous_decision"]) == (
            "already_decided",
            "not_targeted",
        )
        assert evaluate(c, left[1], cid)["decision"] == "issued"  # committed: still learning
        stats = c.get(f"/v1/campaigns/{cid}/stats", headers=M).json()
        assert stats["decisions"]["not_targeted"] == 1
        rows = {s["segment"]: s for s in stats["segments"] if s["axis"] == "loyalty_type"}
        merc = rows["mercenary"]
        assert (merc["treated"], merc["holdout"], merc["not_targeted"]) == (20, 20, 1)
        assert (merc["targeted"], merc["reason"]) == (False, "no_measured_uplift")
        assert merc["uplift"]["estimate"] == 0.0
        assert merc["uplift"]["low"] < 0 < merc["uplift"]["high"]
        assert (rows["committed"]["treated"], rows["committed"]["reason"]) == (1, "learning")
