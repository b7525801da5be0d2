"""The loyalty metrics of ``service.analytics.loyalty`` computed on columns (numpy, pandas).

Same definitions, same figures to the last digit (a test compares them on the demo shop and
on random orders): the reference core holds every line and order as a Python object, which at
10,000,000 orders needs tens of GB; this one holds a few integer arrays. Amounts are integers
of ten-thousandths (exact sums), turned into :class:`~decimal.Decimal` only for the few
per-period figures, with the reference's own division and rounding.

The input is a frame of purchase lines (``training.data.imports.purchase_columns`` for a file,
:func:`read_columns` for the service's database, :func:`frame_of` for ``Line`` objects):
``user``, ``order`` (missing: an order of its own), ``ts`` (naive UTC), ``item`` (missing:
none), ``units``, ``priced``, ``currency``; or that frame turned into integers by
:func:`encode`, once for both reports.

numpy and pandas are not on the API's import path at start-up: ``Analytics`` imports this
module in its methods, at the first loyalty or cohort request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, DateTime, Engine, String, type_coerce

from service.analytics.loyalty import (
    Line,
    Period,
    _median,
    _money,
    _ratio,
    next_start,
    period_starts,
    report_end,
)
from service.analytics.orders import purchases
from service.money import SCALE, to_units
from service.tables import events

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LIMIT = 2**62  # sums of ten-thousandths above this would not be exact in int64


def frame_of(lines: Iterable[Line]) -> pd.DataFrame:
    """``Line`` objects as the columns this module reads (for tests and small inputs)."""
    rows = list(lines)
    return pd.DataFrame(
        {
            "user": pd.Series([x.user_id for x in rows], dtype=object),
            "order": pd.Series([x.order_key for x in rows], dtype=object),
            "ts": pd.Series(
                [x.ts.astimezone(UTC).replace(tzinfo=None) if x.ts.tzinfo else x.ts for x in rows],
                dtype="datetime64[us]",
            ),
            "item": pd.Series([x.item_id for x in rows], dtype=object),
            "units": np.array(
                [0 if x.amount is None else to_units(x.amount) for x in rows], dtype=np.int64
            ),
            "priced": np.array(
                [x.amount is not None and x.currency is not None for x in rows], dtype=bool
            ),
            "currency": pd.Series([x.currency for x in rows], dtype=object),
        }
    )


CHUNK = 100_000  # rows fetched from the database at a time


def read_columns(
    engine: Engine, before: datetime | None = None, segment: str | None = None
) -> pd.DataFrame:
    """The lines of :func:`service.analytics.orders.read_lines` as this module's frame, read
    straight from the driver's rows: the price as its stored integer of ten-thousandths, the
    time as the driver gives it (SQLite: the stored naive-UTC text), no ``Line`` nor
    ``Decimal`` per row. A purchase without an order id has a missing ``order`` (an order of
    its own, as its ``ALONE`` key makes it in ``read_lines``).

    Raises:
        InvalidInput: ``segment`` is neither a stage nor a loyalty type.
        OverflowError: a line's ``price x quantity`` does not fit 62 bits (or, on pandas 2
            and PostgreSQL, a time is outside 1677-2262): the reference core reads them.
    """
    e = events
    sqlite = engine.dialect.name == "sqlite"
    ts = type_coerce(e.c.ts, String() if sqlite else DateTime(timezone=True))
    price = type_coerce(e.c.price, BigInteger)
    query = purchases(
        (e.c.user_id, e.c.order_id, ts, e.c.item_id, price, e.c.quantity, e.c.currency),
        before,
        segment,
    )
    names = ["user", "order", "ts", "item", "price", "quantity", "currency"]
    parts = []
    with engine.connect() as conn:
        options = conn.execution_options(stream_results=True, max_row_buffer=CHUNK)
        result = options.execute(query)  # no column has a result processor (see the casts)
        while rows := result.fetchmany(CHUNK):
            # column by column through each row's own iteration: several times faster than a
            # frame made of the rows (pandas probes every row object); each chunk's times and
            # amounts become arrays at once, only the ids stay Python strings
            values = zip(*rows, strict=True)
            parts.append(_lines(dict(zip(names, values, strict=True)), sqlite))
    if not parts:
        return _lines(dict.fromkeys(names, ()), sqlite)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _lines(raw: dict[str, Any], sqlite: bool) -> pd.DataFrame:
    try:
        if sqlite:  # stored as naive-UTC ISO text: numpy parses it at microseconds, any year
            moments = pd.Series(np.array(raw["ts"], dtype="datetime64[us]"))
        else:
            aware = pd.to_datetime(pd.Series(raw["ts"], dtype=object), utc=True)
            moments = aware.dt.tz_convert(None)
    except pd.errors.OutOfBoundsDatetime as exc:  # pandas 2 at nanoseconds: years 1677-2262
        raise OverflowError(f"a purchase time is out of range: {exc}") from None
    price = pd.Series(raw["price"], dtype=object)
    quantity = pd.Series(raw["quantity"], dtype=object)
    currency = pd.Series(raw["currency"], dtype=object)
    has_price = price.notna().to_numpy()
    prices = price.where(has_price, 0).to_numpy(dtype=np.int64)
    quantities = quantity.where(quantity.notna(), 1).to_numpy(dtype=np.int64)
    big = np.abs(prices.astype(np.float64)) * np.abs(quantities.astype(np.float64))
    if len(big) and float(big.max()) >= LIMIT:
        raise OverflowError("a line's amount does not fit 62 bits")
    return pd.DataFrame(
        {
            "user": pd.Series(raw["user"], dtype=object),
            "order": pd.Series(raw["order"], dtype=object),
            "ts": moments.astype("datetime64[us]"),
            "item": pd.Series(raw["item"], dtype=object),
            "units": prices * quantities,
            "priced": has_price & currency.notna().to_numpy(),
            "currency": currency,
        }
    )


def _code(moment: datetime, period: Period) -> int:
    """A period's number: months since January 1970, or weeks since the Monday before it."""
    if period == "month":
        return (moment.year - 1970) * 12 + moment.month - 1
    return ((moment - EPOCH).days + 3) // 7


