"""Abuse (issue 12, item 7): daily caps by default, signed_up_at never later, account age and
verified attributes, on SQLite and on PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.app import create_app
from service.db import make_engine, migrate
from service.errors import CampaignConfigError, SignUpMovedLater
from service.offers import decisions as decisions_module
from service.offers.campaigns import BUILT_IN, DEFAULT_MAX_PER_DAY, Campaign, load_campaigns
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository
from service.offers.repository.decisions import day_of
from service.settings import Settings
from service.tables import campaign_budgets, offer_decisions

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
FRONTEND = "frontend-key-0123456789"


def offer_engine(url: str, campaigns: list[Campaign], clock: Callable[[], datetime]) -> OfferEngine:
    engine = make_engine(url, timeout_seconds=30, pool_size=25)
    migrate(engine)
    return OfferEngine(
        {c.campaign_id: c for c in campaigns}, OfferRepository(Repository(engine, clock)), clock
    )


def viewer(
    base: Repository,
    user_id: str,
    *,
    signed_up_hours_ago: float | None,
    first_event_hours_ago: float = 0.4,
    attributes: dict[str, Any] | None = None,
) -> None:
    """A user with 12 views since ``first_event_hours_ago``; signed up then if given."""
    if signed_up_hours_ago is not None or attributes is not None:
        signed_up_at = (
            None if signed_up_hours_ago is None else NOW - timedelta(hours=signed_up_hours_ago)
        )
        base.upsert_user(user_id, signed_up_at=signed_up_at, attributes=attributes)
    start = NOW - timedelta(hours=first_event_hours_ago)
    base.add_events(
        [
            NewEvent(user_id, "view", start + timedelta(seconds=n + 1), item_id=f"i{n % 5}")
            for n in range(12)
        ]
    )


# --- caps per day on by default ----------------------------------------------------------------


def test_the_built_in_campaign_is_capped_per_day_by_default() -> None:
    built_in = load_campaigns(None)[BUILT_IN]
    assert built_in.max_per_day == DEFAULT_MAX_PER_DAY > 0
    assert built_in.public()["max_per_day"] == DEFAULT_MAX_PER_DAY
    assert built_in.max_total is None


def test_the_campaigns_file_overrides_the_cap_or_says_no_cap(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text(
        f'[campaigns.{BUILT_IN}]\nmax_per_day = "unlimited"\n\n'
        "[campaigns.small]\nmax_per_day = 5\n\n"
        '[campaigns.open]\nmax_per_day = "unlimited"\nmax_total = "unlimited"\n\n'
        "[campaigns.plain]\nmin_views = 20\n"
    )
    campaigns = load_campaigns(path)
    assert campaigns[BUILT_IN].max_per_day is None
    assert campaigns[BUILT_IN].public()["max_per_day"] is None
    assert campaigns["small"].max_per_day == 5
    assert (campaigns["open"].max_per_day, campaigns["open"].max_total) == (None, None)
    assert campaigns["plain"].max_per_day == DEFAULT_MAX_PER_DAY  # the default, not no cap


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('max_per_day = "lots"', "max_per_day"),
        ("max_per_day = -1", "max_per_day"),
        ('max_total = "none"', "max_total"),
        ("min_account_age_hours = -1", "min_account_age_hours"),
        ('min_account_age_hours = "old"', "min_account_age_hours"),
        ("min_account_age_hours = 24", "min_account_age_hours"),  # never both old and new
        ('require_attributes = "email_verified"', "require_attributes"),
        ('require_attributes = [""]', "require_attributes"),
        ('require_attributes = ["email_verified", "email_verified"]', "require_attributes"),
    ],
)
def test_bad_abuse_settings_are_refused_at_start_naming_the_field(
    tmp_path: Path, line: str, field: str
) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text(f"[campaigns.{BUILT_IN}]\n{line}\n")
    with pytest.raises(CampaignConfigError, match=field):
        load_campaigns(path)


def test_the_default_daily_cap_refuses_coupons_past_it(database_url: str, tmp_path: Path) -> None:
    """The built-in as loaded without a file: today's budget one short of the default cap (as
    if that many coupons went out today), one more coupon, then a budget miss; with the file's
    ``"unlimited"`` the next one is issued."""
    built_in = load_campaigns(None)[BUILT_IN].model_copy(update={"holdout_percent": 0.0})
    offers = offer_engine(database_url, [built_in], lambda: NOW)
    try:
        with offers.repository.base.writing() as conn:
            conn.execute(
                insert(campaign_budgets).values(
                    campaign_id=BUILT_IN, period=day_of(NOW), issued=DEFAULT_MAX_PER_DAY - 1
                )
            )
        for n in range(3):
            viewer(offers.repository.base, f"cap-{n}", signed_up_hours_ago=1)
        assert offers.evaluate("cap-0", BUILT_IN).decision == "issued"
        refused = offers.evaluate("cap-1", BUILT_IN)
        assert (refused.decision, refused.reasons) == ("budget_exhausted", (f"cap_{day_of(NOW)}",))
        path = tmp_path / "campaigns.toml"
        path.write_text(f'[campaigns.{BUILT_IN}]\nholdout_percent = 0\nmax_per_day = "unlimited"\n')
        offers.campaigns = load_campaigns(path)
        assert offers.evaluate("cap-1", BUILT_IN).decision == "issued"
        assert offers.evaluate("cap-2", BUILT_IN).decision == "issued"
    finally:
        offers.repository.engine.dispose()


# --- signed_up_at never moves later ----------------------------------------------------------


def repository(url: str) -> Repository:
    engine = make_engine(url, timeout_seconds=30, pool_size=25)
    migrate(engine)
    return Repository(engine, lambda: NOW)


def test_signed_up_at_moves_earlier_never_later(database_url: str) -> None:
    base = repository(database_url)
    try:
        first = NOW - timedelta(hours=5)
        base.upsert_user("u", signed_up_at=first, attributes={"country": "UK"})
        with pytest.raises(SignUpMovedLater) as refused:
            base.upsert_user(
                "u", signed_up_at=first + timedelta(seconds=1), attributes={"country": "FR"}
            )
        assert refused.value.field == "signed_up_at"
        stored = base.get_user("u")
        assert stored is not None
        assert stored.signed_up_at == first
        assert stored.attributes == {"country": "UK"}  # nothing of the refused request written
        assert base.upsert_user("u", signed_up_at=first).signed_up_at == first  # equal: fine
        earlier = first - timedelta(days=2)
        assert base.upsert_user("u", signed_up_at=earlier).signed_up_at == earlier
        # without signed_up_at the other fields still change
        assert base.upsert_user("u", attributes={"country": "DE"}).signed_up_at == earlier
    finally:
        base.engine.dispose()


def test_a_sign_up_event_never_moves_signed_up_at(database_url: str) -> None:
    base = repository(database_url)
    try:
        first = NOW - timedelta(hours=5)
        base.add_events([NewEvent("ev", "sign_up", first)])
        stored = base.get_user("ev")
        assert stored is not None
        assert stored.signed_up_at == first  # unknown until then: the event sets it
        base.add_events([NewEvent("ev", "sign_up", NOW - timedelta(hours=1))])
        stored = base.get_user("ev")
        assert stored is not None
        assert stored.signed_up_at == first
        base.import_events([NewEvent("ev", "sign_up", NOW - timedelta(minutes=5))])
        stored = base.get_user("ev")
        assert stored is not None
        assert stored.signed_up_at == first
    finally:
        base.engine.dispose()


def test_racing_puts_cannot_let_a_later_sign_up_win(database_url: str) -> None:
    """Sixteen PUTs of sixteen times at once, five rounds: the earliest always stays."""
    base = repository(database_url)
    try:
        for round_ in range(5):
            user = f"race-{round_}"
            times = [NOW - timedelta(hours=h) for h in range(1, 17)]
            random.Random(round_).shuffle(times)
            start = threading.Barrier(len(times))

            def put(moment: datetime, user: str = user, start: threading.Barrier = start) -> str:
                start.wait()
                try:
                    base.upsert_user(user, signed_up_at=moment)
                except SignUpMovedLater:
                    return "refused"
                return "taken"

            with ThreadPoolExecutor(len(times)) as pool:
                outcomes = dict(zip(times, pool.map(put, times), strict=True))
            stored = base.get_user(user)
            assert stored is not None
            assert stored.signed_up_at == min(times)
            assert outcomes[min(times)] == "taken"
    finally:
        base.engine.dispose()


def test_put_user_answers_409_naming_signed_up_at(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=database_url,
        frontend_keys=[FRONTEND],
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
    )
    key = {"X-API-Key": FRONTEND}
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        first = {"signed_up_at": "2026-11-20T09:00:00Z", "attributes": {"email_verified": True}}
        assert client.put("/v1/users/p", json=first, headers=key).status_code == 200
        later = {"signed_up_at": "2026-11-20T11:00:00Z", "attributes": {}}
        answer = client.put("/v1/users/p", json=later, headers=key)
        assert answer.status_code == 409
        body = answer.json()
        assert body["error"] == "signed_up_at_conflict"
        assert body["detail"][0]["field"] == "signed_up_at"
        earlier = client.put(
            "/v1/users/p", json={"signed_up_at": "2026-11-20T08:00:00+00:00"}, headers=key
        )
        assert earlier.status_code == 200
        assert earlier.json()["signed_up_at"].startswith("2026-11-20T08:00:00")
        assert earlier.json()["attributes"] == {"email_verified": True}


# --- minimum account age and verified attributes -----------------------------------------

GUARDED = Campaign(
    holdout_percent=0,
    max_per_day=None,
    min_account_age_hours=1,
    require_attributes=("email_verified",),
)


def test_account_age_and_verified_attributes_refuse_with_their_reason(database_url: str) -> None:
    offers = offer_engine(database_url, [GUARDED], lambda: NOW)
    try:
        base = offers.repository.base
        verified = {"email_verified": True}
        viewer(base, "old-verified", signed_up_hours_ago=2, attributes=verified)
        viewer(base, "too-new", signed_up_hours_ago=0.5, attributes=verified)
        # events dated back make an old first event, not an old account
        viewer(base, "no-sign-up", signed_up_hours_ago=None, first_event_hours_ago=3)
        base.upsert_user("no-sign-up", attributes=verified)
        viewer(base, "unverified", signed_up_hours_ago=2, attributes={"email_verified": False})
        viewer(base, "says-yes", signed_up_hours_ago=2, attributes={"email_verified": "true"})
        viewer(base, "no-attributes", signed_up_hours_ago=2)
        expected = {
            "old-verified": ("issued", ()),
            "too-new": ("not_eligible", ("account_too_new",)),
            "no-sign-up": ("not_eligible", ("account_age_unknown",)),
            "unverified": ("not_eligible", ("attribute_not_true:email_verified",)),
            "says-yes": ("not_eligible", ("attribute_not_true:email_verified",)),
            "no-attributes": ("not_eligible", ("attribute_not_true:email_verified",)),
        }
        got = {
            user: ((d := offers.evaluate(user, BUILT_IN)).decision, d.reasons) for user in expected
        }
        assert got == expected
        # the page's offer applies the same rule
        page = offers.offer_for_page("too-new", decide=True)
        assert page is not None
        assert (page.decision, page.reasons) == ("not_eligible", ("account_too_new",))
        assert page.coupon is None
    finally:
        offers.repository.engine.dispose()


def test_an_account_old_enough_later_gets_its_coupon(database_url: str) -> None:
    now = [NOW]
    offers = offer_engine(database_url, [GUARDED], lambda: now[0])
    try:
        viewer(
            offers.repository.base,
            "young",
            signed_up_hours_ago=0.5,
            attributes={"email_verified": True},
        )
        assert offers.evaluate("young", BUILT_IN).reasons == ("account_too_new",)
        now[0] = NOW + timedelta(minutes=31)
        assert offers.evaluate("young", BUILT_IN).decision == "issued"
    finally:
        offers.repository.engine.dispose()


def test_the_batched_sweep_applies_the_same_rule_as_evaluate(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two campaigns of one definition on one database: one swept (in batches of 3), the other
    evaluated user by user; the same users get a coupon, the same are left undecided."""
    monkeypatch.setattr(decisions_module, "SWEEP_BATCH", 3)
    swept = GUARDED.model_copy(update={"campaign_id": "swept"})
    one_by_one = GUARDED.model_copy(update={"campaign_id": "one-by-one"})
    offers = offer_engine(database_url, [swept, one_by_one], lambda: NOW)
    try:
        base = offers.repository.base
        users = []
        for n in range(14):
            user = f"mix-{n:02d}"
            users.append(user)
            attributes = None if n % 4 == 0 else {"email_verified": n % 3 != 0}
            viewer(
                base,
                user,
                signed_up_hours_ago=None if n % 5 == 0 else (0.5 if n % 2 else 3),
                attributes=attributes,
            )
        result = offers.sweep("swept")
        for user in users:
            offers.evaluate(user, "one-by-one")
        by_sweep = {u: k for c, u, k in _decisions(offers) if c == "swept"}
        by_evaluate = {u: k for c, u, k in _decisions(offers) if c == "one-by-one"}
        assert by_sweep == by_evaluate
        assert set(by_sweep.values()) == {"issued"}
        assert 0 < len(by_sweep) < len(users)  # both kinds of user are there
        assert result.decisions["issued"] == len(by_sweep)
        assert result.decisions["not_eligible"] == len(users) - len(by_sweep)
        # the users refused are refused for the abuse rules, user by user
        for user in set(users) - set(by_sweep):
            reasons = offers.evaluate(user, "one-by-one").reasons
            assert reasons
            assert all(r.startswith(("account_", "attribute_not_true:")) for r in reasons)
    finally:
        offers.repository.engine.dispose()


