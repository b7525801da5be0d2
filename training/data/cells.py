"""Cells of a read table as typed columns: text, ids, numbers and timestamps.

Ids are strings, never floats (``"00123"`` stays ``"00123"``, a float-looking id such as
``"17850.0"`` becomes ``"17850"``, surrounding blanks are stripped); timestamps are naive,
timezone-aware values are converted to UTC first. A cell that cannot be parsed raises
:class:`DataError` naming the column, the data row and the value.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from service.errors import DataError

_MAX_VALUE_CHARS = 80
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


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."
