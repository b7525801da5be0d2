"""Loyalty metrics from order lines: per period (week or month, UTC) and per cohort.

The input is purchase lines (:class:`Line`): user, order key, time, item, amount and currency.
Lines of one user with the same order key are one **order**; a purchase sent without an order
id is an order of its own (its key is then the event's own id). An order is dated by its
earliest line, its **amount** in a currency is the sum of ``price x quantity`` of its lines in
that currency (a line without a price adds nothing); its **products** are its distinct item ids.

Periods are UTC calendar weeks (starting Monday 00:00) or calendar months. A report covers
whole periods: from the period holding ``since`` (default: the first order's) to the period
holding ``until`` (default: the last order's). Orders before ``since`` are read as history
(who was a customer already, whose order is a repeat), orders after the last period are not.

A period's **customers** are the users with at least one order in it. Per period ``p``:

* ``S`` customers at its start: the customers of the period before ``p``;
  ``E`` customers at its end: the customers of ``p``;
  ``N`` new customers: customers of ``p`` whose first order ever is in ``p``.
  (Counting everyone who ever ordered as a customer would make ``E - N = S`` and the retention
  always 1, so a customer is someone who ordered in the period looked at.)
* ``retention = (E - N) / S`` (``None`` when ``S = 0``); ``E - N`` are the period's returning
  customers, which includes customers reactivated after a gap, so it may exceed 1;
  ``retained`` = customers of both ``p`` and the period before, and
  ``reactivated = E - N - retained`` show the two parts.
* ``churn = 1 - retention``.
* ``repurchase_rate = repeat orders / orders``: an order is a **repeat** when its customer has
  an earlier order (orders of a user ranked by time, then key; the first is not a repeat).
* ``repeat_customer_rate``: share of ``E`` with two or more orders up to the period's end.
* ``purchase_frequency = orders / E``.
* ``average_order_value[c]`` = sum of the period's order amounts in currency ``c`` / the number
  of the period's orders with an amount in ``c`` (exact, rounded half-even to 4 decimals).
* ``upsell_rate = multi / (multi + single)``: ``multi`` customers of ``p`` bought two or more
  distinct products in ``p``, ``single`` exactly one (customers without item ids count in
  neither); both counts are reported.
* ``lifetime_value[c]``: each user who ordered up to the period's end has a historical lifetime
  value, the sum of their order amounts in ``c`` up to then; its ``mean`` and ``median`` (the
  middle value, or the mean of the two middle ones) over the users with an amount in ``c``.

**Cohorts**: a user's cohort is the UTC month of their first order. For each cohort month in
the report's range and each later month ``k`` (0, 1, ... up to the last month of the range),
``active[k]`` users of the cohort have an order in month ``cohort + k``, and
``share[k] = active[k] / size`` (month 0 is 1 by construction).

Rates are floats of exact integer ratios, amounts are :class:`~decimal.Decimal` strings.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from service.money import QUANTUM

Period = Literal["week", "month"]
PERIODS: tuple[str, ...] = ("week", "month")


@dataclass(frozen=True)
class Line:
    """One purchase line; ``amount`` is price x quantity (``None`` without a price)."""

    user_id: str
    order_key: str
    ts: datetime
    item_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None


@dataclass
class Order:
    user_id: str
    key: str
    at: datetime
    items: set[str] = field(default_factory=set)
    amounts: dict[str, Decimal] = field(default_factory=dict)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period_start(moment: datetime, period: Period) -> datetime:
    """The start of the UTC week (Monday) or month holding ``moment``."""
    day = _utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_start(start: datetime, period: Period) -> datetime:
    """The start of the period after the one starting at ``start``."""
    if period == "week":
        return start + timedelta(days=7)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def orders_of(lines: Iterable[Line], before: datetime | None = None) -> list[Order]:
    """Lines grouped into orders (per user and key), only lines before ``before``; sorted."""
    found: dict[tuple[str, str], Order] = {}
    for line in lines:
        ts = _utc(line.ts)
        if before is not None and ts >= before:
            continue
        order = found.get((line.user_id, line.order_key))
        if order is None:
            order = found[(line.user_id, line.order_key)] = Order(line.user_id, line.order_key, ts)
        elif ts < order.at:
            order.at = ts
        if line.item_id is not None:
            order.items.add(line.item_id)
        if line.amount is not None and line.currency is not None:
            order.amounts[line.currency] = order.amounts.get(line.currency, Decimal(0)) + (
                line.amount
            )
    return sorted(found.values(), key=lambda o: (o.at, o.user_id, o.key))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _money(value: Decimal) -> str:
    return str(value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN))


def _median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _range(
    orders: list[Order], period: Period, since: datetime | None, until: datetime | None
) -> list[datetime]:
    """The starts of the report's periods (whole periods from ``since`` to ``until``)."""
    if not orders:
        return period_starts(None, None, period, since, until)
    return period_starts(orders[0].at, orders[-1].at, period, since, until)


def period_starts(
    first_at: datetime | None,
    last_at: datetime | None,
    period: Period,
    since: datetime | None,
    until: datetime | None,
) -> list[datetime]:
    """The starts of the report's periods, given the times of the first and last orders."""
    low = since if since is not None else first_at
    high = until if until is not None else last_at
    if low is None or high is None:
        return []
    first, last = period_start(low, period), period_start(high, period)
    starts = []
    while first <= last:
        starts.append(first)
        first = next_start(first, period)
    return starts


