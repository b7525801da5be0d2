"""Purchase histories in their input formats, cleaned into one normalised frame with a report.

Two input formats:

- ``generic``: any table; a :class:`ColumnMapping` says which columns hold the user, item,
  timestamp and (optionally) quantity, price, order, category and name.
- ``online-retail``: the layout of the UCI Online Retail data set (InvoiceNo, StockCode,
  Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country) with its known cleaning
  rules: duplicates, missing customers, cancellations, returns, free lines, non-product codes.

Every dropped row is counted once, under the first rule that drops it, in the order the rules
are applied; :class:`CleaningReport` carries the counts. Anything that makes the input unusable
raises :class:`DataError`, whose message is one line naming the file, column, row and value.

Conventions: ids are strings, never floats (``"00123"`` stays ``"00123"``, a float-looking id
such as ``"17850.0"`` becomes ``"17850"``, surrounding blanks are stripped); an empty quantity
cell means "unknown" (1.0) and an empty price cell means "unknown" (NaN); timestamps are naive,
timezone-aware values are converted to UTC first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from service.errors import DataError
from service.ids import ID_MAX_LENGTH, ID_PATTERN, id_problem
from training.data.cells import as_ids, as_text, parse_numbers, parse_timestamps
from training.data.files import (
    DEFAULT_OPTIONS,
    ReadOptions,
    check_columns,
    column_names,
    read_table,
)

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("generic", "online-retail")

COLUMNS: tuple[str, ...] = ("user_id", "item_id", "timestamp", "quantity", "price", "order_id")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "name", "category", "price")

GENERIC_RULES: tuple[str, ...] = (
    "missing_user",
    "missing_item",
    "missing_timestamp",
    "non_positive_quantity",
    "non_positive_price",
    "duplicate",
)
ONLINE_RETAIL_RULES: tuple[str, ...] = (
    "duplicate",
    "missing_customer",
    "cancellation",
    "non_positive_quantity",
    "non_positive_price",
    "non_product_code",
)
# StockCodes of the Online Retail data that are postage, fees, discounts, manual corrections or
# samples rather than products (case-sensitive, as they appear in the data); "gift_..." codes are
# vouchers.
NON_PRODUCT_CODES: frozenset[str] = frozenset(
    {"POST", "D", "M", "m", "C2", "DOT", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "S", "B"}
)
NON_PRODUCT_PREFIX = "gift_"


@dataclass(frozen=True)
class ColumnMapping:
    """Which input column holds each field of a purchase (``None``: the file has no such column)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    quantity: str | None = None
    price: str | None = None
    order: str | None = None
    category: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for role, column in self.mapped().items():
            if not column:
                raise DataError(f"column mapping: empty column name for {role!r}")
            if column in seen:
                raise DataError(
                    f"column mapping: column {column!r} is mapped to both "
                    f"{seen[column]!r} and {role!r}"
                )
            seen[column] = role

    @classmethod
    def parse(cls, text: str) -> ColumnMapping:
        """Parse ``"user=CustomerID,item=StockCode,timestamp=InvoiceDate,price=UnitPrice"``.

        Roles not named keep their defaults. Unknown roles, repeated roles, entries without
        ``=`` or with an empty side raise :class:`DataError`.
        """
        roles = [f.name for f in fields(cls)]
        if not text.strip():
            raise DataError(
                f"column mapping is empty; expected e.g. 'user=CustomerID,item=SKU' "
                f"with roles {', '.join(roles)}"
            )
        return cls(**parse_mapping(text, roles))

    def mapped(self) -> dict[str, str]:
        """Role -> input column for the roles that are mapped, in field order."""
        pairs = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {role: column for role, column in pairs if column is not None}


ONLINE_RETAIL_MAPPING = ColumnMapping(
    user="CustomerID",
    item="StockCode",
    timestamp="InvoiceDate",
    quantity="Quantity",
    price="UnitPrice",
    order="InvoiceNo",
    name="Description",
)


def parse_mapping(text: str, roles: list[str]) -> dict[str, str]:
    """``"role=column,role=column"`` as a dict; malformed, unknown or repeated roles raise."""
    chosen: dict[str, str] = {}
    for entry in text.split(","):
        role, sep, column = (part.strip() for part in entry.partition("="))
        if not sep or not role or not column:
            raise DataError(
                f"column mapping: malformed entry {entry.strip()!r} in {text!r}; "
                "expected role=column"
            )
        if role not in roles:
            raise DataError(
                f"column mapping: unknown role {role!r} in {text!r}; "
                f"known roles: {', '.join(roles)}"
            )
        if role in chosen:
            raise DataError(f"column mapping: role {role!r} given twice in {text!r}")
        chosen[role] = column
    return chosen


