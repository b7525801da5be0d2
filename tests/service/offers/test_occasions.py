"""The lifecycle kinds' rules and occurrences (issue 12, item 2), on hand-made facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.errors import CampaignConfigError
from service.offers.campaigns import (
    KIND_FIELDS,
    KIND_NAMES,
    KIND_SPECIFIC,
    Campaign,
    load_campaigns,
)
from service.offers.occasions import lapse_threshold, parse_month_day, yearly_window
from service.offers.rules import UserFacts, check_eligibility

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def facts(**kw: object) -> UserFacts:
    base: dict[str, object] = {
        "user_id": "u1",
        "started_at": NOW - 400 * DAY,
        "view_events": 0,
        "distinct_items": 0,
        "has_purchased": True,
    }
    base.update(kw)
    return UserFacts(**base)  # type: ignore[arg-type]


def campaign(kind: str, **kw: object) -> Campaign:
    return Campaign.model_validate({"campaign_id": kind.replace("_", "-"), "kind": kind, **kw})


def test_win_back_follows_the_customers_own_rhythm() -> None:
    c = campaign("win_back", min_orders=2, lapse_rhythm_factor=2.0, lapse_days=90)
    # every 10 days over 4 orders: lapsed after 20 days (above the 14-day floor)
    weekly = {"orders": 4, "first_order_at": NOW - 50 * DAY, "last_order_at": NOW - 21 * DAY}
    assert lapse_threshold(c, facts(**weekly)) == timedelta(days=2 * 29 / 3)
    first = facts(**{**weekly, "first_order_at": NOW - 51 * DAY})
    assert lapse_threshold(c, first) == 20 * DAY
    e = check_eligibility(c, first, NOW)
    assert e.eligible
    assert e.occurrence == "lapse:2026-05-25"
    recent = facts(**{**weekly, "first_order_at": NOW - 49 * DAY, "last_order_at": NOW - 19 * DAY})
    assert check_eligibility(c, recent, NOW).reasons == ("not_lapsed",)
    # one order: the rhythm is unknown, lapse_days applies
    once = facts(orders=1, first_order_at=NOW - 100 * DAY, last_order_at=NOW - 100 * DAY)
    assert check_eligibility(c, once, NOW).reasons == ("too_few_orders",)
    c1 = campaign("win_back", min_orders=1, lapse_days=90)
    assert check_eligibility(c1, once, NOW).eligible
    gone = facts(orders=3, first_order_at=NOW - 1000 * DAY, last_order_at=NOW - 800 * DAY)
    assert check_eligibility(c, gone, NOW).reasons == ("lapsed_too_long",)


def test_anniversary_and_birthday_open_once_a_year_around_the_date() -> None:
    c = campaign("purchase_anniversary", days_before=3, days_after=7)
    first = datetime(2025, 6, 17, 9, tzinfo=UTC)  # opens 3 days before: on the 14th
    e = check_eligibility(c, facts(orders=1, first_order_at=first, last_order_at=first), NOW)
    assert e.eligible
    assert e.occurrence == "year:2026"
    # the first order itself is no anniversary
    this_year = datetime(2026, 6, 14, tzinfo=UTC)
    got = check_eligibility(c, facts(orders=1, first_order_at=this_year), NOW)
    assert got.reasons == ("not_anniversary",)
    b = campaign("birthday", days_before=0, days_after=0)
    assert check_eligibility(b, facts(attributes={"birthday": "06-15"}), NOW).occurrence == (
        "year:2026"
    )
    assert check_eligibility(b, facts(attributes={"birthday": "1990-06-16"}), NOW).reasons == (
        "not_birthday",
    )
    assert check_eligibility(b, facts(attributes={"birthday": "13-01"}), NOW).reasons == (
        "birthday_invalid",
    )
    assert check_eligibility(b, facts(), NOW).reasons == ("birthday_unknown",)
    # a window across new year belongs to the date's year; 29 February falls on the 28th
    assert (
        yearly_window(
            b.model_copy(update={"days_before": 5}), 1, 2, datetime(2026, 12, 30, tzinfo=UTC)
        )
        == 2027
    )
    assert yearly_window(b, 2, 29, datetime(2027, 2, 28, tzinfo=UTC)) == 2027
    assert parse_month_day("02-29") == (2, 29)
    assert parse_month_day(19900101) is None


def test_frequent_buyer_thanks_at_every_multiple_of_orders() -> None:
    c = campaign("frequent_buyer", min_orders=3, within_days=30)
    assert check_eligibility(c, facts(orders=5, recent_orders=2), NOW).reasons == (
        "too_few_recent_orders",
    )
    assert check_eligibility(c, facts(orders=5, recent_orders=3), NOW).occurrence == "orders:1"
    assert check_eligibility(c, facts(orders=6, recent_orders=4), NOW).occurrence == "orders:2"


def test_abandoned_cart_waits_for_the_idle_time_and_gives_up_on_old_carts() -> None:
    c = campaign("abandoned_cart", cart_idle_hours=4, cart_max_age_hours=48)
    started = NOW - timedelta(hours=6)
    cart = {"cart_started_at": started, "cart_items": ("i1", "i2")}
    idle = facts(**cart, cart_last_at=NOW - timedelta(hours=5))
    e = check_eligibility(c, idle, NOW)
    assert e.eligible
    assert e.occurrence == "cart:2026-06-15T06:00:00+00:00"
    busy = facts(**cart, cart_last_at=NOW - timedelta(hours=1))
    assert check_eligibility(c, busy, NOW).reasons == ("cart_still_active",)
    old = facts(**cart, cart_last_at=NOW - timedelta(hours=49))
    assert check_eligibility(c, old, NOW).reasons == ("cart_too_old",)
    assert check_eligibility(c, facts(), NOW).reasons == ("no_open_cart",)


def test_a_field_of_another_kind_is_refused(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="min_views: not a field of kind 'win_back'"):
        campaign("win_back", min_views=3)
    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text('[campaigns.x]\nkind = "birthday"\nwithin_days = 3\n')
    with pytest.raises(CampaignConfigError, match="within_days: not a field of kind 'birthday'"):
        load_campaigns(path)
    path.write_text('[campaigns.x]\nkind = "loyalty"\n')
    with pytest.raises(CampaignConfigError, match="campaign 'x', kind"):
        load_campaigns(path)
    # the new-user rule's fields do not apply to other kinds, nor its reasons
    plain = campaign("birthday")
    e = check_eligibility(plain, facts(attributes={"birthday": "06-15"}), NOW)
    assert e.eligible
    assert "too_few_views" not in e.reasons


@pytest.mark.parametrize("kind", sorted(KIND_FIELDS))
def test_what_the_api_shows_of_a_campaign_validates_again_as_the_same_campaign(kind: str) -> None:
    variants: list[dict[str, object]] = [
        {},
        {"fixed_discount": "5.00", "currency": "EUR", "min_order_amount": "20"},
        {"uplift_targeting": True, "exclude_segments": ["mercenary"], "holdout_percent": 20},
    ]
    for extra in variants:
        c = Campaign.model_validate({"campaign_id": "c", "kind": kind, **extra})
        shown = c.public()
        assert Campaign.model_validate(shown) == c
        assert not (set(shown) & (KIND_SPECIFIC - KIND_FIELDS[c.kind]))  # no other kind's field
        assert c.name == KIND_NAMES[kind]  # named after its kind when no name is given