def _codes(us: np.ndarray, period: Period) -> np.ndarray:
    if period == "month":
        months: np.ndarray = us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
        return months
    days = np.floor_divide(us, 86_400_000_000)
    weeks: np.ndarray = np.floor_divide(days + 3, 7)
    return weeks


def _moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def _decimal(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE)


@dataclass(frozen=True)
class Encoded:
    """A frame's lines as integers (from :func:`encode`): what both reports start from."""

    user: np.ndarray  # per line, user number
    order: np.ndarray  # per line, order number (an order: one user's lines of one order id)
    us: np.ndarray  # per line, microseconds since 1970 (UTC)
    item: np.ndarray  # per line, item number (-1: none)
    units: np.ndarray
    priced: np.ndarray  # the line has an amount and a currency
    currency: np.ndarray  # per line, currency number (-1: none)
    currencies: list[str]


def encode(frame: pd.DataFrame) -> Encoded:
    """Number the users, orders, items and currencies of ``frame`` (see the module's docstring).

    Raises:
        OverflowError: the amounts (or the orders) do not fit 62-bit integers.
    """
    user, _ = pd.factorize(frame["user"])
    # an order is (user, order id); a line without an order id is an order of its own
    named, _ = pd.factorize(frame["order"])  # missing: -1
    alone = named < 0
    named[alone] = int(named.max(initial=-1)) + 1 + np.arange(int(alone.sum()))
    width = int(named.max(initial=0)) + 1
    if (int(user.max(initial=0)) + 1) * width >= LIMIT:
        raise OverflowError("too many lines for one 64-bit order key")
    order, _ = pd.factorize(user.astype(np.int64) * width + named)
    item, _ = pd.factorize(frame["item"])  # missing: -1
    currency, names = pd.factorize(frame["currency"])
    priced = frame["priced"].to_numpy(dtype=bool) & (currency >= 0)
    units = frame["units"].to_numpy(dtype=np.int64)
    if int(np.abs(units[priced]).sum(dtype=np.float64)) >= LIMIT:
        raise OverflowError("the amounts do not fit 62 bits")
    return Encoded(
        user=user.astype(np.int64),
        order=order.astype(np.int64),
        us=frame["ts"].to_numpy(dtype="datetime64[us]").astype(np.int64),
        item=item.astype(np.int64),
        units=units,
        priced=priced,
        currency=currency.astype(np.int64),
        currencies=[str(n) for n in names],
    )


@dataclass
class _Orders:
    """The orders of the lines before a cutoff: per order its user, time and period number."""

    user: np.ndarray  # per order, user number (users and orders numbered 0, 1, ... here)
    at: np.ndarray  # per order, microseconds since 1970
    line_order: np.ndarray  # per kept line, its order number
    line_user: np.ndarray
    item: np.ndarray  # per kept line, item number (-1: none)
    units: np.ndarray
    priced: np.ndarray
    currency: np.ndarray  # per kept line, currency number (-1: none)
    currencies: list[str]
    users: int