@dataclass
class CleaningReport:
    """What cleaning did: rows read, rows dropped per rule (in rule order), what is left."""

    source: str
    rows_read: int
    dropped: dict[str, int]
    rows_kept: int
    users: int
    items: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy (timestamps as ISO strings)."""
        return {
            "source": self.source,
            "rows_read": int(self.rows_read),
            "dropped": {reason: int(rows) for reason, rows in self.dropped.items()},
            "rows_kept": int(self.rows_kept),
            "users": int(self.users),
            "items": int(self.items),
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
        }

    def render(self) -> str:
        """A short multi-line summary for people."""
        share = 100.0 * self.rows_kept / self.rows_read if self.rows_read else 0.0
        lines = [
            f"{self.source}: {self.rows_read:,} rows read, {self.rows_kept:,} kept ({share:.1f} %)"
        ]
        width = max((len(reason) for reason in self.dropped), default=0)
        lines += [
            f"  dropped {reason:<{width}}  {rows:>10,}" for reason, rows in self.dropped.items()
        ]
        span = "no purchases" if self.start is None else f"{self.start} .. {self.end}"
        lines.append(f"  {self.users:,} users, {self.items:,} items, {span}")
        return "\n".join(lines)


@dataclass
class Purchases:
    """Cleaned purchase lines, the item metadata seen in them, and the cleaning report.

    ``frame`` columns: user_id (str), item_id (str), timestamp (datetime64[ns], naive),
    quantity (float64, 1.0 when unknown), price (float64, NaN when unknown), order_id (str;
    ``user_id@timestamp`` when the input has none); sorted by timestamp (stable), fresh index.
    ``items`` columns: item_id, name, category (str or NaN; the most frequent value per item),
    price (median unit price, NaN when unknown); one row per item of ``frame``, sorted by id.
    """

    frame: pd.DataFrame
    items: pd.DataFrame
    report: CleaningReport


def load_purchases(
    path: str | Path,
    fmt: str = "generic",
    columns: ColumnMapping | None = None,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> Purchases:
    """Read and clean the purchase history in ``path`` (``.csv``, ``.csv.gz`` or ``.parquet``).

    Args:
        path: the file.
        fmt: ``"generic"`` (columns named by ``columns``) or ``"online-retail"`` (UCI layout,
            fixed mapping: passing ``columns`` too is an error).
        columns: the column mapping for ``generic``; ``None`` means the default names.
        options: the CSV delimiter and how dates are written (default: sniffed, decided by
            the data; see ``training.data.cells``).

    Returns:
        The cleaned purchases, their item metadata and the cleaning report.

    Raises:
        DataError: unknown format, unreadable file, missing column, unparseable value, or
            nothing left after cleaning.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if fmt == "online-retail" and columns is not None:
        raise DataError("the online-retail format has a fixed column mapping; do not pass one")
    path = Path(path)
    source = str(path)
    if fmt == "online-retail":
        mapping = ONLINE_RETAIL_MAPPING
        # Duplicates are judged on the raw rows, so every column of the file is read.
        raw = read_table(path, list(mapping.mapped().values()), everything=True, options=options)
        purchases = _clean_online_retail(raw, source, options)
    else:
        mapping = columns if columns is not None else _default_mapping(path, options)
        raw = read_table(path, list(mapping.mapped().values()), everything=False, options=options)
        purchases = _clean_generic(raw, mapping, source, options)
    report = purchases.report
    logger.info(
        "purchases loaded from %s (%s): %d rows read, %d kept, %d users, %d items",
        source,
        fmt,
        report.rows_read,
        report.rows_kept,
        report.users,
        report.items,
    )
    return purchases


def purchases_from_frame(frame: pd.DataFrame, source: str = "<frame>") -> Purchases:
    """Clean an in-memory purchase frame that already uses the normalised column names.

    ``user_id``, ``item_id`` and ``timestamp`` are required; ``quantity``, ``price``,
    ``order_id``, ``category`` and ``name`` are used when present. The generic rules apply.
    """
    optional = {
        "quantity": "quantity",
        "price": "price",
        "order": "order_id",
        "category": "category",
        "name": "name",
    }
    mapping = ColumnMapping(
        **{role: column for role, column in optional.items() if column in frame}
    )
    wanted = list(mapping.mapped().values())
    check_columns(wanted, frame.columns, source)
    raw = frame.loc[:, wanted].reset_index(drop=True)
    return _clean_generic(raw, mapping, source)


# Optional roles the generic format picks up by their default names when no mapping is given.
_OPTIONAL_DEFAULTS = (
    ("quantity", "quantity"),
    ("price", "price"),
    ("order", "order_id"),
    ("category", "category"),
    ("name", "name"),
)


def _default_mapping(path: Path, options: ReadOptions) -> ColumnMapping:
    """Default names for user, item and timestamp, plus every optional column present."""
    present = column_names(path, options)
    if present is None:
        return ColumnMapping()  # read_table names the unsupported type
    found = {role: column for role, column in _OPTIONAL_DEFAULTS if column in present}
    return ColumnMapping(**found)


