"""Purchase histories: read CSV, CSV.gz or Parquet into one normalised frame, with a report.

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

import csv
import gzip
import logging
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from service.errors import DataError

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

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MAX_SHOWN_COLUMNS = 40
_MAX_VALUE_CHARS = 80
CHUNK_ROWS = 100_000  # rows per chunk when streaming events from the database
# Timestamp layouts parsed with an explicit (fast, strict) format when every value matches.
_EXPLICIT_TIME_FORMATS: tuple[tuple[str, str], ...] = (
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "%Y-%m-%d %H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", "%Y-%m-%dT%H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "%Y-%m-%d %H:%M"),
    (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d"),
)
_FLOAT_LOOKING_ID = r"^(-?\d+)\.0+$"
# What a failing reader may raise; wrapped into DataError (UnicodeDecodeError and
# pandas' ParserError are ValueErrors, BadGzipFile an OSError).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, zlib.error, csv.Error)


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
    path: str | Path, fmt: str = "generic", columns: ColumnMapping | None = None
) -> Purchases:
    """Read and clean the purchase history in ``path`` (``.csv``, ``.csv.gz`` or ``.parquet``).

    Args:
        path: the file.
        fmt: ``"generic"`` (columns named by ``columns``) or ``"online-retail"`` (UCI layout,
            fixed mapping: passing ``columns`` too is an error).
        columns: the column mapping for ``generic``; ``None`` means the default names.

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
        raw = read_table(path, required=list(mapping.mapped().values()), everything=True)
        purchases = _clean_online_retail(raw, source)
    else:
        mapping = columns if columns is not None else _default_mapping(path)
        raw = read_table(path, required=list(mapping.mapped().values()), everything=False)
        purchases = _clean_generic(raw, mapping, source)
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


# --- reading --------------------------------------------------------------------------------


# Optional roles the generic format picks up by their default names when no mapping is given.
_OPTIONAL_DEFAULTS = (
    ("quantity", "quantity"),
    ("price", "price"),
    ("order", "order_id"),
    ("category", "category"),
    ("name", "name"),
)


def _default_mapping(path: Path) -> ColumnMapping:
    """Default names for user, item and timestamp, plus every optional column present."""
    _check_file(path)
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            present = set(pq.read_schema(path).names)
        elif name.endswith(_CSV_SUFFIXES):
            try:
                present = set(_csv_header(path, "utf-8"))
            except UnicodeDecodeError:
                present = set(_csv_header(path, "latin-1"))
        else:
            return ColumnMapping()  # read_table names the unsupported type
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    found = {role: column for role, column in _OPTIONAL_DEFAULTS if column in present}
    return ColumnMapping(**found)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a file: {path}")


def read_table(path: Path, required: list[str], everything: bool) -> pd.DataFrame:
    """Read ``required`` columns (or all when ``everything``) as a frame; ids stay text in CSV."""
    _check_file(path)
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return _read_csv(path, required, everything)
    if name.endswith(_PARQUET_SUFFIXES):
        return _read_parquet(path, required, everything)
    raise DataError(
        f"unsupported file type: {path} (expected {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)})"
    )


def _read_csv(path: Path, required: list[str], everything: bool) -> pd.DataFrame:
    try:
        return _read_csv_as(path, required, everything, "utf-8")
    except _NotUtf8:
        logger.warning("%s is not valid UTF-8; reading it as Latin-1", path)
        return _read_csv_as(path, required, everything, "latin-1")


class _NotUtf8(Exception):
    pass


def _read_csv_as(path: Path, required: list[str], everything: bool, encoding: str) -> pd.DataFrame:
    try:
        header = _csv_header(path, encoding)
        check_columns(required, header, str(path))
        wanted = header if everything else list(dict.fromkeys(required))
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(encoding=encoding),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            # Every column as text: ids keep their zeros, and numbers and timestamps are
            # parsed here, where a bad cell can be reported by row.
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(wanted, pa.string()),
                include_columns=wanted,
                strings_can_be_null=False,
            ),
        )
        return table.to_pandas()
    except UnicodeDecodeError as exc:
        raise _NotUtf8 from exc
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc) and encoding == "utf-8":
            raise _NotUtf8 from exc
        raise _unreadable(path, exc) from exc
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def _csv_header(path: Path, encoding: str) -> list[str]:
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding=codec, newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataError(f"cannot read {path}: the file is empty (no header line)")
    return header


