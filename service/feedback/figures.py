"""Counting what lists did once shown: the one query behind every online figure.

Everything is counted per impression, the (list, item) pair the frontend reported shown: a
click, an attributed add-to-cart or an attributed purchase of that item from that list counts
once for it, however often it was repeated, so every rate lies in [0, 1]. Clicks and
attributions of an item never reported shown are not counted (the denominator would be
wrong). The API's figures, the console's, the experiment's arms and the gauges on ``/metrics``
all come from ``tally``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ColumnElement, Float, and_, cast, func, select, type_coerce
from sqlalchemy.engine import Connection

from service.money import from_units
from service.tables import FEEDBACK_COLUMNS, rec_attributions, rec_clicks, rec_impressions

Key = tuple[str | None, ...]


@dataclass
class Tally:
    """One group's counts (``key``: the values of the dimensions asked for, in their order)."""

    key: Key
    impressions: int = 0
    users: int = 0  # distinct users shown something
    clicks: int = 0  # impressions clicked
    carts: int = 0  # impressions with an attributed add-to-cart
    purchases: int = 0  # impressions with an attributed purchase
    revenue: dict[str, Decimal] = field(default_factory=dict)  # attributed, per currency
    # per currency: the sum over impressions of (revenue of the impression)²; for intervals
    revenue_squares: dict[str, float] = field(default_factory=dict)


def tally(
    conn: Connection,
    by: Sequence[str] = (),
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    experiment_id: str | None = None,
) -> list[Tally]:
    """Counts per group of ``by`` (columns of ``FEEDBACK_COLUMNS``), impressions shown in
    [``since``, ``until``) and, when given, in one experiment; groups sorted by key."""
    unknown = [d for d in by if d not in FEEDBACK_COLUMNS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; one of {FEEDBACK_COLUMNS}")
    imp = rec_impressions
    dims = [imp.c[d] for d in by]
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(imp.c.ts >= since)
    if until is not None:
        where.append(imp.c.ts < until)
    if experiment_id is not None:
        where.append(imp.c.experiment_id == experiment_id)
    groups: dict[Key, Tally] = {}

    def group(row: Sequence[object]) -> Tally:
        key = tuple(None if v is None else str(v) for v in row[: len(dims)])
        return groups.setdefault(key, Tally(key))

    shown = select(*dims, func.count(), func.count(imp.c.user_id.distinct())).where(*where)
    for row in conn.execute(shown.group_by(*dims)):
        found = group(row)
        found.impressions, found.users = int(row[-2]), int(row[-1])
    clk = rec_clicks
    same_click = and_(clk.c.request_id == imp.c.request_id, clk.c.item_id == imp.c.item_id)
    clicked = select(*dims, func.count()).select_from(imp.join(clk, same_click)).where(*where)
    for row in conn.execute(clicked.group_by(*dims)):
        group(row).clicks = int(row[-1])
    att = rec_attributions
    same_list = and_(att.c.request_id == imp.c.request_id, att.c.item_id == imp.c.item_id)
    units = type_coerce(att.c.revenue, BigInteger)  # ten-thousandths, exact
    # one row per impression, kind and currency: whether it converted and what it brought
    per_impression = (
        select(
            *dims,
            imp.c.id.label("impression"),
            att.c.kind.label("kind"),
            att.c.currency.label("currency"),
            func.sum(units).label("units"),
        )
        .select_from(imp.join(att, same_list))
        .where(*where)
        .group_by(imp.c.id, *dims, att.c.kind, att.c.currency)
        .subquery()
    )
    outer_dims = [per_impression.c[d] for d in by]
    as_float = cast(per_impression.c.units, Float)
    converted = select(
        *outer_dims,
        per_impression.c.kind,
        per_impression.c.currency,
        func.count(),
        func.sum(per_impression.c.units),
        func.sum(as_float * as_float),
    ).group_by(*outer_dims, per_impression.c.kind, per_impression.c.currency)
    # an impression counts once per kind, whatever the currencies of its purchases
    converting = select(
        *outer_dims, per_impression.c.kind, func.count(per_impression.c.impression.distinct())
    ).group_by(*outer_dims, per_impression.c.kind)
    for row in conn.execute(converting):
        found = group(row)
        kind, count = row[len(dims) :]
        if kind == "add_to_cart":
            found.carts = int(count)
        elif kind == "purchase":
            found.purchases = int(count)
    for row in conn.execute(converted):
        found = group(row)
        kind, currency, _, total, squares = row[len(dims) :]
        if kind == "purchase" and currency is not None and total is not None:
            found.revenue[currency] = found.revenue.get(currency, Decimal(0)) + from_units(
                int(total)
            )
            found.revenue_squares[currency] = (
                found.revenue_squares.get(currency, 0.0) + float(squares or 0.0) / 1e8
            )
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(v or "" for v in k))]
