"""Order lines from the service's database: the ``purchase`` events, as ``loyalty.Line``.

A line's order key is its ``order_id``, or for a purchase sent without one, the event's own id
behind a control character no shop's order id carries (as ``offers.repository.lifecycle``
groups orders). Its amount is ``price x quantity`` (quantity 1 when absent). Only lines before
``before`` are read; they are streamed, not loaded into a list by the database driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Engine, select

from service.analytics.loyalty import Line
from service.tables import events

ALONE = "\x1f"  # prefix of the key of an order sent without an order id


def read_lines(engine: Engine, before: datetime | None = None) -> Iterator[Line]:
    """Every purchase line (before ``before``), in no particular order."""
    e = events
    query = select(
        e.c.id,
        e.c.user_id,
        e.c.order_id,
        e.c.ts,
        e.c.item_id,
        e.c.price,
        e.c.quantity,
        e.c.currency,
    ).where(e.c.type == "purchase")
    if before is not None:
        query = query.where(e.c.ts < before)
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
