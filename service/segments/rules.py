"""The segment rules: RFM scores, lifecycle stage and loyalty type from one user's figures.

Plain Python, no database: ``service.segments.repository`` aggregates the figures in SQL and
``service.segments.service`` feeds them through here. Every threshold comes from
``SegmentSettings`` (``RECOFFER_SEGMENT_*``); the README's "Segments" section states them.

Lifecycle stage, first rule that holds:

1. ``new``: no order yet;
2. ``lapsed``: the last order is older than ``lapsed_after`` = max(lapsed_factor x rhythm,
   lapsed_min_days);
3. ``at_risk``: older than ``at_risk_after`` = max(at_risk_factor x rhythm, at_risk_min_days);
4. ``new``: the first order is at most ``new_days`` old;
5. ``returning``: the gap before the last order was longer than ``lapsed_after`` measured with
   the rhythm before that order (the customer had lapsed and came back);
6. ``active``.

A customer's rhythm is the mean interval between their orders, (last - first) / (orders - 1),
when they have ``rhythm_min_orders`` orders or more, else the shop's typical interval (the
median of those rhythms over the shop's customers); never below ``min_interval_days``.

Loyalty type, behaviour (regular: ``regular_min_orders`` orders and the stage ``new`` or
``active``, i.e. buying on their rhythm) against engagement (``engaged_min_views`` views or
``engaged_min_active_days`` days with events in the last ``engagement_days``), first rule that
holds: ``mercenary`` (``mercenary_min_orders`` orders and a coupon share of at least
``mercenary_share``), ``committed`` (regular, engaged, a coupon share of at most
``committed_max_share``), ``habitual`` (regular), ``latent`` (engaged), ``not_loyal``.
"""

from __future__ import annotations

import bisect
import statistics
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from service.clock import SECONDS_PER_DAY
from service.money import from_units, to_units
from service.settings import SegmentSettings

Stage = Literal["new", "active", "at_risk", "lapsed", "returning"]
LoyaltyType = Literal["not_loyal", "habitual", "mercenary", "latent", "committed"]
STAGES: tuple[Stage, ...] = ("new", "active", "at_risk", "lapsed", "returning")
TYPES: tuple[LoyaltyType, ...] = ("not_loyal", "habitual", "mercenary", "latent", "committed")
QUANTILES = (0.2, 0.4, 0.6, 0.8)  # four breakpoints: five scores


@dataclass(frozen=True)
class Figures:
    """One user's aggregates as of a moment (what the SQL of the repository returns)."""

    user_id: str
    orders: int = 0
    coupon_orders: int = 0  # orders that redeemed a coupon
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    previous_order_at: datetime | None = None  # the order before the last one
    monetary: Decimal | None = None  # spent; None without a priced purchase or in two currencies
    currency: str | None = None
    views: int = 0  # in the engagement window
    active_days: int = 0  # distinct UTC days with any event, same window

    @property
    def coupon_share(self) -> float:
        """Share of the user's orders that redeemed a coupon (0 without an order)."""
        return min(1.0, self.coupon_orders / self.orders) if self.orders else 0.0

    def recency_days(self, now: datetime) -> float | None:
        """Days since the last order, None without one."""
        if self.last_order_at is None:
            return None
        return max(0.0, (now - self.last_order_at).total_seconds() / SECONDS_PER_DAY)

    def own_rhythm_days(self, min_orders: int) -> float | None:
        """The mean interval between the user's orders in days, with ``min_orders`` at least."""
        if self.orders < min_orders or self.first_order_at is None or self.last_order_at is None:
            return None
        span = (self.last_order_at - self.first_order_at).total_seconds() / SECONDS_PER_DAY
        return span / (self.orders - 1)


