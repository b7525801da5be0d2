"""Counting what lists did once shown: the one query behind every online figure.

Everything is counted per impression, the (list, item) pair the frontend reported shown (a
list's row in ``rec_impressions`` holds its items, ``n_items`` of them, and one source letter
per item in ``sources``): a click, an attributed add-to-cart or an attributed purchase of that
item from that list counts once for it, however often it was repeated, so every rate lies in
[0, 1]. Clicks and attributions of an item not in its list's row (``position`` None) are not
counted (the denominator would be wrong). The API's figures, the console's, the experiment's
arms and the gauges on ``/metrics`` all come from ``tally``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    String,
    cast,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection

from service.feedback.token import LETTER_SOURCES, SOURCE_LETTERS
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
    # distinct users with at least one counted click / attributed purchase: rates per user,
    # whose users are independent draws (one user's impressions are not), for A/B decisions
    clickers: int = 0
    buyers: int = 0
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
    imp, clk, att = rec_impressions, rec_clicks, rec_attributions
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(imp.c.ts >= since)
    if until is not None:
        where.append(imp.c.ts < until)
    if experiment_id is not None:
        where.append(imp.c.experiment_id == experiment_id)
    groups: dict[Key, Tally] = {}
    n = len(by)

    def group(row: Sequence[object]) -> Tally:
        key = tuple(None if v is None else str(v) for v in row[:n])
        return groups.setdefault(key, Tally(key))

    # shown: the items of each list, per source letter when grouped by source (one query per
    # letter: how often the letter is in ``sources``; the same SQL on SQLite and PostgreSQL)
    letters: list[str | None] = list(SOURCE_LETTERS.values()) if "source" in by else [None]
    for letter in letters:
        if letter is None:
            count: ColumnElement[Any] = imp.c.n_items
            dims: list[ColumnElement[Any]] = [imp.c[d] for d in by]
            only: list[ColumnElement[bool]] = []
        else:
            count = func.length(imp.c.sources) - func.length(
                func.replace(imp.c.sources, letter, "")
            )
            source = literal(LETTER_SOURCES[letter], String())
            dims = [source if d == "source" else imp.c[d] for d in by]
            only = [count > 0]
        shown = select(*dims, func.sum(count), func.count(imp.c.user_id.distinct()))
        shown = shown.where(*where, *only)
        plain = [imp.c[d] for d in by if d != "source"]
        for row in conn.execute(shown.group_by(*plain)):
            if row[-2] is None and letter is not None:  # no list with the letter
                continue
            found = group(row)
            found.impressions, found.users = int(row[-2] or 0), int(row[-1])
    # a shown item's click, cart or purchase: its row's source, the list's other columns
    clicked_dims = [clk.c.source if d == "source" else imp.c[d] for d in by]
    clicked = (
        select(*clicked_dims, func.count(), func.count(clk.c.user_id.distinct()))
        .select_from(imp.join(clk, clk.c.request_id == imp.c.request_id))
        .where(clk.c.position.is_not(None), *where)
        .group_by(*clicked_dims)
    )
    for row in conn.execute(clicked):
        found = group(row)
        found.clicks, found.clickers = int(row[-2]), int(row[-1])
    att_dims = [
        (att.c.source if d == "source" else imp.c[d]).label(f"d{i}") for i, d in enumerate(by)
    ]
    units = type_coerce(att.c.revenue, BigInteger)  # ten-thousandths, exact
    # one row per shown (list, item), kind and currency: whether it converted, what it brought
    per_pair = (
        select(
            *att_dims,
            imp.c.id.label("list"),
            att.c.item_id.label("item"),
            att.c.kind.label("kind"),
            att.c.currency.label("currency"),
            func.sum(units).label("units"),
        )
        .select_from(imp.join(att, att.c.request_id == imp.c.request_id))
        .where(att.c.position.is_not(None), *where)
        .group_by(*att_dims, imp.c.id, att.c.item_id, att.c.kind, att.c.currency)
        .subquery()
    )
    outer = [per_pair.c[f"d{i}"] for i in range(n)]
    as_float = cast(per_pair.c.units, Float)
    converted = select(
        *outer,
        per_pair.c.kind,
        per_pair.c.currency,
        func.sum(per_pair.c.units),
        func.sum(as_float * as_float),
    ).group_by(*outer, per_pair.c.kind, per_pair.c.currency)
    # a shown (list, item) counts once per kind, whatever the currencies of its purchases
    pairs = (
        select(*outer, per_pair.c.kind, per_pair.c.list, per_pair.c.item)
        .group_by(*outer, per_pair.c.kind, per_pair.c.list, per_pair.c.item)
        .subquery()
    )
    pair_dims = [pairs.c[f"d{i}"] for i in range(n)]
    converting = select(*pair_dims, pairs.c.kind, func.count()).group_by(*pair_dims, pairs.c.kind)
    for row in conn.execute(converting):
        found = group(row)
        kind, count_ = row[n:]
        if kind == "add_to_cart":
            found.carts = int(count_)
        elif kind == "purchase":
            found.purchases = int(count_)
    buying = (
        select(*att_dims, func.count(att.c.user_id.distinct()))
        .select_from(imp.join(att, att.c.request_id == imp.c.request_id))
        .where(att.c.position.is_not(None), att.c.kind == "purchase", *where)
        .group_by(*att_dims)
    )
    for row in conn.execute(buying):
        group(row).buyers = int(row[-1])
    for row in conn.execute(converted):
        found = group(row)
        kind, currency, total, squares = row[n:]
        if kind == "purchase" and currency is not None and total is not None:
            found.revenue[currency] = found.revenue.get(currency, Decimal(0)) + from_units(
                int(total)
            )
            found.revenue_squares[currency] = (
                found.revenue_squares.get(currency, 0.0) + float(squares or 0.0) / 1e8
            )
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(v or "" for v in k))]