def _read_parquet(path: Path, required: list[str], everything: bool) -> pd.DataFrame:
    try:
        schema = pq.read_schema(path)
        present = [name for name in schema.names if not name.startswith("__index_level_")]
        check_columns(required, present, str(path))
        wanted = present if everything else list(dict.fromkeys(required))
        table = pq.read_table(path, columns=wanted)
        # Dictionary-encoded text would come back as a pandas Categorical; undo it.
        table = pa.table(
            {
                name: column.cast(column.type.value_type)
                if pa.types.is_dictionary(column.type)
                else column
                for name, column in zip(table.column_names, table.columns, strict=True)
            }
        )
        return table.to_pandas()
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def check_columns(required: Iterable[str], present: Iterable[object], source: str) -> None:
    """Raise DataError naming every required column that is missing, and those present."""
    names = [str(name) for name in present]
    missing = [column for column in dict.fromkeys(required) if column not in names]
    if not missing:
        return
    shown = ", ".join(repr(name) for name in names[:_MAX_SHOWN_COLUMNS])
    if len(names) > _MAX_SHOWN_COLUMNS:
        shown += f", ... ({len(names)} in all)"
    raise DataError(
        f"{'column' if len(missing) == 1 else 'columns'} "
        f"{', '.join(repr(column) for column in missing)} not found in {source}; "
        f"columns present: {shown or 'none'}"
    )


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read {path}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


# --- column conversion ----------------------------------------------------------------------


def as_text(values: pd.Series) -> pd.Series:
    """Non-missing values as stripped text; missing and blank cells as NaN."""
    missing = values.isna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Series(values.to_numpy(dtype=object), index=values.index)
    dtype = values.dtype
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        text = values.str.strip()
    else:
        text = pd.Series(np.nan, index=values.index, dtype="str")
        text[~missing] = values[~missing].astype("str").str.strip()
    return text.where(text != "")


def as_ids(values: pd.Series) -> pd.Series:
    """Ids as text: integers without a decimal part, ``"17850.0"`` as ``"17850"``."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Series(values.to_numpy(dtype=object), index=values.index)
    if pd.api.types.is_object_dtype(values.dtype):
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind in ("integer", "floating", "mixed-integer-float", "decimal"):
            values = pd.to_numeric(values)
    if pd.api.types.is_bool_dtype(values.dtype):
        return as_text(values)
    if pd.api.types.is_integer_dtype(values.dtype):
        # Directly, not through float64: 64-bit ids would lose digits.
        missing = values.isna().to_numpy(dtype=bool)
        out = pd.Series(np.nan, index=values.index, dtype="str")
        out[~missing] = values[~missing].astype("int64").astype("str")
        return out
    if pd.api.types.is_numeric_dtype(values.dtype):
        missing = values.isna().to_numpy(dtype=bool)
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        whole = ~missing & np.isfinite(numbers) & (numbers == np.round(numbers))
        whole &= np.abs(numbers) < 2.0**63
        out = pd.Series(np.nan, index=values.index, dtype="str")
        out[whole] = pd.Series(numbers[whole].astype("int64"), index=values.index[whole]).astype(
            "str"
        )
        rest = ~missing & ~whole
        if rest.any():
            out[rest] = values[rest].astype("str")
        return out
    text = as_text(values)
    dotted = text.str.contains(".", regex=False).fillna(False).to_numpy(dtype=bool)
    if dotted.any():
        text[dotted] = text[dotted].str.replace(_FLOAT_LOOKING_ID, r"\1", regex=True)
    return text


def _numbers(values: pd.Series, column: str, source: str) -> pd.Series:
    """Float64 with NaN for empty cells; a cell that is not a number raises DataError."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        floats = values.to_numpy(dtype="float64", na_value=np.nan)
        return pd.Series(floats, index=values.index, dtype="float64")
    text = as_text(values)
    arrow = _arrow_text(text)
    if arrow is not None:
        try:
            floats = pc.cast(arrow, pa.float64()).to_numpy(zero_copy_only=False)
            return pd.Series(floats, index=text.index, dtype="float64")
        except pa.ArrowInvalid:
            pass  # located below
    parsed = pd.to_numeric(text, errors="coerce")
    bad = (parsed.isna() & text.notna()).to_numpy(dtype=bool)
    if bad.any():
        _raise_bad_cell("number", column, source, text, bad)
    return parsed.astype("float64")


