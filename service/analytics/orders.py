"""Order lines from the service's database: the ``purchase`` events, as ``loyalty.Line``.

A line's order key is its ``order_id``, or for a purchase sent without one, the event's own id
behind a control character no shop's order id carries (as ``offers.repository.lifecycle``
groups orders). Its amount is ``price x quantity`` (quantity 1 when absent). Only lines before
``before`` are read; they are streamed, not loaded into a list by the database driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, select

from service.analytics.loyalty import Line
from service.errors import InvalidInput
from service.tables import LIFECYCLE_STAGES, LOYALTY_TYPES, events, user_segments

SEGMENTS: tuple[str, ...] = LIFECYCLE_STAGES + LOYALTY_TYPES

ALONE = "\x1f"  # prefix of the key of an order sent without an order id


def check_segment(segment: str | None) -> None:
    """Refuse a ``segment`` that is neither a lifecycle stage nor a loyalty type.

    Raises:
        InvalidInput: naming ``segment``.
    """
    if segment is not None and segment not in SEGMENTS:
        raise InvalidInput("segment", f"{segment!r} is not one of {', '.join(SEGMENTS)}")


def purchases(
    columns: Sequence[ColumnElement[Any]], before: datetime | None, segment: str | None
) -> Select[Any]:
    """``columns`` of the purchase events before ``before`` (of the users whose current
    segment is ``segment``, all their history): what both readers of the lines select.

    Raises:
        InvalidInput: ``segment`` is neither a stage nor a loyalty type.
    """
    e = events
    check_segment(segment)
    query = select(*columns).where(e.c.type == "purchase")
    if before is not None:
        query = query.where(e.c.ts < before)
    if segment is not None:
        s = user_segments
        column = s.c.lifecycle_stage if segment in LIFECYCLE_STAGES else s.c.loyalty_type
        query = query.where(e.c.user_id.in_(select(s.c.user_id).where(column == segment)))
    return query


def read_lines(
    engine: Engine, before: datetime | None = None, segment: str | None = None
) -> Iterator[Line]:
    """Every purchase line (before ``before``), in no particular order.

    With ``segment`` (a lifecycle stage or a loyalty type: the two vocabularies are disjoint),
    only the lines of the users whose current ``user_segments`` row is in it, all their history.

    Raises:
        InvalidInput: ``segment`` is neither a stage nor a loyalty type (when read).
    """
    c = events.c
    wanted = (c.id, c.user_id, c.order_id, c.ts, c.item_id, c.price, c.quantity, c.currency)
    query = purchases(wanted, before, segment)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(query)
        for id_, user, order, ts, item, price, quantity, currency in result:
            yield Line(
                user_id=user,
                order_key=order if order is not None else f"{ALONE}{id_}",
                ts=ts,
                item_id=item,
                amount=None if price is None else price * (1 if quantity is None else quantity),
                currency=currency,
            )
