"""The rule, the holdout draw, coupon codes, campaign files and the uplift interval."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.errors import CampaignConfigError, TooManyAttempts
from service.offers.campaigns import BUILT_IN, CAMPAIGN_KINDS, Campaign, load_campaigns
from service.offers.limiter import Caller, FailureLimiter
from service.offers.rules import (
    CODE_ALPHABET,
    UserFacts,
    check_eligibility,
    format_code,
    in_holdout,
    new_code,
    normalise_code,
)
from service.offers.stats import uplift, wilson
from service.settings import Settings

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PINNED_HOLDOUT = [f"synthetic-{n}" for n in (37, 38, 45, 46, 48, 57)]


def facts(
    hours_ago: float, views: int, distinct: int | None = None, bought: bool = False
) -> UserFacts:
    start = NOW - timedelta(hours=hours_ago)
    return UserFacts("u", start, views, views if distinct is None else distinct, bought)


@pytest.mark.parametrize(
    ("user", "reasons"),
    [
        (facts(2, 11), ()),
        (facts(2, 10), ("too_few_views",)),
        (facts(24, 11), ()),  # the window is inclusive: exactly a day after sign-up
        (facts(25, 11), ("not_new",)),
        (facts(2, 30, bought=True), ("already_purchased",)),
        (facts(30, 3, bought=True), ("not_new", "too_few_views", "already_purchased")),
        (UserFacts("u", None, 0, 0, False), ("unknown_user", "too_few_views")),
    ],
)
def test_the_default_rule(user: UserFacts, reasons: tuple[str, ...]) -> None:
    result = check_eligibility(Campaign(), user, NOW)
    assert result.reasons == reasons
    assert result.eligible is (not reasons)


def test_every_parameter_of_the_rule_is_configurable() -> None:
    campaign = Campaign(
        new_user_window_hours=48, min_views=5, count="distinct_items", require_no_purchase=False
    )
    assert check_eligibility(campaign, facts(40, 9, distinct=5, bought=True), NOW).eligible
    assert check_eligibility(campaign, facts(40, 9, distinct=4), NOW).reasons == ("too_few_views",)
    closed = Campaign(active_until=NOW)
    assert check_eligibility(closed, facts(1, 20), NOW).reasons == ("campaign_inactive",)
    assert check_eligibility(Campaign(enabled=False), facts(1, 20), NOW).reasons == (
        "campaign_inactive",
    )


def test_holdout_share_is_within_tolerance_over_ten_thousand_users() -> None:
    users = [f"synthetic-{n}" for n in range(10_000)]
    held = sum(in_holdout(BUILT_IN, u, 10.0) for u in users)
    # binomial sd is 30 users: 4 sd either side
    assert 880 <= held <= 1_120
    # pinned: the draw must not change between versions, processes or machines
    assert [u for u in users[:60] if in_holdout(BUILT_IN, u, 10.0)] == PINNED_HOLDOUT
    # another campaign draws another holdout
    other = sum(in_holdout(BUILT_IN, u, 10.0) != in_holdout("winback", u, 10.0) for u in users)
    assert other > 1_000
    assert not any(in_holdout(BUILT_IN, u, 0.0) for u in users[:1000])
    assert all(in_holdout(BUILT_IN, u, 100.0) for u in users[:1000])


def test_codes_are_long_random_and_free_of_look_alikes() -> None:
    codes = {new_code() for _ in range(2_000)}
    assert len(codes) == 2_000
    assert all(len(c) == 16 and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert not set(CODE_ALPHABET) & set("01ILO")
    assert 16 * math.log2(len(CODE_ALPHABET)) >= 60
    # symbols are used evenly (a biased generator would lose bits)
    counts = [sum(c.count(s) for c in codes) for s in CODE_ALPHABET]
    expected = 2_000 * 16 / len(CODE_ALPHABET)
    assert max(abs(n - expected) for n in counts) < 0.15 * expected


@given(st.text(alphabet=CODE_ALPHABET, min_size=16, max_size=16))
def test_a_code_survives_formatting_and_sloppy_typing(code: str) -> None:
    shown = format_code(code)
    assert normalise_code(shown) == code
    assert normalise_code(shown.lower().replace("-", " ")) == code


@pytest.mark.parametrize(
    "text", ["", "ABCD", "O" * 16, "ABCD-EFGH-JKMN-PQR", "ABCD-EFGH-JKMN-PQRS1"]
)
def test_text_that_cannot_be_a_code_is_refused(text: str) -> None:
    assert normalise_code(text) is None


def test_campaign_file_overrides_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[campaigns.new_user_high_intent]\ndiscount_percent = 15\nmax_per_day = 500\n\n"
        '[campaigns.weekend]\nmin_views = 20\ncount = "distinct_items"\n'
        "active_from = 2026-11-21T00:00:00Z\n"
    )
    campaigns = load_campaigns(path)
    assert list(campaigns) == [BUILT_IN, "weekend"]
    assert campaigns[BUILT_IN].discount_percent == 15
    assert campaigns[BUILT_IN].holdout_percent == 10  # the rest keep their defaults
    assert campaigns["weekend"].min_views == 20
    assert not campaigns["weekend"].is_active(NOW)
    assert load_campaigns(None)[BUILT_IN] == Campaign()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[campaigns.x]\nmin_views = 0\n", "campaign 'x', min_views"),
        ("[campaigns.x]\nunknown = 1\n", "campaign 'x', unknown"),
        ("[campaigns.x]\nholdout_percent = 120\n", "holdout_percent"),
        ("campaigns = 3\n", "table"),
        ("[other]\n", "unknown top-level"),
        ("[campaigns.x\n", "not valid TOML"),
        ("[campaigns.Bad_Id]\n", "campaign_id"),
    ],
)
def test_a_bad_campaign_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(CampaignConfigError, match=message):
        load_campaigns(path)


def test_the_service_refuses_to_start_with_a_bad_campaign_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[campaigns.x]\ndiscount_percent = 0\n")
    with pytest.raises(ValidationError, match="campaigns_file"):
        Settings(auth_disabled=True, campaigns_file=path)
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(auth_disabled=True, campaigns_file=tmp_path / "missing.toml")


def test_wilson_and_newcombe_match_the_published_example() -> None:
    # Newcombe (1998), table II, example (a): 56/70 against 48/80, method 10
    interval = uplift(56, 70, 48, 80)
    assert interval is not None
    assert interval.estimate == pytest.approx(0.2)
    assert interval.low == pytest.approx(0.0524, abs=5e-4)
    assert interval.high == pytest.approx(0.3339, abs=5e-4)
    w = wilson(0, 10)
    assert w is not None
    assert w.low == 0
    assert w.high == pytest.approx(0.2775, abs=5e-4)
    assert wilson(0, 0) is None
    assert uplift(1, 2, 0, 0) is None


def test_the_failure_limiter_counts_per_client_and_per_address() -> None:
    limiter = FailureLimiter(per_client=5, per_address=3, window_seconds=60)
    for _ in range(3):
        limiter.fail(Caller("frontend:aaaa", "192.0.2.1"))
    with pytest.raises(TooManyAttempts) as caught:
        limiter.fail(Caller("frontend:aaaa", "192.0.2.1"))
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60
    # another address of the same key counts on, up to the key's own limit of 5 in all
    limiter.fail(Caller("frontend:aaaa", "192.0.2.2"))
    with pytest.raises(TooManyAttempts):
        limiter.fail(Caller("frontend:aaaa", "192.0.2.3"))
    limiter.fail(Caller("frontend:bbbb", "192.0.2.4"))  # another key, another address: free
    limiter.clear(Caller("frontend:aaaa", "192.0.2.1"))
    limiter.fail(Caller("frontend:aaaa", "192.0.2.1"))


def test_the_example_campaign_file_in_the_docs_loads() -> None:
    path = Path(__file__).resolve().parents[3] / "docs" / "campaigns.example.toml"
    campaigns = load_campaigns(path)
    assert list(campaigns)[:2] == [BUILT_IN, "browsers_week_one"]
    assert campaigns["five_off_twenty"].discount_kind == "fixed"  # money (issue 12, item 3)
    kinds = {c.kind for c in campaigns.values()}
    assert kinds == set(CAMPAIGN_KINDS)  # an example of every kind (README, "Campaign kinds")
    assert campaigns[BUILT_IN].max_per_day == 500
    assert campaigns["browsers_week_one"].count == "distinct_items"
