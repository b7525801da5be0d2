"""Behaviour-event logs and users files, read and normalised for the backtest.

Events are read with the purchase loader's readers and parsers, so both kinds of input obey one
set of conventions: string ids, naive UTC timestamps, one-line DataError naming file and column.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from service.errors import DataError
from training.data.cells import as_ids, as_text, parse_numbers, parse_timestamps
from training.data.files import check_columns, column_names, read_table
from training.data.formats import parse_mapping


@dataclass(frozen=True)
class EventColumns:
    """Which input column holds each field of an event, and the users file's sign-up time.

    ``user`` names the user column of both files; ``item`` is read only when the campaign
    counts distinct products.
    """

    user: str = "user_id"
    type: str = "type"
    timestamp: str = "timestamp"
    item: str = "item_id"
    signed_up_at: str = "signed_up_at"
    # a purchase's order, units and unit price: read when present (the lifecycle kinds count
    # orders and value them); a purchase without an order id is an order of its own
    order: str = "order_id"
    quantity: str = "quantity"
    price: str = "price"

    def __post_init__(self) -> None:
        for role in (f.name for f in fields(self)):
            if not getattr(self, role):
                raise DataError(f"column mapping: empty column name for {role!r}")
        in_events = [self.user, self.type, self.timestamp, self.item]
        if len(set(in_events)) < len(in_events):
            raise DataError(
                "column mapping: user, type, timestamp and item must be different columns"
            )

    @classmethod
    def parse(cls, text: str) -> EventColumns:
        """Parse ``"user=visitor,type=event,timestamp=ts,item=sku"``; roles not named keep
        their defaults. Unknown or repeated roles and malformed entries raise DataError."""
        return cls(**parse_mapping(text, [f.name for f in fields(cls)]))


DEFAULT_COLUMNS = EventColumns()


def read_events(
    path: Path, columns: EventColumns = DEFAULT_COLUMNS, *, need_item: bool
) -> pd.DataFrame:
    """Read an event log (``.csv``, ``.csv.gz`` or ``.parquet``) into :func:`prepare_events` form.

    Raises:
        DataError: missing file or column, unsupported type, unparseable timestamp.
    """
    required = [columns.user, columns.type, columns.timestamp]
    if need_item:
        required.append(columns.item)
    present = column_names(path) or []
    optional = [columns.item, columns.order, columns.quantity, columns.price]
    wanted = required + [c for c in optional if c in present and c not in required]
    raw = read_table(path, required=wanted, everything=False)
    return prepare_events(raw, columns, source=str(path), need_item=need_item)


def read_users(path: Path, columns: EventColumns = DEFAULT_COLUMNS) -> pd.DataFrame:
    """Read a users file (user id, sign-up time) into :func:`prepare_users` form."""
    raw = read_table(path, required=[columns.user, columns.signed_up_at], everything=False)
    return prepare_users(raw, columns, source=str(path))


def prepare_events(
    raw: pd.DataFrame,
    columns: EventColumns = DEFAULT_COLUMNS,
    *,
    source: str = "<events>",
    need_item: bool = False,
) -> pd.DataFrame:
    """Normalise an event frame: user_id (str), type (lower-case str), timestamp (naive UTC),
    item_id (str, when present). Nothing is dropped here; missing cells stay missing.

    Raises:
        DataError: a required column is missing, or a timestamp cannot be parsed.
    """
    required = [columns.user, columns.type, columns.timestamp]
    if need_item:
        required.append(columns.item)
    check_columns(required, raw.columns, source)
    frame = pd.DataFrame(
        {
            "user_id": as_ids(raw[columns.user]),
            "type": as_text(raw[columns.type]).str.lower(),
            "timestamp": parse_timestamps(raw[columns.timestamp], columns.timestamp, source),
        }
    )
    if columns.item in raw.columns:
        frame["item_id"] = as_ids(raw[columns.item])
    if columns.order in raw.columns:
        frame["order_id"] = as_ids(raw[columns.order])
    for role, name in ((columns.quantity, "quantity"), (columns.price, "price")):
        if role in raw.columns:
            frame[name] = parse_numbers(raw[role], role, source)
    return frame


def prepare_users(
    raw: pd.DataFrame, columns: EventColumns = DEFAULT_COLUMNS, *, source: str = "<users>"
) -> pd.DataFrame:
    """Normalise a users frame: user_id (str), signed_up_at (naive UTC, NaT when unknown)."""
    check_columns([columns.user, columns.signed_up_at], raw.columns, source)
    return pd.DataFrame(
        {
            "user_id": as_ids(raw[columns.user]),
            "signed_up_at": parse_timestamps(
                raw[columns.signed_up_at], columns.signed_up_at, source
            ),
        }
    )


def read_user_attributes(path: Path, columns: EventColumns = DEFAULT_COLUMNS) -> pd.DataFrame:
    """Read a users file with every column: :func:`prepare_user_attributes` form."""
    raw = read_table(path, required=[columns.user], everything=True)
    return prepare_user_attributes(raw, columns, source=str(path))


def prepare_user_attributes(
    raw: pd.DataFrame, columns: EventColumns = DEFAULT_COLUMNS, *, source: str = "<users>"
) -> pd.DataFrame:
    """Normalise a users file whose other columns are user attributes (``birthday``,
    ``email_verified``...): user_id (str), signed_up_at (naive UTC, NaT when absent), and each
    attribute as the service would hold it: ``true``/``false`` cells as booleans, dates as
    ``YYYY-MM-DD``, other cells as text, empty cells missing.
    """
    check_columns([columns.user], raw.columns, source)
    frame = pd.DataFrame({"user_id": as_ids(raw[columns.user])})
    if columns.signed_up_at in raw.columns:
        frame["signed_up_at"] = parse_timestamps(
            raw[columns.signed_up_at], columns.signed_up_at, source
        )
    else:
        frame["signed_up_at"] = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    for name in raw.columns:
        if name in (columns.user, columns.signed_up_at):
            continue
        frame[str(name)] = _attribute_values(raw[name])
    return frame


def _attribute_values(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype(object)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return values.dt.strftime("%Y-%m-%d").astype(object)
    text = as_text(values)
    flags = text.str.lower().map({"true": True, "false": False})
    return flags.where(flags.notna(), text).astype(object)