def _arrow_text(text: pd.Series) -> pa.Array | None:
    """The Arrow array behind a text Series (fast kernels), or None when not Arrow-backed."""
    dtype = text.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return pa.array(text.array)
    return None


def parse_timestamps(values: pd.Series, column: str, source: str) -> pd.Series:
    """Naive datetime64[ns] (UTC for timezone-aware input), NaT for empty cells.

    A non-empty cell that is not a date-time raises DataError naming the column, row and value.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        if isinstance(dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        try:
            return values.astype("datetime64[ns]")
        except (ValueError, OverflowError):  # OutOfBoundsDatetime is a ValueError
            low, high = pd.Timestamp.min, pd.Timestamp.max
            bad = (values.notna() & ~values.between(low, high)).to_numpy(dtype=bool)
            _raise_bad_cell("date-time (outside 1677..2262)", column, source, values, bad)
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise DataError(
            f"column {column!r} in {source} holds {dtype} values, not date-times "
            "(expected text such as '2011-12-09 12:50:00' or a timestamp type)"
        )
    text = as_text(values)
    present = text.notna().to_numpy(dtype=bool)
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    if not present.any():
        return parsed
    given = text[present]
    for pattern, layout in _EXPLICIT_TIME_FORMATS:
        if given.str.fullmatch(pattern).all():
            fast = _strict_iso(text)
            if fast is not None:
                return fast
            stamps = pd.to_datetime(given, format=layout, errors="coerce")
            break
    else:
        stamps = pd.to_datetime(given, format="ISO8601", utc=True, errors="coerce")
        retry = stamps.isna().to_numpy(dtype=bool)
        if retry.any():
            stamps[retry] = pd.to_datetime(given[retry], format="mixed", utc=True, errors="coerce")
        stamps = stamps.dt.tz_localize(None)
    bad = np.zeros(len(values), dtype=bool)
    bad[present] = stamps.isna().to_numpy(dtype=bool)
    # Outside datetime64[ns] (years 1677..2262) counts as unparseable here.
    in_range = stamps.between(pd.Timestamp.min, pd.Timestamp.max) | stamps.isna()
    bad[present] |= ~in_range.to_numpy(dtype=bool)
    if bad.any():
        _raise_bad_cell("date-time", column, source, text, bad)
    parsed[present] = stamps.astype("datetime64[ns]").to_numpy()
    return parsed


def _strict_iso(text: pd.Series) -> pd.Series | None:
    """Arrow's strict ISO 8601 cast (rejects 2011-02-30, 24:00:00); None if it cannot be used.

    Only called when every value has one of the plain layouts, so it is an explicit-format
    parse; on any failure the caller parses with pandas, which also locates the bad cell.
    """
    arrow = _arrow_text(text)
    if arrow is None:
        return None
    try:
        stamps = pc.cast(arrow, pa.timestamp("ns")).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return None
    return pd.Series(stamps, index=text.index, dtype="datetime64[ns]")


def _raise_bad_cell(
    kind: str, column: str, source: str, text: pd.Series, bad: np.ndarray
) -> NoReturn:
    position = int(np.flatnonzero(bad)[0])
    raise DataError(
        f"cannot parse {kind} in column {column!r} of {source}, data row {position + 1}: "
        f"{_show(text.iloc[position])} ({int(bad.sum()):,} bad in all)"
    )


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


def _clean_generic(raw: pd.DataFrame, mapping: ColumnMapping, source: str) -> Purchases:
    parsed = _normalise(raw, mapping, source)
    rules = _Rules(len(raw))
    rules.drop("missing_user", parsed["user_id"].isna())
    rules.drop("missing_item", parsed["item_id"].isna())
    rules.drop("missing_timestamp", parsed["timestamp"].isna())
    quantity, price = parsed["quantity"], parsed["price"]
    rules.drop("non_positive_quantity", None if mapping.quantity is None else quantity <= 0)
    rules.drop("non_positive_price", None if mapping.price is None else price <= 0)
    subset = [name for name, role in _FIELD_ROLES if getattr(mapping, role) is not None]
    duplicate = np.zeros(len(raw), dtype=bool)
    duplicate[rules.alive] = duplicated_rows(parsed.loc[rules.alive, subset])
    rules.drop("duplicate", duplicate)
    return _finish(parsed, rules, source)


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


def _clean_online_retail(raw: pd.DataFrame, source: str) -> Purchases:
    mapping = ONLINE_RETAIL_MAPPING
    parsed = _normalise(raw, mapping, source)
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
    return _finish(parsed, rules, source)


# (normalised column, mapping role) for the columns a purchase line may carry.
_FIELD_ROLES: tuple[tuple[str, str], ...] = (
    ("user_id", "user"),
    ("item_id", "item"),
    ("timestamp", "timestamp"),
    ("quantity", "quantity"),
    ("price", "price"),
    ("order_id", "order"),
    ("category", "category"),
    ("name", "name"),
)


def _normalise(raw: pd.DataFrame, mapping: ColumnMapping, source: str) -> pd.DataFrame:
    """The mapped columns under normalised names and types, one row per input row."""
    raw = raw.reset_index(drop=True)
    n = len(raw)
    out: dict[str, pd.Series] = {}
    out["user_id"] = as_ids(raw[mapping.user])
    out["item_id"] = as_ids(raw[mapping.item])
    out["timestamp"] = parse_timestamps(raw[mapping.timestamp], mapping.timestamp, source)
    if mapping.quantity is None:
        out["quantity"] = pd.Series(np.ones(n), dtype="float64")
    else:
        out["quantity"] = _numbers(raw[mapping.quantity], mapping.quantity, source).fillna(1.0)
    if mapping.price is None:
        out["price"] = pd.Series(np.full(n, np.nan), dtype="float64")
    else:
        out["price"] = _numbers(raw[mapping.price], mapping.price, source)
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


def _finish(parsed: pd.DataFrame, rules: _Rules, source: str) -> Purchases:
    kept = parsed.loc[rules.alive]
    rows_read = len(parsed)
    if kept.empty:
        counts = ", ".join(f"{reason}={rows:,}" for reason, rows in rules.dropped.items())
        raise DataError(
            f"no purchases left after cleaning {source}: {rows_read:,} rows read; dropped {counts}"
        )
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


# --- purchases recorded by the service ------------------------------------------------------


def load_database_purchases(database_url: str) -> pd.DataFrame:
    """The ``purchase`` events the API ingested, as a frame of the normalised column names.

    Columns: user_id, item_id, timestamp (naive UTC), order_id (``user@timestamp`` when the shop
    sent none), and the catalogue's category, name and price when the items table has them.

    Raises:
        DataError: the database cannot be reached or has no events table (not migrated).
    """
    from sqlalchemy import select

    from service.tables import events, items

    query = (
        select(
            events.c.user_id,
            events.c.item_id,
            events.c.ts.label("timestamp"),
            events.c.order_id,
            items.c.category,
            items.c.name,
            items.c.price,
        )
        .select_from(events.outerjoin(items, items.c.item_id == events.c.item_id))
        .where(events.c.type == "purchase", events.c.item_id.is_not(None))
        .order_by(events.c.id)
    )
    columns = ["user_id", "item_id", "timestamp", "order_id", "category", "name", "price"]
    chunks = list(_read_database(database_url, query, columns, "purchases"))
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    frame["timestamp"] = stamps.dt.tz_localize(None)
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
    # the same line in both (the database lacks quantity and price): keep the file's
    shared = merged.duplicated(["user_id", "item_id", "timestamp", "order_id"], keep="first")
    combined = purchases_from_frame(merged.loc[~shared], source=source)
    combined.report.rows_read = len(merged)
    combined.report.dropped = {"in_file_and_database": int(shared.sum()), **combined.report.dropped}
    return combined
