"""The lifecycle kinds' rules (issue 12, item 2): who qualifies now, and for which occurrence.

Plain functions over ``UserFacts`` and a moment, no database and no clock, shared by the online
engine and the offline backtest like ``rules.check_eligibility`` (which applies the
``new_user_high_intent`` rule and the rules every kind shares: active, account age, attributes).

A recurring campaign decides once per user **per occurrence**; the occurrence is a key derived
from the facts alone, so two replicas deciding the same user at the same time derive the same
key and the decision's unique index (campaign, user, occurrence) keeps one of them:

- ``win_back``: at least ``min_orders`` orders, the last one older than
  ``lapse_rhythm_factor`` x their own mean interval between orders (``lapse_days`` when that
  is unknown), never sooner than ``min_lapse_days``, not gone longer than ``max_lapse_days``.
  Occurrence ``lapse:<day of the last order>``: once per lapse.
- ``purchase_anniversary``: inside ``[date - days_before, date + days_after]`` of a whole-year
  anniversary of the first order. Occurrence ``year:<the anniversary's year>``.
- ``birthday``: inside the same window around the birthday attribute (``MM-DD`` or
  ``YYYY-MM-DD``). Occurrence ``year:<the birthday's year>``.
- ``frequent_buyer``: at least ``min_orders`` orders within the last ``within_days``.
  Occurrence ``orders:<m>``: the m-th multiple of ``min_orders`` orders reached.
- ``abandoned_cart``: add-to-carts after their last purchase, the latest one between
  ``cart_idle_hours`` and ``cart_max_age_hours`` old. Occurrence ``cart:<time of the cart's
  first add>``: once per cart.

A 29 February (birthday or first order) falls on 28 February in other years.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from service.offers.campaigns import Campaign

if TYPE_CHECKING:  # rules applies these and imports this module
    from service.offers.rules import UserFacts

ONCE = ""  # the occurrence of a campaign decided once per user
_MONTH_DAY = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class Occasion:
    """What a kind's rule found: ``reasons`` empty when the user qualifies for ``occurrence``."""

    reasons: tuple[str, ...]
    occurrence: str = ONCE


def rhythm(facts: UserFacts) -> timedelta | None:
    """The customer's mean interval between orders; None with fewer than two orders."""
    if facts.orders < 2 or facts.first_order_at is None or facts.last_order_at is None:
        return None
    return (facts.last_order_at - facts.first_order_at) / (facts.orders - 1)


def lapse_threshold(campaign: Campaign, facts: UserFacts) -> timedelta:
    """How long after their last order the customer counts as lapsed for ``campaign``."""
    own = rhythm(facts)
    factor = campaign.lapse_rhythm_factor
    if own is not None and factor is not None and own > timedelta(0):
        threshold = own * factor
    else:
        threshold = timedelta(days=campaign.lapse_days)
    return max(threshold, timedelta(days=campaign.min_lapse_days))


def on_day(year: int, month: int, day: int) -> date:
    """``year-month-day``, with 29 February on the 28th in a year without one."""
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, month, day)


def parse_month_day(value: object) -> tuple[int, int] | None:
    """(month, day) of ``MM-DD`` or ``YYYY-MM-DD``; None when it is neither or no real date."""
    if not isinstance(value, str):
        return None
    match = _MONTH_DAY.match(value.strip())
    if match is None:
        return None
    month, day = int(match.group(2)), int(match.group(3))
    try:
        date(2000, month, day)  # a leap year: 02-29 is a date
    except ValueError:
        return None
    return month, day


def yearly_window(
    campaign: Campaign, month: int, day: int, now: datetime, *, first_year: int | None = None
) -> int | None:
    """The year whose ``month-day`` window of ``campaign`` holds ``now`` (UTC days), or None.

    The window is ``[date - days_before, date + days_after]``, whole UTC days; a window that
    crosses new year belongs to the year of its date. ``first_year``: no date before it.
    """
    today = now.astimezone(UTC).date()
    for year in (today.year - 1, today.year, today.year + 1):
        if first_year is not None and year < first_year:
            continue
        moment = on_day(year, month, day)
        opens = moment - timedelta(days=campaign.days_before)
        closes = moment + timedelta(days=campaign.days_after)
        if opens <= today <= closes:
            return year
    return None


def occasion(campaign: Campaign, facts: UserFacts, now: datetime) -> Occasion:
    """Apply ``campaign``'s kind to ``facts`` at ``now``.

    ``new_user_high_intent`` has no occasion (``rules.check_eligibility`` applies its rule);
    it is always ``ONCE`` with no reasons here.
    """
    kind = campaign.kind
    if kind == "win_back":
        return _win_back(campaign, facts, now)
    if kind == "purchase_anniversary":
        return _anniversary(campaign, facts, now)
    if kind == "birthday":
        return _birthday(campaign, facts, now)
    if kind == "frequent_buyer":
        return _frequent(campaign, facts)
    if kind == "abandoned_cart":
        return _cart(campaign, facts, now)
    return Occasion(())


def _win_back(campaign: Campaign, facts: UserFacts, now: datetime) -> Occasion:
    last = facts.last_order_at
    if facts.orders < campaign.min_orders or last is None:
        return Occasion(("too_few_orders",))
    gone = now - last
    if gone <= lapse_threshold(campaign, facts):
        return Occasion(("not_lapsed",))
    if campaign.max_lapse_days is not None and gone > timedelta(days=campaign.max_lapse_days):
        return Occasion(("lapsed_too_long",))
    return Occasion((), f"lapse:{last.astimezone(UTC).date().isoformat()}")


def _anniversary(campaign: Campaign, facts: UserFacts, now: datetime) -> Occasion:
    first = facts.first_order_at
    if first is None:
        return Occasion(("no_order",))
    day = first.astimezone(UTC).date()
    year = yearly_window(campaign, day.month, day.day, now, first_year=day.year + 1)
    if year is None:
        return Occasion(("not_anniversary",))
    return Occasion((), f"year:{year}")


def _birthday(campaign: Campaign, facts: UserFacts, now: datetime) -> Occasion:
    value = facts.attributes.get(campaign.birthday_attribute)
    if value is None:
        return Occasion(("birthday_unknown",))
    parsed = parse_month_day(value)
    if parsed is None:
        return Occasion(("birthday_invalid",))
    year = yearly_window(campaign, *parsed, now)
    if year is None:
        return Occasion(("not_birthday",))
    return Occasion((), f"year:{year}")


def _frequent(campaign: Campaign, facts: UserFacts) -> Occasion:
    if facts.recent_orders < campaign.min_orders:
        return Occasion(("too_few_recent_orders",))
    return Occasion((), f"orders:{facts.orders // campaign.min_orders}")


def _cart(campaign: Campaign, facts: UserFacts, now: datetime) -> Occasion:
    started, last = facts.cart_started_at, facts.cart_last_at
    if started is None or last is None or not facts.cart_items:
        return Occasion(("no_open_cart",))
    idle = now - last
    if idle < timedelta(hours=campaign.cart_idle_hours):
        return Occasion(("cart_still_active",))
    if idle > timedelta(hours=campaign.cart_max_age_hours):
        return Occasion(("cart_too_old",))
    return Occasion((), f"cart:{started.astimezone(UTC).isoformat(timespec='seconds')}")