@dataclass(frozen=True)
class ShopThresholds:
    """What a bulk run learns from the whole shop: its typical interval and score breakpoints.

    ``recency``, ``frequency``: four breakpoints each (the 20/40/60/80 % quantiles over the
    customers); ``monetary``: four per currency. Empty tuples: no score.
    """

    typical_interval_days: float
    recency: tuple[float, ...] = ()
    frequency: tuple[float, ...] = ()
    monetary: dict[str, tuple[Decimal, ...]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "typical_interval_days": self.typical_interval_days,
            "recency": list(self.recency),
            "frequency": list(self.frequency),
            "monetary": {c: [str(b) for b in bs] for c, bs in self.monetary.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ShopThresholds:
        return cls(
            typical_interval_days=float(doc["typical_interval_days"]),
            recency=tuple(float(b) for b in doc.get("recency", ())),
            frequency=tuple(float(b) for b in doc.get("frequency", ())),
            monetary={
                c: tuple(Decimal(b) for b in bs) for c, bs in doc.get("monetary", {}).items()
            },
        )


@dataclass(frozen=True)
class Segment:
    """One user's segment: the figures, the scores, the stage and the type."""

    figures: Figures
    computed_at: datetime
    r_score: int | None
    f_score: int | None
    m_score: int | None
    lifecycle_stage: Stage
    loyalty_type: LoyaltyType
    rhythm_days: float  # the rhythm the stage was judged by (own or the shop's)


def breakpoints(values: Sequence[Any]) -> tuple[Any, ...]:
    """The 20/40/60/80 % quantiles of ``values`` (lower values, no interpolation)."""
    if not values:
        return ()
    ordered = sorted(values)
    last = len(ordered) - 1
    return tuple(ordered[int(q * last)] for q in QUANTILES)


def score(value: Any, breaks: Sequence[Any], *, lower_is_better: bool = False) -> int | None:
    """1..5: one more for each breakpoint ``value`` is above (or below, for recency)."""
    if not breaks:
        return None
    above = bisect.bisect_left(list(breaks), value)  # breakpoints strictly below the value
    return 5 - above if lower_is_better else 1 + above


def typical_interval(rhythms: Iterable[float], settings: SegmentSettings) -> float:
    """The shop's typical interval between orders: the median customer rhythm, in days."""
    found = [r for r in rhythms if r is not None]
    if not found:
        return settings.default_interval_days
    return max(settings.min_interval_days, float(statistics.median(found)))


class ThresholdBuilder:
    """Collects the customers' figures of a bulk run, one at a time, into ``ShopThresholds``.

    Keeps a few numbers per customer in compact arrays (8 bytes each, money in
    ten-thousandths), never the rows: a million customers cost some 30 MB.
    """

    def __init__(self, settings: SegmentSettings, now: datetime) -> None:
        self.settings = settings
        self.now = now
        self.recency = array("d")
        self.frequency = array("q")
        self.monetary: dict[str, array[int]] = {}
        self.rhythms = array("d")

    def add(self, figures: Figures) -> None:
        recency = figures.recency_days(self.now)
        if recency is None:
            return
        self.recency.append(recency)
        self.frequency.append(figures.orders)
        if figures.monetary is not None and figures.currency is not None:
            spent = self.monetary.setdefault(figures.currency, array("q"))
            spent.append(to_units(figures.monetary))
        rhythm = figures.own_rhythm_days(self.settings.rhythm_min_orders)
        if rhythm is not None:
            self.rhythms.append(rhythm)

    @property
    def customers(self) -> int:
        return len(self.recency)

    def build(self) -> ShopThresholds:
        return ShopThresholds(
            typical_interval_days=typical_interval(self.rhythms, self.settings),
            recency=breakpoints(self.recency),
            frequency=breakpoints(self.frequency),
            monetary={
                c: tuple(from_units(b) for b in breakpoints(v))
                for c, v in sorted(self.monetary.items())
            },
        )


def rhythm_days(figures: Figures, shop: ShopThresholds, settings: SegmentSettings) -> float:
    """The customer's own rhythm, or the shop's typical interval; at least the minimum."""
    own = figures.own_rhythm_days(settings.rhythm_min_orders)
    return max(settings.min_interval_days, own if own is not None else shop.typical_interval_days)


def _after(rhythm: float, factor: float, floor_days: float) -> timedelta:
    return timedelta(days=max(factor * rhythm, floor_days))


def lifecycle_stage(
    figures: Figures, now: datetime, shop: ShopThresholds, settings: SegmentSettings
) -> Stage:
    """The stage of the module docstring, first rule that holds."""
    if figures.last_order_at is None or figures.first_order_at is None:
        return "new"
    rhythm = rhythm_days(figures, shop, settings)
    since_last = now - figures.last_order_at
    if since_last > _after(rhythm, settings.lapsed_factor, settings.lapsed_min_days):
        return "lapsed"
    if since_last > _after(rhythm, settings.at_risk_factor, settings.at_risk_min_days):
        return "at_risk"
    if now - figures.first_order_at <= timedelta(days=settings.new_days):
        return "new"
    previous = figures.previous_order_at
    if figures.orders >= 2 and previous is not None:
        # the rhythm before the last order: the long gap itself must not stretch it
        before = Figures(
            user_id=figures.user_id,
            orders=figures.orders - 1,
            first_order_at=figures.first_order_at,
            last_order_at=previous,
        )
        rhythm_before = rhythm_days(before, shop, settings)
        gap = figures.last_order_at - previous
        if gap > _after(rhythm_before, settings.lapsed_factor, settings.lapsed_min_days):
            return "returning"
    return "active"


def is_engaged(figures: Figures, settings: SegmentSettings) -> bool:
    """Browses and comes back: views or active days in the engagement window."""
    return (
        figures.views >= settings.engaged_min_views
        or figures.active_days >= settings.engaged_min_active_days
    )


def loyalty_type(figures: Figures, stage: Stage, settings: SegmentSettings) -> LoyaltyType:
    """The type of the module docstring, first rule that holds."""
    share = figures.coupon_share
    if figures.orders >= settings.mercenary_min_orders and share >= settings.mercenary_share:
        return "mercenary"
    # a returning customer is not regular again until an order comes on their rhythm
    regular = figures.orders >= settings.regular_min_orders and stage in ("new", "active")
    engaged = is_engaged(figures, settings)
    if regular and engaged and share <= settings.committed_max_share:
        return "committed"
    if regular:
        return "habitual"
    if engaged:
        return "latent"
    return "not_loyal"


def segment(
    figures: Figures, now: datetime, shop: ShopThresholds, settings: SegmentSettings
) -> Segment:
    """Scores, stage and type of one user as of ``now``."""
    recency = figures.recency_days(now)
    has_orders = recency is not None
    stage = lifecycle_stage(figures, now, shop, settings)
    monetary_breaks = shop.monetary.get(figures.currency or "", ())
    return Segment(
        figures=figures,
        computed_at=now,
        r_score=score(recency, shop.recency, lower_is_better=True) if has_orders else None,
        f_score=score(figures.orders, shop.frequency) if has_orders else None,
        m_score=score(figures.monetary, monetary_breaks)
        if has_orders and figures.monetary is not None
        else None,
        lifecycle_stage=stage,
        loyalty_type=loyalty_type(figures, stage, settings),
        rhythm_days=rhythm_days(figures, shop, settings),
    )