# --- cleaning -------------------------------------------------------------------------------


class _Rules:
    """Applies drop rules in order; each row is counted by the first rule that drops it."""

    def __init__(self, rows: int) -> None:
        self.alive = np.ones(rows, dtype=bool)
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str, mask: np.ndarray | pd.Series | None) -> None:
        if mask is None:
            self.dropped[reason] = 0
            return
        hit = np.asarray(mask, dtype=bool) & self.alive
        self.dropped[reason] = int(hit.sum())
        self.alive &= ~hit


def _clean_generic(
    raw: pd.DataFrame, mapping: ColumnMapping, source: str, options: ReadOptions = DEFAULT_OPTIONS
) -> Purchases:
    parsed = _normalise(raw, mapping, source, options)
    rules = _Rules(len(raw))
    rules.drop("missing_user", parsed["user_id"].isna())
    rules.drop("missing_item", parsed["item_id"].isna())
    rules.drop("missing_timestamp", parsed["timestamp"].isna())
    quantity, price = parsed["quantity"], parsed["price"]
    rules.drop("non_positive_quantity", None if mapping.quantity is None else quantity <= 0)
    rules.drop("non_positive_price", None if mapping.price is None else price <= 0)
    subset = [name for name, role in FIELD_ROLES if getattr(mapping, role) is not None]
    duplicate = np.zeros(len(raw), dtype=bool)
    duplicate[rules.alive] = duplicated_rows(parsed.loc[rules.alive, subset])
    rules.drop("duplicate", duplicate)
    return _finish(parsed, rules, source, mapping)


