"""Purchases read and cleaned in Spark, by the rules of ``training.data.formats``.

The same input formats (``generic`` with a :class:`ColumnMapping`, ``online-retail``), the same
rules in the same order (each dropped row counted once, under the first rule that drops it),
the same cell conventions (``training.data.cells``: ids as text, ``"17850.0"`` as ``"17850"``,
an empty quantity 1, an empty price unknown, ``a/b/year`` dates in the column's day/month
order, timezone-aware times in UTC) and the same one-line :class:`DataError`s, naming the file,
column, data row and value. The cleaned lines stay in Spark; the report and the item table
(one row per item) come back to the driver.

A local file is first checked by the pandas reader's own functions (``column_names``): a
missing file, an empty one, an unsupported type and a missing column give exactly its
messages. Any other URI Spark reads (``hdfs://``, ``s3a://``, a directory of Parquet parts) is
checked by Spark. CSV is read as UTF-8, or as Latin-1 when the first 64 KiB of a local file
are not UTF-8 (the pandas reader decides on the whole file).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from service.errors import DataError
from service.ids import ID_MAX_LENGTH, ID_PATTERN, id_problem
from training.data.files import (
    DEFAULT_OPTIONS,
    ReadOptions,
    check_columns,
    column_names,
    sniff_delimiter,
)
from training.data.formats import (
    FIELD_ROLES,
    FORMATS,
    GENERIC_RULES,
    ITEM_COLUMNS,
    NON_PRODUCT_CODES,
    NON_PRODUCT_PREFIX,
    ONLINE_RETAIL_MAPPING,
    ONLINE_RETAIL_RULES,
    CleaningReport,
    ColumnMapping,
)
from training.spark.session import to_pandas

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_NUMERIC_DATE = r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})((?:[ T].*)?)$"
_ORDER_HINT = "give the order with --dayfirst, --monthfirst or --date-format"
_FLOAT_LOOKING_ID = r"^(-?\d+)\.0+$"
_MAX_VALUE_CHARS = 80
_SNIFF_BYTES = 64 * 1024
# strftime directives and the Java DateTimeFormatter pattern Spark parses them with
_STRFTIME_TO_JAVA = {
    "%Y": "yyyy",
    "%y": "yy",
    "%m": "MM",
    "%d": "dd",
    "%H": "HH",
    "%I": "hh",
    "%M": "mm",
    "%S": "ss",
    "%f": "SSSSSS",
    "%p": "a",
    "%b": "MMM",
    "%B": "MMMM",
    "%z": "Z",
    "%%": "%",
}
COLUMNS = ("user_id", "item_id", "timestamp", "quantity", "price", "order_id")


@dataclass
class SparkPurchases:
    """Cleaned purchase lines in Spark, with the item table and the report on the driver.

    ``frame`` columns: user_id, item_id (string), timestamp (timestamp, UTC), quantity
    (double, 1.0 when unknown), price (double, null when unknown), order_id (string;
    ``user_id@timestamp`` when the input has none); persisted, in no particular order.
    ``items`` and ``report`` are those of ``training.data.formats.Purchases``.
    """

    frame: DataFrame
    items: pd.DataFrame
    report: CleaningReport


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a path on this machine (no scheme, or ``file:``)."""
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def read_purchases(
    spark: SparkSession,
    uri: str,
    fmt: str = "generic",
    columns: ColumnMapping | None = None,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> SparkPurchases:
    """Read and clean ``uri`` (CSV, CSV.gz or Parquet) as ``load_purchases`` does."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if fmt == "online-retail" and columns is not None:
        raise DataError("the online-retail format has a fixed column mapping; do not pass one")
    source = str(uri)
    raw = _read_raw(spark, source, options)
    if fmt == "online-retail":
        mapping = ONLINE_RETAIL_MAPPING
        check_columns(mapping.mapped().values(), raw.columns, source)
    else:
        mapping = columns if columns is not None else _default_mapping(raw.columns)
        check_columns(mapping.mapped().values(), raw.columns, source)
        raw = raw.select(*dict.fromkeys(mapping.mapped().values()))
    return clean(raw, mapping, source, options, online_retail=fmt == "online-retail")


def _default_mapping(present: list[str]) -> ColumnMapping:
    optional = (
        ("quantity", "quantity"),
        ("price", "price"),
        ("order", "order_id"),
        ("category", "category"),
        ("name", "name"),
    )
    return ColumnMapping(**{role: column for role, column in optional if column in present})


def _read_raw(spark: SparkSession, uri: str, options: ReadOptions) -> DataFrame:
    """The file as a Spark frame: CSV every column as text, Parquet with its own types."""
    name = uri.lower().rstrip("/")
    local = is_local(uri)
    if local:
        path = _local_path(uri)
        if path.is_dir():  # a directory of Parquet parts, as Spark writes them
            return _read_parquet(spark, uri, next(iter(sorted(path.glob("*.parquet"))), None))
        column_names(path, options)  # the pandas reader's checks and messages
    if name.endswith(_PARQUET_SUFFIXES):
        return _read_parquet(spark, uri, _local_path(uri) if local else None)
    if not name.endswith(_CSV_SUFFIXES):
        raise DataError(
            f"unsupported file type: {uri} "
            f"(expected {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)})"
        )
    encoding = "UTF-8"
    delimiter = options.delimiter
    if local:
        path = _local_path(uri)
        if not _starts_as_utf8(path):
            log.warning("%s is not valid UTF-8; reading it as Latin-1", uri)
            encoding = "ISO-8859-1"
        if delimiter is None:
            delimiter = sniff_delimiter(path, "utf-8" if encoding == "UTF-8" else "latin-1")
    csv_options = {
        "header": "true",
        "inferSchema": "false",
        "sep": delimiter or ",",
        "encoding": encoding,
        "multiLine": "false",
        "quote": '"',
        "escape": '"',
        "mode": "FAILFAST",
    }
    return _spark_read(spark, uri, "csv", csv_options)


def _read_parquet(spark: SparkSession, uri: str, sample: Path | None) -> DataFrame:
    """A Parquet file (or directory of parts). Spark refuses nanosecond timestamps (pandas
    writes them): the columns a local file's schema shows as such are read as their integer
    nanoseconds (``spark.sql.legacy.parquet.nanosAsLong``) and turned into timestamps here."""
    from pyspark.sql import functions as F

    nanos: list[str] = []
    if sample is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(sample)
        nanos = [
            field.name
            for field in schema
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns"
        ]
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true" if nanos else "false")
    frame = _spark_read(spark, uri, "parquet", {})
    for name in nanos:
        micros = F.floor(F.col(f"`{name}`") / F.lit(1000)).cast("long")
        frame = frame.withColumn(name, F.timestamp_micros(micros))
    return frame


def _starts_as_utf8(path: Path) -> bool:
    import gzip

    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        head: bytes = handle.read(_SNIFF_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a character cut at the sample's end
    return True


def _spark_read(spark: SparkSession, uri: str, kind: str, options: dict[str, str]) -> DataFrame:
    from pyspark.errors import AnalysisException

    try:
        frame = spark.read.format(kind).options(**options).load(uri)
    except AnalysisException as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise DataError(f"file not found: {uri}") from None
        raise DataError(f"cannot read {uri}: {_first_line(text)}") from None
    if not frame.columns:
        raise DataError(f"cannot read {uri}: the file is empty (no header line)")
    return frame


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else "unreadable"
    return first if len(first) <= 200 else first[:197] + "..."


# --- cells --------------------------------------------------------------------------------


def _text(column: Column) -> Column:
    """Stripped text; blank and missing cells null (``cells.as_text``)."""
    from pyspark.sql import functions as F

    stripped = F.trim(column.cast("string"))
    return F.when(stripped == "", None).otherwise(stripped)


def _ids(frame: DataFrame, name: str) -> Column:
    """Ids as text (``cells.as_ids``): whole numbers without decimals, blanks stripped."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DecimalType, DoubleType, FloatType, IntegralType

    kind = frame.schema[name].dataType
    column = F.col(f"`{name}`")
    if isinstance(kind, IntegralType):
        return column.cast("long").cast("string")
    if isinstance(kind, DoubleType | FloatType | DecimalType):
        whole = (column == F.round(column)) & (F.abs(column) < 2.0**63)
        return F.when(whole, column.cast("long").cast("string")).otherwise(column.cast("string"))
    text = _text(column)
    return F.regexp_replace(text, _FLOAT_LOOKING_ID, "$1")


def _number(frame: DataFrame, name: str) -> tuple[Column, Column]:
    """(the cell as a double, null when empty; whether the cell is not a number)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    column = F.col(f"`{name}`")
    if isinstance(frame.schema[name].dataType, NumericType):
        return column.cast("double"), F.lit(False)
    text = _text(column)
    value = text.cast("double")
    return value, text.isNotNull() & value.isNull()


def _java_pattern(layout: str) -> str:
    """A strftime format as a Java DateTimeFormatter pattern (literal text quoted)."""
    out, at = [], 0
    for match in re.finditer(r"%.", layout):
        literal = layout[at : match.start()]
        if literal:
            out.append("'" + literal.replace("'", "''") + "'")
        directive = match.group(0)
        if directive not in _STRFTIME_TO_JAVA:
            raise DataError(f"--date-format: the directive {directive} is not supported here")
        out.append(_STRFTIME_TO_JAVA[directive])
        at = match.end()
    if layout[at:]:
        out.append("'" + layout[at:].replace("'", "''") + "'")
    return "".join(out)


def _timestamp(
    frame: DataFrame, name: str, source: str, options: ReadOptions
) -> tuple[Column, Column]:
    """(the cell as a UTC timestamp, null when empty; whether the cell is not a date-time)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType, TimestampNTZType, TimestampType

    kind = frame.schema[name].dataType
    column = F.col(f"`{name}`")
    if isinstance(kind, TimestampType | TimestampNTZType):
        return column.cast("timestamp"), F.lit(False)
    if isinstance(kind, NumericType):
        raise DataError(
            f"column {name!r} in {source} holds {kind.simpleString()} values, not date-times "
            "(expected text such as '2011-12-09 12:50:00' or a timestamp type)"
        )
    text = _text(column)
    if options.date_format is not None:
        stamp = F.try_to_timestamp(text, F.lit(_java_pattern(options.date_format)))
        return stamp, text.isNotNull() & stamp.isNull()
    parts = [F.regexp_extract(text, _NUMERIC_DATE, k) for k in range(1, 5)]
    numeric = text.rlike(_NUMERIC_DATE)
    dayfirst = options.dayfirst
    if dayfirst is None:
        dayfirst = _column_order(frame, text, numeric, parts, name, source)
    first, second = parts[0].cast("int"), parts[1].cast("int")
    day, month = (first, second) if dayfirst else (second, first)
    year = parts[2].cast("int")
    year = F.when(
        F.length(parts[2]) == 2, year + F.when(year < 69, 2000).otherwise(1900)
    ).otherwise(year)
    rest = F.regexp_replace(parts[3], r"^([ T])(\d):", "$10$2:")
    iso = F.concat(
        F.lpad(year.cast("string"), 4, "0"),
        F.lit("-"),
        F.lpad(month.cast("string"), 2, "0"),
        F.lit("-"),
        F.lpad(day.cast("string"), 2, "0"),
        rest,
    )
    written = F.when(numeric, iso).otherwise(text)
    stamp = written.cast("timestamp")
    return stamp, text.isNotNull() & stamp.isNull()


def _column_order(
    frame: DataFrame, text: Column, numeric: Column, parts: list[Column], name: str, source: str
) -> bool:
    """Whether the column's ``a/b/year`` dates are day-first (``cells._column_order``)."""
    from pyspark.sql import functions as F

    first, second = parts[0].cast("int"), parts[1].cast("int")
    day_only = numeric & (first > 12) & (second <= 12)
    month_only = numeric & (second > 12) & (first <= 12)
    ambiguous = numeric & (first <= 12) & (second <= 12) & (first != second)
    row = frame.agg(
        F.sum(day_only.cast("long")).alias("day"),
        F.sum(month_only.cast("long")).alias("month"),
        F.sum(ambiguous.cast("long")).alias("ambiguous"),
        F.first(F.when(day_only, text), ignorenulls=True).alias("day_example"),
        F.first(F.when(month_only, text), ignorenulls=True).alias("month_example"),
        F.first(F.when(ambiguous, text), ignorenulls=True).alias("ambiguous_example"),
    ).first()
    assert row is not None
    days, months = int(row["day"] or 0), int(row["month"] or 0)
    if days and months:
        raise DataError(
            f"column {name!r} of {source} mixes day-first and month-first dates: "
            f"{_show(row['day_example'])} reads only day-first, {_show(row['month_example'])} "
            f"only month-first; {_ORDER_HINT}"
        )
    if days or months:
        return bool(days)
    if int(row["ambiguous"] or 0):
        raise DataError(
            f"column {name!r} of {source} has dates that read both day-first and month-first "
            f"({_show(row['ambiguous_example'])}) and none that shows the order; {_ORDER_HINT}"
        )
    return True


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


# --- cleaning -----------------------------------------------------------------------------


def clean(
    raw: DataFrame,
    mapping: ColumnMapping,
    source: str,
    options: ReadOptions = DEFAULT_OPTIONS,
    *,
    online_retail: bool = False,
) -> SparkPurchases:
    """The rules of ``formats._clean_generic`` / ``_clean_online_retail`` over ``raw``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    raw = raw.persist(StorageLevel.MEMORY_AND_DISK)  # read once, then cleaned in passes
    lines = raw
    if online_retail:
        # duplicates are judged on the raw rows (every column of the file), before any rule
        rows_read = raw.count()
        lines = raw.dropDuplicates().persist(StorageLevel.MEMORY_AND_DISK)
        first_dropped = {"duplicate": rows_read - lines.count()}
    else:
        rows_read, first_dropped = -1, {}
    parsed, checks = _normalise(lines, mapping, source, options)
    reason = _reason(mapping, online_retail)
    parsed = parsed.withColumn("_reason", reason)
    counted = parsed.agg(
        F.count(F.lit(1)).alias("_rows"),
        *[
            F.sum(F.when(F.col("_reason") == r, 1).otherwise(0)).alias(r)
            for r in _rules(online_retail)
        ],
        *[
            agg
            for field, (bad, _) in checks.items()
            for agg in (
                F.sum(bad.cast("long")).alias(f"_bad_{field}"),
                F.first(F.when(bad, F.col(f"_raw_{field}")), ignorenulls=True).alias(
                    f"_badv_{field}"
                ),
            )
        ],
        F.sum((F.col("_reason").isNull() & F.col("item_id").isNull()).cast("long")).alias(
            "_empty_item"
        ),
        F.sum((F.col("_reason").isNull() & F.col("timestamp").isNull()).cast("long")).alias(
            "_empty_timestamp"
        ),
    ).first()
    assert counted is not None
    for field, (_, (kind, column)) in checks.items():
        if counted[f"_bad_{field}"]:
            row = _row_of(raw, column, counted[f"_badv_{field}"])
            raise DataError(
                f"cannot parse {kind} in column {column!r} of {source}, data row {row}: "
                f"{_show(counted[f'_badv_{field}'])} ({int(counted[f'_bad_{field}']):,} bad in all)"
            )
    if online_retail:
        for field, column in (("item", mapping.item), ("timestamp", mapping.timestamp)):
            empty = int(counted[f"_empty_{field}"] or 0)
            if empty:
                raise DataError(f"empty {column!r} in {source} ({empty:,} in all)")
        rows_read = rows_read
        dropped = dict(first_dropped)
    else:
        rows_read = int(counted["_rows"])
        dropped = {}
    for rule in _rules(online_retail):
        dropped[rule] = int(counted[rule] or 0)
    alive = parsed.where(F.col("_reason").isNull()).drop("_reason")
    alive = alive.drop(*[c for c in alive.columns if c.startswith("_raw_")])
    if not online_retail:
        subset = [field for field, role in FIELD_ROLES if getattr(mapping, role) is not None]
        before = sum(dropped.values())
        survivors = rows_read - before
        alive = alive.dropDuplicates(subset)
        alive = alive.persist(StorageLevel.MEMORY_AND_DISK)
        dropped["duplicate"] = survivors - alive.count()
        dropped = {rule: dropped[rule] for rule in GENERIC_RULES}
    else:
        alive = alive.persist(StorageLevel.MEMORY_AND_DISK)
        dropped = {rule: dropped[rule] for rule in ONLINE_RETAIL_RULES}
    try:
        return _finish(alive, rows_read, dropped, source, mapping)
    finally:
        lines.unpersist()
        raw.unpersist()


def _rules(online_retail: bool) -> tuple[str, ...]:
    if online_retail:
        return tuple(r for r in ONLINE_RETAIL_RULES if r != "duplicate")
    return tuple(r for r in GENERIC_RULES if r != "duplicate")


def _reason(mapping: ColumnMapping, online_retail: bool) -> Column:
    """The first rule that drops each row (null: kept), in the pandas path's order."""
    from pyspark.sql import functions as F

    user, item, stamp = F.col("user_id"), F.col("item_id"), F.col("timestamp")
    quantity, price, order = F.col("quantity"), F.col("price"), F.col("order_id")
    if online_retail:
        rules: list[tuple[str, Column]] = [
            ("missing_customer", user.isNull()),
            ("cancellation", F.coalesce(order.startswith("C"), F.lit(False))),
            ("non_positive_quantity", F.coalesce(quantity <= 0, F.lit(False))),
            ("non_positive_price", F.coalesce(price <= 0, F.lit(False))),
            (
                "non_product_code",
                F.coalesce(
                    item.isin(*sorted(NON_PRODUCT_CODES)) | item.startswith(NON_PRODUCT_PREFIX),
                    F.lit(False),
                ),
            ),
        ]
    else:
        rules = [
            ("missing_user", user.isNull()),
            ("missing_item", item.isNull()),
            ("missing_timestamp", stamp.isNull()),
        ]
        if mapping.quantity is not None:
            rules.append(("non_positive_quantity", F.coalesce(quantity <= 0, F.lit(False))))
        if mapping.price is not None:
            rules.append(("non_positive_price", F.coalesce(price <= 0, F.lit(False))))
    first, rest = rules[0], rules[1:]
    out: Column = F.when(first[1], F.lit(first[0]))
    for name, hit in rest:
        out = out.when(hit, F.lit(name))
    return out.otherwise(F.lit(None).cast("string"))


def _normalise(
    raw: DataFrame, mapping: ColumnMapping, source: str, options: ReadOptions
) -> tuple[DataFrame, dict[str, tuple[Column, tuple[str, str]]]]:
    """The mapped columns under normalised names and types, and the bad-cell checks
    (field -> (whether the cell is bad, (what it should be, the input column)))."""
    from pyspark.sql import functions as F

    checks: dict[str, tuple[Column, tuple[str, str]]] = {}
    columns: dict[str, Column] = {
        "user_id": _ids(raw, mapping.user),
        "item_id": _ids(raw, mapping.item),
    }
    stamp, bad_stamp = _timestamp(raw, mapping.timestamp, source, options)
    columns["timestamp"] = stamp
    kind = (
        f"date-time in the format {options.date_format!r}"
        if options.date_format is not None
        else "date-time"
    )
    checks["timestamp"] = (bad_stamp, (kind, mapping.timestamp))
    if mapping.quantity is None:
        columns["quantity"] = F.lit(1.0)
    else:
        quantity, bad = _number(raw, mapping.quantity)
        columns["quantity"] = F.coalesce(quantity, F.lit(1.0))
        checks["quantity"] = (bad, ("number", mapping.quantity))
    if mapping.price is None:
        columns["price"] = F.lit(None).cast("double")
    else:
        price, bad = _number(raw, mapping.price)
        columns["price"] = price
        checks["price"] = (bad, ("number", mapping.price))
    columns["order_id"] = (
        F.lit(None).cast("string") if mapping.order is None else _ids(raw, mapping.order)
    )
    for field in ("category", "name"):
        column = getattr(mapping, field)
        columns[field] = (
            F.lit(None).cast("string") if column is None else _text(F.col(f"`{column}`"))
        )
    raw_columns = {
        f"_raw_{field}": F.col(f"`{column}`").cast("string")
        for field, (_, (_, column)) in checks.items()
    }
    parsed = raw.select(
        *[value.alias(name) for name, value in columns.items()],
        *[value.alias(name) for name, value in raw_columns.items()],
    )
    return parsed, {field: (_bad_cell(field), about) for field, (_, about) in checks.items()}


def _bad_cell(field: str) -> Column:
    """Whether the parsed frame's cell of ``field`` is not a value (its text ``_raw_<field>``
    is not empty, its value is null)."""
    from pyspark.sql import functions as F

    return _text(F.col(f"_raw_{field}")).isNotNull() & F.col(field).isNull()


def _row_of(raw: DataFrame, column: str, value: object) -> int:
    """The data row (1-based, in file order) of the first cell of ``column`` holding
    ``value``: only computed on the way to an error."""
    index = raw.columns.index(column)
    hit = (
        raw.rdd.zipWithIndex()
        .filter(lambda pair: pair[0][index] == value)
        .map(lambda pair: pair[1])
        .take(1)
    )
    return int(hit[0]) + 1 if hit else 0


def _finish(
    alive: DataFrame,
    rows_read: int,
    dropped: dict[str, int],
    source: str,
    mapping: ColumnMapping,
) -> SparkPurchases:
    """The kept lines (order ids filled in), their report and item table; empty raises."""
    from pyspark.sql import functions as F

    summary = alive.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.min(F.unix_micros("timestamp")).alias("start"),
        F.max(F.unix_micros("timestamp")).alias("end"),
        *_id_checks(),
    ).first()
    assert summary is not None
    kept = int(summary["rows"])
    if not kept:
        counts = ", ".join(f"{reason}={rows:,}" for reason, rows in dropped.items())
        alive.unpersist()
        raise DataError(
            f"no purchases left after cleaning {source}: {rows_read:,} rows read; dropped {counts}"
        )
    _check_ids(summary, mapping, source)
    whole = F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss")
    fraction = F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    stamp_text = F.when(F.date_format("timestamp", "SSSSSS") == "000000", whole).otherwise(fraction)
    frame = alive.withColumn(
        "order_id",
        F.coalesce(F.col("order_id"), F.concat(F.col("user_id"), F.lit("@"), stamp_text)),
    )
    items = item_table(frame)
    frame = frame.select(*COLUMNS)
    report = CleaningReport(
        source=source,
        rows_read=rows_read,
        dropped=dropped,
        rows_kept=kept,
        users=int(summary["users"]),
        items=int(summary["items"]),
        start=pd.Timestamp(int(summary["start"]) * 1000),
        end=pd.Timestamp(int(summary["end"]) * 1000),
    )
    return SparkPurchases(frame=frame, items=items, report=report)