def _orders(lines: Encoded | pd.DataFrame, before: datetime | None) -> _Orders:
    e = lines if isinstance(lines, Encoded) else encode(lines)
    keep = slice(None) if before is None else e.us < (before - EPOCH) // timedelta(microseconds=1)
    user, _ = pd.factorize(e.user[keep])
    line_order, _ = pd.factorize(e.order[keep])
    us = e.us[keep]
    orders = int(line_order.max()) + 1 if len(line_order) else 0
    at = np.full(orders, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(at, line_order, us)
    order_user = np.zeros(orders, dtype=np.int64)
    order_user[line_order] = user
    return _Orders(
        user=order_user,
        at=at,
        line_order=line_order,
        line_user=user,
        item=e.item[keep],
        units=e.units[keep],
        priced=e.priced[keep],
        currency=e.currency[keep],
        currencies=e.currencies,
        users=int(user.max()) + 1 if len(user) else 0,
    )


def _span(o: _Orders) -> tuple[datetime | None, datetime | None]:
    """The times of the first and the last order (None without orders)."""
    if not len(o.at):
        return None, None
    return _moment(int(o.at.min())), _moment(int(o.at.max()))


def loyalty(
    frame: Encoded | pd.DataFrame,
    period: Period = "month",
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """:func:`service.analytics.loyalty.loyalty` of the lines in ``frame``."""
    o = _orders(frame, report_end(period, until))
    starts = period_starts(*_span(o), period, since, until)
    if not starts:
        return {"period": period, "periods": []}
    code = _codes(o.at, period)  # per order
    start_codes = [_code(s, period) for s in starts]
    low = min([*start_codes, int(code.min(initial=start_codes[0]))]) - 1
    high = max([*start_codes, int(code.max(initial=start_codes[-1]))])
    size = high - low + 1
    pc = code - low  # per order, from 1
    # per user: the period of the first order
    first = np.full(o.users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, o.user, pc)
    new = np.bincount(first, minlength=size) if o.users else np.zeros(size, dtype=np.int64)
    orders = np.bincount(pc, minlength=size)
    # (user, period) pairs, sorted by user then period, with their number of orders
    pair, per_pair = np.unique(o.user * size + pc, return_counts=True)
    pair_user, pair_pc = pair // size, pair % size
    customers = np.bincount(pair_pc, minlength=size)
    same_user = np.zeros(len(pair), dtype=bool)  # the pair before is the same user's
    same_user[1:] = pair_user[1:] == pair_user[:-1]
    follows = same_user.copy()  # ... and of the period before
    follows[1:] &= pair_pc[1:] == pair_pc[:-1] + 1
    retained = np.bincount(pair_pc[follows], minlength=size)
    cumulative = np.cumsum(per_pair)
    user_start = np.flatnonzero(~same_user)
    run = np.repeat(
        cumulative[user_start] - per_pair[user_start], np.diff(np.r_[user_start, len(pair)])
    )
    repeaters = np.bincount(pair_pc[(cumulative - run) >= 2], minlength=size)
    # upsell: distinct items per (user, period)
    line_pair = o.line_user * size + pc[o.line_order]
    with_item = o.item >= 0
    bought_items = pd.DataFrame({"pair": line_pair[with_item], "item": o.item[with_item]})
    distinct = bought_items.drop_duplicates()["pair"].to_numpy()
    bought, how_many = np.unique(distinct, return_counts=True)
    multi = np.bincount(bought[how_many > 1] % size, minlength=size)
    single = np.bincount(bought[how_many == 1] % size, minlength=size)
    # amounts per (order, currency), then per period and per user as periods end
    money = pd.DataFrame(
        {
            "order": o.line_order[o.priced],
            "currency": o.currency[o.priced],
            "units": o.units[o.priced],
        }
    )
    per_order = money.groupby(["order", "currency"], sort=False)["units"].sum().reset_index()
    per_order["pc"] = pc[per_order["order"].to_numpy()]
    per_order["user"] = o.user[per_order["order"].to_numpy()]
    per_period = per_order.groupby(["pc", "currency"])["units"].agg(["sum", "count"])
    value = {(int(p), int(c)): (int(s), int(n)) for (p, c), (s, n) in per_period.iterrows()}
    per_order = per_order.sort_values("pc", kind="stable")
    order_pc = per_order["pc"].to_numpy()
    order_cur = per_order["currency"].to_numpy()
    order_user = per_order["user"].to_numpy()
    order_units = per_order["units"].to_numpy()
    totals = np.zeros((len(o.currencies), o.users), dtype=np.int64)
    has = np.zeros((len(o.currencies), o.users), dtype=bool)
    cursor = 0
    names = sorted(range(len(o.currencies)), key=lambda c: o.currencies[c])
    rows = []
    # without `until` the report runs to the data's end, which may fall inside its last period
    last_at = _span(o)[1] if until is None else None
    for start, start_code in zip(starts, start_codes, strict=True):
        p = start_code - low
        upto = int(np.searchsorted(order_pc, p, side="right"))
        if upto > cursor:
            np.add.at(
                totals, (order_cur[cursor:upto], order_user[cursor:upto]), order_units[cursor:upto]
            )
            has[order_cur[cursor:upto], order_user[cursor:upto]] = True
            cursor = upto
        before = int(customers[p - 1])
        mine, count, fresh = int(customers[p]), int(orders[p]), int(new[p])
        kept = int(retained[p])
        returning = mine - fresh
        retention = _ratio(returning, before)
        lifetime = {}
        for c in names:
            holders = totals[c][has[c]]
            if len(holders):
                lifetime[o.currencies[c]] = _lifetime(holders)
        rows.append(
            {
                "period": start.date().isoformat(),
                "start": start.isoformat(),
                "end": next_start(start, period).isoformat(),
                "partial": last_at is not None and next_start(start, period) > last_at,
                "customers_at_start": before,
                "new_customers": fresh,
                "customers_at_end": mine,
                "retained": kept,
                "reactivated": returning - kept,
                "retention": retention,
                "churn": None if retention is None else 1 - retention,
                "orders": count,
                "repeat_orders": count - fresh,
                "repurchase_rate": _ratio(count - fresh, count),
                "repeat_customers": int(repeaters[p]),
                "repeat_customer_rate": _ratio(int(repeaters[p]), mine),
                "purchase_frequency": _ratio(count, mine),
                "average_order_value": {
                    o.currencies[c]: _money(_decimal(value[(p, c)][0]) / value[(p, c)][1])
                    for c in names
                    if (p, c) in value
                },
                "multi_product_customers": int(multi[p]),
                "single_product_customers": int(single[p]),
                "upsell_rate": _ratio(int(multi[p]), int(multi[p]) + int(single[p])),
                "lifetime_value": lifetime,
            }
        )
    return {"period": period, "periods": rows}


def _lifetime(holders: np.ndarray) -> dict[str, Any]:
    n = len(holders)
    middle = n // 2
    if n % 2:
        median = _decimal(int(np.partition(holders, middle)[middle]))
    else:
        both = np.partition(holders, [middle - 1, middle])
        median = _median([_decimal(int(both[middle - 1])), _decimal(int(both[middle]))])
    return {
        "customers": n,
        "mean": _money(_decimal(int(holders.sum())) / n),
        "median": _money(median),
    }


def cohorts(
    frame: Encoded | pd.DataFrame, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """:func:`service.analytics.loyalty.cohorts` of the lines in ``frame``."""
    o = _orders(frame, report_end("month", until))
    months = period_starts(*_span(o), "month", since, until)
    if not months:
        return {"months": [], "cohorts": []}
    width = len(months)
    size = np.zeros(width, dtype=np.int64)
    grid = np.zeros((width, width), dtype=np.int64)
    if len(o.at):
        code = _codes(o.at, "month") - _code(months[0], "month")  # per order: index in range
        first = np.full(o.users, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, o.user, code)
        size = np.bincount(first[(first >= 0) & (first < width)], minlength=width)
        low = int(code.min())
        span = int(code.max()) - low + 1
        pair = np.unique(o.user * span + (code - low))  # (user, month) with an order
        pair_user, pair_month = pair // span, pair % span + low
        cohort = first[pair_user]
        inside = (cohort >= 0) & (cohort < width) & (pair_month < width)
        np.add.at(grid, (cohort[inside], pair_month[inside] - cohort[inside]), 1)
    rows = []
    for n, month in enumerate(months):
        counts = [int(c) for c in grid[n, : width - n]]
        rows.append(
            {
                "cohort": month.date().isoformat()[:7],
                "size": int(size[n]),
                "active": counts,
                "share": [_ratio(c, int(size[n])) for c in counts],
            }
        )
    return {"months": [m.date().isoformat()[:7] for m in months], "cohorts": rows}
