"""Revenue per user, treated against holdout, and the incremental revenue net of the discount
(issue 12, item 3).

A decided user's revenue is the sum of ``price x quantity`` of their purchase events inside
the decision's conversion window (after the decision, up to ``convert_until`` and now), in each
currency; a user who bought nothing counts as 0, so the mean is over every decided user. Per
currency, with ``n_t`` treated (``issued``) and ``n_h`` held-out users:

* revenue per user ``m_t``, ``m_h``; their difference ``d = m_t - m_h``, with a 95 % Welch
  normal interval ``d +- 1.96 sqrt(s_t^2 / n_t + s_h^2 / n_h)`` (``s^2`` the sample variances,
  divisor ``n - 1``): unequal variances are the rule when one arm gets a coupon, and the normal
  quantile is what the conversion intervals use too (``service.offers.stats``); it needs two
  users in each arm;
* incremental revenue ``d x n_t`` (what the treated would not have spent without the coupon),
  interval likewise scaled;
* net of the discount cost (the discount given on standing redemptions, from the coupons'
  trail): ``d x n_t - cost``; the cost is known exactly, so it shifts the interval.

Everything is exact decimal arithmetic (``decimal`` with 34 digits; the square root too),
rounded to the amounts' four decimals at the end: no float, no numpy on the API's import path.
Purchase prices are what the shop sent with the event (before or after its discount is the
shop's convention: the discount cost is subtracted from the ledger either way, so a shop that
sends prices after the discount should read the gross figure).
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from service.money import QUANTUM
from service.offers.stats import Z95

_CONTEXT = decimal.Context(prec=34)
_Z = Decimal(str(Z95))


@dataclass(frozen=True)
class MoneyInterval:
    """An amount and its 95 % interval, exact to four decimals."""

    estimate: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True)
class CurrencyRevenue:
    """One currency's revenue figures of a campaign."""

    currency: str
    treated_users: int
    holdout_users: int
    treated_revenue: Decimal  # in the conversion windows, every treated user
    holdout_revenue: Decimal
    treated_per_user: Decimal | None
    holdout_per_user: Decimal | None
    difference_per_user: MoneyInterval | None  # None with fewer than two users in an arm
    incremental: MoneyInterval | None
    discount_cost: Decimal
    net_incremental: MoneyInterval | None


def _round(value: Decimal) -> Decimal:
    return value.quantize(QUANTUM, rounding=decimal.ROUND_HALF_EVEN, context=_CONTEXT)


def _moments(values: list[Decimal], n: int) -> tuple[Decimal, Decimal | None]:
    """Mean and sample variance of ``values`` padded with zeros to ``n`` users."""
    c = _CONTEXT
    total = sum(values, Decimal(0))
    mean = c.divide(total, Decimal(n))
    if n < 2:
        return mean, None
    squares = sum((c.multiply(v - mean, v - mean) for v in values), Decimal(0))
    squares = c.add(squares, c.multiply(Decimal(n - len(values)), c.multiply(mean, mean)))
    return mean, c.divide(squares, Decimal(n - 1))


def revenue_by_currency(
    per_user: Iterable[tuple[str, str, Decimal]],
    treated_users: int,
    holdout_users: int,
    discount_cost: Mapping[str, Decimal],
) -> dict[str, CurrencyRevenue]:
    """The figures of every currency bought in (or discounted in), from ``per_user``:
    (``issued`` | ``holdout``, currency, one decided user's revenue in it), users without a
    purchase left out (they count as 0)."""
    c = _CONTEXT
    values: dict[str, dict[str, list[Decimal]]] = defaultdict(lambda: {"t": [], "h": []})
    for decision, currency, amount in per_user:
        values[currency]["t" if decision == "issued" else "h"].append(amount)
    out: dict[str, CurrencyRevenue] = {}
    for currency in sorted(set(values) | set(discount_cost)):
        arms = values[currency]
        cost = discount_cost.get(currency, Decimal(0))
        t_total, h_total = sum(arms["t"], Decimal(0)), sum(arms["h"], Decimal(0))
        m_t = v_t = m_h = v_h = None
        if treated_users > 0:
            m_t, v_t = _moments(arms["t"], treated_users)
        if holdout_users > 0:
            m_h, v_h = _moments(arms["h"], holdout_users)
        difference = incremental = net = None
        if m_t is not None and m_h is not None and v_t is not None and v_h is not None:
            d = c.subtract(m_t, m_h)
            variance = c.add(
                c.divide(v_t, Decimal(treated_users)), c.divide(v_h, Decimal(holdout_users))
            )
            half = c.multiply(_Z, variance.sqrt(c))
            difference = MoneyInterval(_round(d), _round(d - half), _round(d + half))
            n = Decimal(treated_users)
            incremental = MoneyInterval(
                _round(d * n), _round((d - half) * n), _round((d + half) * n)
            )
            net = MoneyInterval(
                _round(d * n - cost), _round((d - half) * n - cost), _round((d + half) * n - cost)
            )
        out[currency] = CurrencyRevenue(
            currency=currency,
            treated_users=treated_users,
            holdout_users=holdout_users,
            treated_revenue=_round(t_total),
            holdout_revenue=_round(h_total),
            treated_per_user=None if m_t is None else _round(m_t),
            holdout_per_user=None if m_h is None else _round(m_h),
            difference_per_user=difference,
            incremental=incremental,
            discount_cost=_round(cost),
            net_incremental=net,
        )
    return out
