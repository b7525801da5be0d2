"""Reading purchase and event files: CSV, CSV.gz or Parquet into a frame of text columns.

CSV files are read as UTF-8 (a byte-order mark is skipped) or, failing that, Latin-1, every
column as text so that ids keep their zeros and bad cells can be reported by row; Parquet
columns keep their types. Anything unreadable raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import zlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from service.errors import DataError

logger = logging.getLogger(__name__)

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MAX_SHOWN_COLUMNS = 40
# What a failing reader may raise; wrapped into DataError (UnicodeDecodeError and
# pandas' ParserError are ValueErrors, BadGzipFile an OSError).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, zlib.error, csv.Error)


def column_names(path: Path) -> list[str] | None:
    """The columns of a CSV (its header line) or Parquet file; None for another type of file."""
    _check_file(path)
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return list(pq.read_schema(path).names)
        if name.endswith(_CSV_SUFFIXES):
            try:
                return _csv_header(path, "utf-8")
            except UnicodeDecodeError:
                return _csv_header(path, "latin-1")
        return None  # read_table names the unsupported type
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


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
