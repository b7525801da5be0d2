"""Purchases and weaker signals recorded by the service, read from its database."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from service.errors import DataError
from service.money import SCALE
from training.data.formats import Purchases, purchases_from_frame

CHUNK_ROWS = 100_000  # rows per chunk when streaming events from the database
UNITS_PER_MAJOR = 10**SCALE  # service.money stores amounts as integer ten-thousandths


def load_database_purchases(database_url: str) -> pd.DataFrame:
    """The ``purchase`` events the API ingested, as a frame of the normalised column names.

    Columns: user_id, item_id, timestamp (naive UTC), order_id (``user@timestamp`` when the shop
    sent none), quantity (the units of the line; 1 when not sent), price (the line's unit price,
    else the catalogue's; NaN when neither is known), and the catalogue's category and name.
    Prices are exact in the database; the trainer reads them as floats (a model feature, never
    an amount charged).

    Raises:
        DataError: the database cannot be reached or has no events table (not migrated).
    """
    from sqlalchemy import BigInteger, func, select

    from service.tables import events, items

    query = (
        select(
            events.c.user_id,
            events.c.item_id,
            events.c.ts.label("timestamp"),
            events.c.order_id,
            func.coalesce(events.c.quantity, 1).label("quantity"),
            # raw ten-thousandths (AmountColumn's storage): one integer division below
            func.coalesce(events.c.price, items.c.price, type_=BigInteger).label("price"),
            items.c.category,
            items.c.name,
        )
        .select_from(events.outerjoin(items, items.c.item_id == events.c.item_id))
        .where(events.c.type == "purchase", events.c.item_id.is_not(None))
        .order_by(events.c.id)
    )
    columns = [
        "user_id",
        "item_id",
        "timestamp",
        "order_id",
        "quantity",
        "price",
        "category",
        "name",
    ]
    chunks = list(_read_database(database_url, query, columns, "purchases"))
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    frame["timestamp"] = stamps.dt.tz_localize(None)
    frame["quantity"] = pd.to_numeric(frame["quantity"]).astype("float64")
    frame["price"] = pd.to_numeric(frame["price"]).astype("float64") / UNITS_PER_MAJOR
    missing = frame["order_id"].isna()
    frame.loc[missing, "order_id"] = (
        frame.loc[missing, "user_id"] + "@" + frame.loc[missing, "timestamp"].astype(str)
    )
    return frame


def load_database_signals(
    database_url: str, types: Iterable[str], *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The item events of ``types`` (e.g. view, add_to_cart) the API ingested, in chunks.

    Views far outnumber purchases, so they are streamed: each chunk is a frame of at most
    ``chunk_rows`` rows with columns user_id, item_id, timestamp (naive UTC), type, in no
    particular order.

    Raises:
        DataError: the database cannot be reached or has no events table (not migrated).
    """
    from sqlalchemy import select

    from service.tables import events

    wanted = list(types)
    if not wanted:
        return
    # no ORDER BY: the trainer sorts by time itself, and a database sorting millions of views
    # first would only delay the first chunk
    query = select(
        events.c.user_id, events.c.item_id, events.c.ts.label("timestamp"), events.c.type
    ).where(events.c.type.in_(wanted), events.c.item_id.is_not(None))
    columns = ["user_id", "item_id", "timestamp", "type"]
    for frame in _read_database(database_url, query, columns, "views and add-to-carts", chunk_rows):
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None)
        yield frame


def _read_database(
    database_url: str, query: Any, columns: list[str], what: str, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Stream one SELECT from the service's database as frames of at most ``chunk_rows`` rows.

    Failures become one-line DataErrors.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from service.db import make_engine

    try:
        engine = make_engine(database_url)
    except Exception as exc:  # a malformed URL
        raise DataError(f"--database-url: {exc}") from None
    try:
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk_rows).execute(query)
            for rows in result.partitions():
                yield pd.DataFrame(rows, columns=columns)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(f"cannot read {what} from the database: {first}") from None
    finally:
        engine.dispose()


def combine_purchases(
    file: Purchases | None, database: pd.DataFrame | None, source: str
) -> Purchases:
    """One cleaned history from a purchase file and/or the service's purchase events.

    The file's item metadata is kept; a purchase present in both (same user, item, time and
    order) counts once.

    Raises:
        DataError: neither source has a purchase.
    """
    frames = []
    if file is not None:
        meta = file.items.set_index("item_id")[["category", "name"]]
        frames.append(file.frame.join(meta, on="item_id"))
    if database is not None and len(database):
        frames.append(database)
    if not frames:
        raise DataError("no purchases: the database has no purchase events yet")
    if len(frames) == 1:
        return purchases_from_frame(frames[0], source=source)
    merged = pd.concat(frames, ignore_index=True)
    # the same line in both (imported from the file, or sent twice): keep the file's
    shared = merged.duplicated(["user_id", "item_id", "timestamp", "order_id"], keep="first")
    combined = purchases_from_frame(merged.loc[~shared], source=source)
    combined.report.rows_read = len(merged)
    combined.report.dropped = {"in_file_and_database": int(shared.sum()), **combined.report.dropped}
    return combined
