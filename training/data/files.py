"""Reading purchase and event files: CSV, CSV.gz or Parquet into a frame of text columns.

CSV files are read as UTF-8 (a byte-order mark is skipped) or, failing that, Latin-1, every
column as text so that ids keep their zeros and bad cells can be reported by row; Parquet
columns keep their types. Fields are separated by :attr:`ReadOptions.delimiter` or, when none is
given, by the one of ``,`` ``;`` tab ``|`` that :class:`csv.Sniffer` finds in the first 64 KiB
(``,`` when it finds none). Anything unreadable raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

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
SNIFFED_DELIMITERS = ",;\t|"
_SNIFF_CHARS = 64 * 1024
_TAB_SPELLINGS = ("\\t", "tab", "TAB")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a shop's files, as ``recoffer train`` (and any command reading them) is told.

    ``delimiter``: the CSV field separator (one character; ``"\\t"`` or ``"tab"`` mean a tab);
    None: sniffed. ``date_format``: a strftime format every timestamp cell must match; None:
    ISO 8601, or the day/month order the column shows (``training.data.cells``). ``dayfirst``:
    True reads ``a/b/year`` dates day-first, False month-first, None decides from the column.
    ``now``: the clock for the timestamps-in-the-future warning (naive UTC); None: the wall clock.
    """

    delimiter: str | None = None
    date_format: str | None = None
    dayfirst: bool | None = None
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.delimiter is not None:
            if self.delimiter in _TAB_SPELLINGS:
                object.__setattr__(self, "delimiter", "\t")
            elif len(self.delimiter) != 1 or self.delimiter in '\r\n"':
                raise DataError(
                    f"--delimiter must be one character other than a quote or a line break "
                    f"(\\t or tab for a tab), not {self.delimiter!r}"
                )
        if self.date_format is not None:
            if "%" not in self.date_format:
                raise DataError(
                    f"--date-format takes a strftime format such as '%d/%m/%Y %H:%M', "
                    f"not {self.date_format!r}"
                )
            if self.dayfirst is not None:
                raise DataError(
                    "--date-format already fixes the order of day and month; "
                    "drop --dayfirst/--monthfirst"
                )


DEFAULT_OPTIONS = ReadOptions()


def column_names(path: Path, options: ReadOptions = DEFAULT_OPTIONS) -> list[str] | None:
    """The columns of a CSV (its header line) or Parquet file; None for another type of file."""
    _check_file(path)
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            return list(pq.read_schema(path).names)
        if name.endswith(_CSV_SUFFIXES):
            try:
                return _csv_header(path, "utf-8", _delimiter(path, "utf-8", options))
            except UnicodeDecodeError:
                return _csv_header(path, "latin-1", _delimiter(path, "latin-1", options))
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


def read_table(
    path: Path, required: list[str], everything: bool, options: ReadOptions = DEFAULT_OPTIONS
) -> pd.DataFrame:
    """Read ``required`` columns (or all when ``everything``) as a frame; ids stay text in CSV."""
    _check_file(path)
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return _read_csv(path, required, everything, options)
    if name.endswith(_PARQUET_SUFFIXES):
        return _read_parquet(path, required, everything)
    raise DataError(
        f"unsupported file type: {path} (expected {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)})"
    )


def _read_csv(
    path: Path, required: list[str], everything: bool, options: ReadOptions
) -> pd.DataFrame:
    try:
        return _read_csv_as(path, required, everything, "utf-8", options)
    except _NotUtf8:
        logger.warning("%s is not valid UTF-8; reading it as Latin-1", path)
        return _read_csv_as(path, required, everything, "latin-1", options)


class _NotUtf8(Exception):
    pass


def _read_csv_as(
    path: Path, required: list[str], everything: bool, encoding: str, options: ReadOptions
) -> pd.DataFrame:
    try:
        delimiter = _delimiter(path, encoding, options)
        header = _csv_header(path, encoding, delimiter)
        check_columns(required, header, str(path))
        wanted = header if everything else list(dict.fromkeys(required))
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(encoding=encoding),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
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


def _csv_header(path: Path, encoding: str, delimiter: str) -> list[str]:
    with _open_text(path, encoding) as handle:
        header = next(csv.reader(handle, delimiter=delimiter), None)
    if not header:
        raise DataError(f"cannot read {path}: the file is empty (no header line)")
    return header


def _open_text(path: Path, encoding: str) -> IO[str]:
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding=codec, newline="")
    return open(path, encoding=codec, newline="")  # the caller closes it


def _delimiter(path: Path, encoding: str, options: ReadOptions) -> str:
    if options.delimiter is not None:
        return options.delimiter
    found = sniff_delimiter(path, encoding)
    if found != ",":
        logger.info("%s: fields separated by %r (sniffed)", path, found)
    return found


def sniff_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The field separator of a CSV file: one of ``,`` ``;`` tab ``|``, from its first lines.

    :class:`csv.Sniffer` reads up to 64 KiB (whole lines); a separator that is not in the
    header line, or none found (one column), gives ``,``.
    """
    with _open_text(path, encoding) as handle:
        sample = handle.read(_SNIFF_CHARS)
    if len(sample) == _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]
    header = sample.split("\n", 1)[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters=SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        return ","
    return found if found in header else ","


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