def duplicated_rows(frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """``frame.duplicated()`` (later copies of a row), comparing text only where it can matter.

    Rows that differ in a number or a time cannot be copies, and comparing those columns is
    cheap; the text columns (slow to compare) are compared only among rows whose numbers and
    times all repeat somewhere: a few percent of a purchase history.
    """
    cheap = [c for c in frame.columns if frame[c].dtype.kind in "biufmM"]
    if not cheap or len(cheap) == frame.shape[1]:
        return np.asarray(frame.duplicated(), dtype=bool)
    candidate = frame[cheap].duplicated(keep=False).to_numpy()
    out = np.zeros(len(frame), dtype=bool)
    if candidate.any():
        out[candidate] = frame.loc[candidate].duplicated().to_numpy()
    return out


def _clean_online_retail(raw: pd.DataFrame, source: str, options: ReadOptions) -> Purchases:
    mapping = ONLINE_RETAIL_MAPPING
    parsed = _normalise(raw, mapping, source, options)
    code = parsed["item_id"]
    rules = _Rules(len(raw))
    rules.drop("duplicate", duplicated_rows(raw))
    rules.drop("missing_customer", parsed["user_id"].isna())
    rules.drop("cancellation", parsed["order_id"].str.startswith("C").fillna(False))
    rules.drop("non_positive_quantity", parsed["quantity"] <= 0)
    rules.drop("non_positive_price", parsed["price"] <= 0)
    rules.drop(
        "non_product_code",
        code.isin(NON_PRODUCT_CODES) | code.str.startswith(NON_PRODUCT_PREFIX).fillna(False),
    )
    # The layout has no rule for these: a kept line without them is a broken file.
    for field, column in (("item_id", mapping.item), ("timestamp", mapping.timestamp)):
        empty = parsed[field].isna().to_numpy(dtype=bool) & rules.alive
        if empty.any():
            row = int(np.flatnonzero(empty)[0]) + 1
            raise DataError(
                f"empty {column!r} in {source}, data row {row} ({int(empty.sum()):,} in all)"
            )
    return _finish(parsed, rules, source, mapping)


# (normalised column, mapping role) for the columns a purchase line may carry (the Spark
# engine's reader uses the same table)
FIELD_ROLES: tuple[tuple[str, str], ...] = (
    ("user_id", "user"),
    ("item_id", "item"),
    ("timestamp", "timestamp"),
    ("quantity", "quantity"),
    ("price", "price"),
    ("order_id", "order"),
    ("category", "category"),
    ("name", "name"),
)


def _normalise(
    raw: pd.DataFrame, mapping: ColumnMapping, source: str, options: ReadOptions
) -> pd.DataFrame:
    """The mapped columns under normalised names and types, one row per input row."""
    raw = raw.reset_index(drop=True)
    n = len(raw)
    out: dict[str, pd.Series] = {}
    out["user_id"] = as_ids(raw[mapping.user])
    out["item_id"] = as_ids(raw[mapping.item])
    out["timestamp"] = parse_timestamps(raw[mapping.timestamp], mapping.timestamp, source, options)
    if mapping.quantity is None:
        out["quantity"] = pd.Series(np.ones(n), dtype="float64")
    else:
        out["quantity"] = parse_numbers(raw[mapping.quantity], mapping.quantity, source).fillna(1.0)
    if mapping.price is None:
        out["price"] = pd.Series(np.full(n, np.nan), dtype="float64")
    else:
        out["price"] = parse_numbers(raw[mapping.price], mapping.price, source)
    if mapping.order is None:
        out["order_id"] = pd.Series(np.nan, index=raw.index, dtype="str")
    else:
        out["order_id"] = as_ids(raw[mapping.order])
    for field in ("category", "name"):
        column = getattr(mapping, field)
        if column is None:
            out[field] = pd.Series(np.nan, index=raw.index, dtype="str")
        else:
            out[field] = as_text(raw[column])
    return pd.DataFrame(out)


def _finish(parsed: pd.DataFrame, rules: _Rules, source: str, mapping: ColumnMapping) -> Purchases:
    kept = parsed.loc[rules.alive]
    rows_read = len(parsed)
    if kept.empty:
        counts = ", ".join(f"{reason}={rows:,}" for reason, rows in rules.dropped.items())
        raise DataError(
            f"no purchases left after cleaning {source}: {rows_read:,} rows read; dropped {counts}"
        )
    check_ids(kept, mapping, source)
    kept = kept.sort_values("timestamp", kind="stable").reset_index(drop=True)
    order = kept["order_id"]
    no_order = order.isna().to_numpy(dtype=bool)
    if no_order.any():
        order = order.copy()
        order[no_order] = kept["user_id"][no_order] + "@" + _iso(kept["timestamp"][no_order])
    frame = kept.assign(order_id=order).loc[:, list(COLUMNS)]
    report = CleaningReport(
        source=source,
        rows_read=rows_read,
        dropped=rules.dropped,
        rows_kept=len(frame),
        users=int(frame["user_id"].nunique()),
        items=int(frame["item_id"].nunique()),
        start=frame["timestamp"].iloc[0],
        end=frame["timestamp"].iloc[-1],
    )
    return Purchases(frame=frame, items=_item_table(kept), report=report)


def check_ids(kept: pd.DataFrame, mapping: ColumnMapping, source: str) -> None:
    """Refuse user and item ids the service would refuse (``service.ids``): a model must not
    hold ids that cannot be asked for. The message names the column, the data row and why."""
    for field, column in (("user_id", mapping.user), ("item_id", mapping.item)):
        values = kept[field]
        fits = values.str.fullmatch(ID_PATTERN).fillna(False).to_numpy(dtype=bool) & (
            values.str.len() <= ID_MAX_LENGTH
        ).fillna(False).to_numpy(dtype=bool)
        if fits.all():
            continue
        first = int(np.flatnonzero(~fits)[0])
        value = str(values.iloc[first])
        raise DataError(
            f"{field.replace('_', ' ')} {value!r} in column {column!r} of {source}, data row "
            f"{int(kept.index[first]) + 1}: {id_problem(value)} ({int((~fits).sum()):,} such "
            "rows; the service could not be asked for them)"
        )


def _iso(stamps: pd.Series) -> pd.Series:
    """ISO 8601 text as ``Timestamp.isoformat`` writes it (seconds, or micro/nanoseconds)."""
    values = stamps.to_numpy(dtype="datetime64[ns]")
    nanos = values.astype("int64")
    unit: Literal["s", "us", "ns"] = (
        "s" if not (nanos % 1_000_000_000).any() else "us" if not (nanos % 1_000).any() else "ns"
    )
    return pd.Series(np.datetime_as_string(values, unit=unit), index=stamps.index, dtype="str")


def _item_table(kept: pd.DataFrame) -> pd.DataFrame:
    """One row per item: most frequent name and category, median unit price."""
    ids = pd.Index(kept["item_id"].unique(), dtype="str").sort_values()
    items = pd.DataFrame({"item_id": pd.Series(ids, dtype="str")})
    for field in ("name", "category"):
        pairs = kept.loc[kept[field].notna(), ["item_id", field]]
        if pairs.empty:
            items[field] = pd.Series(np.nan, index=items.index, dtype="str")
            continue
        counts = pairs.groupby(["item_id", field], sort=False).size().rename("rows").reset_index()
        # Ties go to the value seen first (the frame is in time order).
        best = counts.sort_values("rows", ascending=False, kind="stable").drop_duplicates("item_id")
        chosen = items["item_id"].map(best.set_index("item_id")[field])
        items[field] = pd.Series(chosen.to_numpy(dtype=object), index=items.index, dtype="str")
    median = kept.groupby("item_id", sort=False)["price"].median()
    items["price"] = items["item_id"].map(median).astype("float64")
    return items.loc[:, list(ITEM_COLUMNS)]
