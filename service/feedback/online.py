"""The online figures of one group of ``tally``: rates with Wilson intervals, and revenue per
1,000 impressions per currency with a normal-approximation interval.

Every rate is per impression (``figures.tally``): CTR = impressions clicked / impressions,
add-to-cart rate and conversion = impressions with an attributed add-to-cart / purchase /
impressions. Revenue per 1,000 impressions is the mean revenue of an impression (0 for those
that brought none) times 1,000: the estimate is exact (``Decimal``, to the ten-thousandth), the
interval is mean ± 1.96 standard errors from the sum of squares ``tally`` keeps (floats: an
interval is an approximation anyway), its low end never below 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from service.feedback.figures import Tally
from service.money import QUANTUM
from service.offers.stats import Z95, Interval, wilson

PER = 1000


@dataclass(frozen=True)
class RevenueRate:
    """One currency's attributed revenue and revenue per 1,000 impressions."""

    currency: str
    revenue: Decimal
    per_thousand: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True)
class Figures:
    """One group's online figures (``key``: dimension name to value)."""

    key: dict[str, str | None]
    impressions: int
    users: int
    clicks: int
    carts: int
    purchases: int
    ctr: Interval | None
    cart_rate: Interval | None
    conversion: Interval | None
    revenue: list[RevenueRate]


def revenue_rate(
    currency: str, total: Decimal, squares: float, impressions: int, z: float = Z95
) -> RevenueRate:
    """Revenue per 1,000 impressions of ``total`` over ``impressions`` (> 0), with its
    interval from the sum of squared revenues per impression ``squares``."""
    mean = float(total) / impressions
    if impressions > 1:
        variance = max(0.0, (squares - impressions * mean * mean) / (impressions - 1))
    else:
        variance = 0.0
    half = z * math.sqrt(variance / impressions) * PER
    estimate = (total * PER / impressions).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    low = max(Decimal(0), Decimal(repr(mean * PER - half)).quantize(QUANTUM))
    high = Decimal(repr(mean * PER + half)).quantize(QUANTUM)
    return RevenueRate(currency, total, estimate, min(low, estimate), max(high, estimate))


def figures(t: Tally, by: Sequence[str]) -> Figures:
    """The figures of one ``tally`` group."""
    n = t.impressions
    return Figures(
        key=dict(zip(by, t.key, strict=True)),
        impressions=n,
        users=t.users,
        clicks=t.clicks,
        carts=t.carts,
        purchases=t.purchases,
        ctr=rate(t.clicks, n),
        cart_rate=rate(t.carts, n),
        conversion=rate(t.purchases, n),
        revenue=[
            revenue_rate(c, t.revenue[c], t.revenue_squares.get(c, 0.0), n)
            for c in sorted(t.revenue)
            if n > 0
        ],
    )


def rate(hits: int, trials: int) -> Interval | None:
    """``hits / trials`` with its Wilson interval; hits above the trials (rows a bug or a
    hand-made insert left inconsistent) count as the trials, never a 500."""
    return wilson(min(hits, trials), trials)
