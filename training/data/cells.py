"""Cells of a read table as typed columns: text, ids, numbers and timestamps.

Ids are strings, never floats (``"00123"`` stays ``"00123"``, a float-looking id such as
``"17850.0"`` becomes ``"17850"``, surrounding blanks are stripped); timestamps are naive,
timezone-aware values are converted to UTC first. A cell that cannot be parsed raises
:class:`DataError` naming the column, the data row and the value.

Day and month. With ``ReadOptions.date_format`` every cell must match that strftime format.
Otherwise year-first dates (ISO 8601, ``2026/06/01``) and dates with a month name read one way;
a date written ``a/b/year`` (``/``, ``.`` or ``-``; a two-digit year as strftime's ``%y``: 1969
to 2068) reads only day-first when ``a`` > 12, only month-first when ``b`` > 12, the same either
way when ``a`` = ``b``, and both ways otherwise (ambiguous). ``dayfirst`` True or False reads
every such date in that order (one impossible in it is a bad cell). With ``dayfirst`` None the
column's unambiguous rows decide, and the column is refused, in one line naming it and two
example rows, when its rows show both orders or when all of them are ambiguous.

Timestamps later than now (plus 14 hours, the widest UTC offset, as naive times may be local)
are kept, and counted in one warning per column.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from service.errors import DataError
from training.data.files import DEFAULT_OPTIONS, ReadOptions

logger = logging.getLogger(__name__)

_MAX_VALUE_CHARS = 80
# a/b/year, then nothing, or a time after a blank or a T
_NUMERIC_DATE = r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})((?:[ T].*)?)$"
_ORDER_HINT = "give the order with --dayfirst, --monthfirst or --date-format"
FUTURE_TOLERANCE = timedelta(hours=14)
# Timestamp layouts parsed with an explicit (fast, strict) format when every value matches.
_EXPLICIT_TIME_FORMATS: tuple[tuple[str, str], ...] = (
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "%Y-%m-%d %H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", "%Y-%m-%dT%H:%M:%S"),
    (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "%Y-%m-%d %H:%M"),
    (r"\d{4}-\d{2}-\d{2}", "%Y-%m-%d"),
)
_FLOAT_LOOKING_ID = r"^(-?\d+)\.0+$"


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


def parse_numbers(values: pd.Series, column: str, source: str) -> pd.Series:
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


def parse_timestamps(
    values: pd.Series, column: str, source: str, options: ReadOptions = DEFAULT_OPTIONS
) -> pd.Series:
    """Naive datetime64[ns] (UTC for timezone-aware input), NaT for empty cells.

    A non-empty cell that is not a date-time, or a column whose day/month order cannot be told
    (see the module's docstring), raises DataError naming the column, rows and values. Times in
    the future are counted in one warning.
    """
    stamps = _parse_timestamps(values, column, source, options)
    _warn_about_the_future(stamps, column, source, options.now)
    return stamps


def _parse_timestamps(
    values: pd.Series, column: str, source: str, options: ReadOptions
) -> pd.Series:
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
    if options.date_format is not None:
        layout = options.date_format
        stamps = pd.to_datetime(given, format=layout, utc=True, errors="coerce")
        stamps = stamps.dt.tz_localize(None)
        kind = f"date-time in the format {layout!r}"
        return _checked_stamps(stamps, parsed, present, kind, column, source, text)
    for pattern, layout in _EXPLICIT_TIME_FORMATS:
        if given.str.fullmatch(pattern).all():
            fast = _strict_iso(text)
            if fast is not None:
                return fast
            stamps = pd.to_datetime(given, format=layout, errors="coerce")
            break
    else:
        rows = np.flatnonzero(present) + 1
        given = _year_first(given, rows, column, source, options.dayfirst)
        stamps = pd.to_datetime(given, format="ISO8601", utc=True, errors="coerce")
        retry = stamps.isna().to_numpy(dtype=bool)
        if retry.any():
            stamps[retry] = pd.to_datetime(given[retry], format="mixed", utc=True, errors="coerce")
        stamps = stamps.dt.tz_localize(None)
    return _checked_stamps(stamps, parsed, present, "date-time", column, source, text)


def _checked_stamps(
    stamps: pd.Series,
    parsed: pd.Series,
    present: np.ndarray,
    kind: str,
    column: str,
    source: str,
    text: pd.Series,
) -> pd.Series:
    """``stamps`` (the present cells) placed into ``parsed``; a NaT or out-of-range one raises."""
    bad = np.zeros(len(parsed), dtype=bool)
    bad[present] = stamps.isna().to_numpy(dtype=bool)
    # Outside datetime64[ns] (years 1677..2262) counts as unparseable here.
    in_range = stamps.between(pd.Timestamp.min, pd.Timestamp.max) | stamps.isna()
    bad[present] |= ~in_range.to_numpy(dtype=bool)
    if bad.any():
        _raise_bad_cell(kind, column, source, text, bad)
    parsed[present] = stamps.astype("datetime64[ns]").to_numpy()
    return parsed


def _year_first(
    given: pd.Series, rows: np.ndarray, column: str, source: str, dayfirst: bool | None
) -> pd.Series:
    """``given`` (at data ``rows``) with its ``a/b/year`` dates rewritten year-first (ISO), in
    the column's order.

    The order is ``dayfirst`` when given, else the one the unambiguous rows show; rows showing
    both orders, or only ambiguous rows, raise DataError naming the column and two rows.
    """
    parts = given.str.extract(_NUMERIC_DATE)
    numeric = parts[0].notna().to_numpy(dtype=bool)
    if not numeric.any():
        return given
    first = parts[0][numeric].astype("int64").to_numpy()
    second = parts[1][numeric].astype("int64").to_numpy()
    if dayfirst is None:
        dayfirst = _column_order(given[numeric], rows[numeric], first, second, column, source)
    day, month = (first, second) if dayfirst else (second, first)
    year_text = parts[2][numeric]
    year = year_text.astype("int64").to_numpy(copy=True)
    short = (year_text.str.len() == 2).to_numpy(dtype=bool)
    year[short] += np.where(year[short] < 69, 2000, 1900)  # strftime's %y
    iso = (
        pd.Series(year, dtype="str").str.zfill(4)
        + "-"
        + pd.Series(month, dtype="str").str.zfill(2)
        + "-"
        + pd.Series(day, dtype="str").str.zfill(2)
        # a one-digit hour ("12/1/2010 8:26") made two, so the fast ISO 8601 parser takes it
        + parts[3][numeric]
        .fillna("")
        .str.replace(r"^([ T])(\d):", r"\g<1>0\2:", regex=True)
        .reset_index(drop=True)
    )
    out = given.astype("str").copy()
    out[numeric] = iso.to_numpy()
    return out


def _column_order(
    dates: pd.Series,
    rows: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    column: str,
    source: str,
) -> bool:
    """Whether the ``a/b/year`` dates of a column are day-first, from its unambiguous rows."""
    day_only = (first > 12) & (second <= 12)
    month_only = (second > 12) & (first <= 12)

    def example(mask: np.ndarray, at: int = 0) -> str:
        k = int(np.flatnonzero(mask)[at])
        return f"data row {rows[k]} {_show(dates.iloc[k])}"

    if day_only.any() and month_only.any():
        raise DataError(
            f"column {column!r} of {source} mixes day-first and month-first dates: "
            f"{example(day_only)} reads only day-first, {example(month_only)} only "
            f"month-first; {_ORDER_HINT}"
        )
    if day_only.any() or month_only.any():
        return bool(day_only.any())
    ambiguous = (first <= 12) & (second <= 12) & (first != second)
    if ambiguous.any():
        shown = example(ambiguous)
        if int(ambiguous.sum()) > 1:
            shown += f" and {example(ambiguous, 1)}"
        raise DataError(
            f"column {column!r} of {source} has dates that read both day-first and month-first "
            f"({shown}) and none that shows the order; {_ORDER_HINT}"
        )
    return True  # every a/b/year date has a = b: the same either way


def _warn_about_the_future(
    stamps: pd.Series, column: str, source: str, now: datetime | None
) -> None:
    clock = now if now is not None else datetime.now(UTC).replace(tzinfo=None)
    limit = pd.Timestamp(clock) + FUTURE_TOLERANCE
    future = (stamps > limit).to_numpy(dtype=bool)
    if not future.any():
        return
    latest = int(np.argmax(np.where(future, stamps.to_numpy(dtype="int64"), np.iinfo("int64").min)))
    logger.warning(
        "%s: %d timestamps in column %r are in the future (over %d hours after %s); the "
        "latest, %s, at data row %d",
        source,
        int(future.sum()),
        column,
        FUTURE_TOLERANCE // timedelta(hours=1),
        clock.isoformat(sep=" ", timespec="seconds"),
        stamps.iloc[latest],
        latest + 1,
    )


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


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."