def _id_checks() -> list[Column]:
    """Per id column: how many kept ids the service would refuse, and the first one."""
    from pyspark.sql import functions as F

    checks = []
    for field in ("user_id", "item_id"):
        value = F.col(field)
        unfit = ~F.coalesce(
            value.rlike(ID_PATTERN) & (F.length(value) <= ID_MAX_LENGTH), F.lit(False)
        )
        checks += [
            F.sum(unfit.cast("long")).alias(f"{field}_n"),
            F.first(F.when(unfit, value), ignorenulls=True).alias(f"{field}_v"),
        ]
    return checks


def _check_ids(row: Any, mapping: ColumnMapping, source: str) -> None:
    """Refuse ids the service would refuse (``formats.check_ids``), naming column and value."""
    for field, column in (("user_id", mapping.user), ("item_id", mapping.item)):
        if row[f"{field}_n"]:
            value = str(row[f"{field}_v"])
            raise DataError(
                f"{field.replace('_', ' ')} {value!r} in column {column!r} of {source}: "
                f"{id_problem(value)} ({int(row[f'{field}_n']):,} such rows; the service could "
                "not be asked for them)"
            )


def item_table(frame: DataFrame) -> pd.DataFrame:
    """One row per item: the most frequent name and category (ties: the value seen first),
    the median unit price (``formats._item_table``); on the driver, sorted by id."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = frame.select("item_id").distinct()
    out = ids
    for field in ("name", "category"):
        counts = (
            frame.where(F.col(field).isNotNull())
            .groupBy("item_id", field)
            .agg(F.count(F.lit(1)).alias("rows"), F.min("timestamp").alias("seen"))
        )
        rank = F.row_number().over(
            Window.partitionBy("item_id").orderBy(F.desc("rows"), F.asc("seen"), F.asc(field))
        )
        best = counts.withColumn("_rank", rank).where(F.col("_rank") == 1)
        out = out.join(best.select("item_id", field), "item_id", "left")
    median = frame.groupBy("item_id").agg(F.median("price").alias("price"))
    out = out.join(median, "item_id", "left")
    items = to_pandas(out)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    table = pd.DataFrame({"item_id": pd.Series(items["item_id"].to_numpy(), dtype="str")})
    for field in ("name", "category"):
        values = items[field].to_numpy(dtype=object)
        table[field] = pd.Series(
            np.where(pd.isna(values), np.nan, values), index=table.index, dtype="str"
        )
    table["price"] = items["price"].to_numpy(dtype="float64")
    return table.loc[:, list(ITEM_COLUMNS)]