def _decisions(offers: OfferEngine) -> list[tuple[str, str, str]]:
    d = offer_decisions
    with offers.repository.engine.connect() as conn:
        rows = conn.execute(select(d.c.campaign_id, d.c.user_id, d.c.decision)).all()
    return [(str(c), str(u), str(k)) for c, u, k in rows]


def test_the_files_rules_answer_over_http_and_a_bad_one_stops_the_start(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text(
        f"[campaigns.{BUILT_IN}]\nholdout_percent = 0\nmin_account_age_hours = 1\n"
        'require_attributes = ["email_verified"]\n'
    )
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=database_url,
        frontend_keys=[FRONTEND],
        campaigns_file=path,
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
    )
    key = {"X-API-Key": FRONTEND}
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        base: Repository = client.app.state.recoffer.repository  # type: ignore[attr-defined]
        viewer(base, "web-new", signed_up_hours_ago=0.5, attributes={"email_verified": True})
        viewer(base, "web-old", signed_up_hours_ago=2, attributes={"email_verified": False})
        for user, reasons in (
            ("web-new", ["account_too_new"]),
            ("web-old", ["attribute_not_true:email_verified"]),
        ):
            answer = client.post("/v1/offers/evaluate", json={"user_id": user}, headers=key)
            assert answer.status_code == 200
            assert (answer.json()["decision"], answer.json()["reasons"]) == (
                "not_eligible",
                reasons,
            )
    path.write_text(f"[campaigns.{BUILT_IN}]\nrequire_attributes = [1]\n")
    with pytest.raises(ValueError, match="require_attributes"):
        Settings(model_dir=tmp_path / "models", database_url=database_url, campaigns_file=path)