def report_end(period: Period, until: datetime | None) -> datetime | None:
    """The first moment after the report's last period (lines from then on are not read)."""
    return None if until is None else next_start(period_start(until, period), period)


def loyalty(
    lines: Iterable[Line],
    period: Period = "month",
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The per-period figures of the module's docstring, as a JSON-ready dict."""
    orders = orders_of(lines, report_end(period, until))
    starts = _range(orders, period, since, until)
    first_at: dict[str, datetime] = {}
    times: dict[str, list[datetime]] = defaultdict(list)
    repeat: list[bool] = []
    for order in orders:  # sorted by time: a user's first order comes first
        repeat.append(order.user_id in first_at)
        first_at.setdefault(order.user_id, order.at)
        times[order.user_id].append(order.at)
    by_period: dict[datetime, list[int]] = defaultdict(list)
    for index, order in enumerate(orders):
        by_period[period_start(order.at, period)].append(index)
    totals: dict[str, dict[str, Decimal]] = defaultdict(dict)  # currency -> user -> amount
    cursor = 0
    rows = []
    # without `until` the report runs to the data's end, which may fall inside its last period
    last_at = orders[-1].at if orders and until is None else None
    for start in starts:
        end = next_start(start, period)
        while cursor < len(orders) and orders[cursor].at < end:
            order = orders[cursor]
            for cur, amount in order.amounts.items():
                totals[cur][order.user_id] = totals[cur].get(order.user_id, Decimal(0)) + amount
            cursor += 1
        previous = start - (timedelta(days=7) if period == "week" else timedelta(days=1))
        before = {orders[i].user_id for i in by_period.get(period_start(previous, period), [])}
        mine = by_period.get(start, [])
        customers = {orders[i].user_id for i in mine}
        new = {u for u in customers if first_at[u] >= start}
        retained = len(customers & before)
        returning = len(customers) - len(new)
        retention = _ratio(returning, len(before))
        products: dict[str, set[str]] = defaultdict(set)
        value: dict[str, Decimal] = defaultdict(Decimal)
        priced: dict[str, int] = defaultdict(int)
        for i in mine:
            products[orders[i].user_id] |= orders[i].items
            for cur, amount in orders[i].amounts.items():
                value[cur] += amount
                priced[cur] += 1
        multi = sum(1 for u in customers if len(products[u]) > 1)
        single = sum(1 for u in customers if len(products[u]) == 1)
        repeaters = sum(1 for u in customers if bisect.bisect_left(times[u], end) >= 2)
        rows.append(
            {
                "period": start.date().isoformat(),
                "start": start.isoformat(),
                "end": end.isoformat(),
                "partial": last_at is not None and end > last_at,
                "customers_at_start": len(before),
                "new_customers": len(new),
                "customers_at_end": len(customers),
                "retained": retained,
                "reactivated": returning - retained,
                "retention": retention,
                "churn": None if retention is None else 1 - retention,
                "orders": len(mine),
                "repeat_orders": sum(1 for i in mine if repeat[i]),
                "repurchase_rate": _ratio(sum(1 for i in mine if repeat[i]), len(mine)),
                "repeat_customers": repeaters,
                "repeat_customer_rate": _ratio(repeaters, len(customers)),
                "purchase_frequency": _ratio(len(mine), len(customers)),
                "average_order_value": {
                    cur: _money(value[cur] / priced[cur]) for cur in sorted(value)
                },
                "multi_product_customers": multi,
                "single_product_customers": single,
                "upsell_rate": _ratio(multi, multi + single),
                "lifetime_value": {
                    cur: {
                        "customers": len(per_user),
                        "mean": _money(sum(per_user.values(), Decimal(0)) / len(per_user)),
                        "median": _money(_median(list(per_user.values()))),
                    }
                    for cur, per_user in sorted(totals.items())
                    if per_user
                },
            }
        )
    return {"period": period, "periods": rows}


def cohorts(
    lines: Iterable[Line], since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """The cohort retention matrix of the module's docstring, as a JSON-ready dict."""
    orders = orders_of(lines, report_end("month", until))
    months = _range(orders, "month", since, until)
    index = {start: n for n, start in enumerate(months)}
    first: dict[str, datetime] = {}
    active: dict[str, set[datetime]] = defaultdict(set)
    for order in orders:
        month = period_start(order.at, "month")
        first.setdefault(order.user_id, month)
        active[order.user_id].add(month)
    members: dict[datetime, list[str]] = defaultdict(list)
    for user, month in first.items():
        if month in index:
            members[month].append(user)
    rows = []
    for month in months:
        users = members.get(month, [])
        later = months[index[month] :]
        counts = [sum(1 for u in users if m in active[u]) for m in later]
        rows.append(
            {
                "cohort": month.date().isoformat()[:7],
                "size": len(users),
                "active": counts,
                "share": [_ratio(c, len(users)) for c in counts],
            }
        )
    return {"months": [m.date().isoformat()[:7] for m in months], "cohorts": rows}
