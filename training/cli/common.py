"""What the commands share: the model root option, logging set-up, the column mapping option,
and the options that say how a shop's files are written (delimiter, dates)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from service.errors import DataError, UsageProblem
from training.data.files import ReadOptions
from training.data.formats import ColumnMapping

ModelDir = Annotated[
    Path,
    typer.Option(
        "--model-dir",
        envvar="RECOFFER_MODEL_DIR",
        help="Model root: versions/ and registry.json live here.",
        file_okay=False,
    ),
]
DEFAULT_MODEL_DIR = Path("var/models")


def utc_option(option: str, text: str | None, example: str) -> datetime | None:
    """An option's ISO 8601 time in UTC (a time without offset is UTC); None when not given.

    Raises:
        UsageProblem: not a time, naming ``option`` (one line, exit 2).
    """
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageProblem(f"{option} {text!r}: use an ISO 8601 time, e.g. {example}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]

# the source options of the commands that read orders from a file or the database
# (`recoffer report`, `recoffer clv`)
PurchaseFile = Annotated[
    Path | None, typer.Option("--data", help="A purchase file: .csv, .csv.gz or .parquet.")
]
SourceDatabase = Annotated[
    str | None,
    typer.Option(help="Or the service's database: sqlite:///path or postgresql://..."),
]
FileFormat = Annotated[
    str, typer.Option("--format", help="--data: generic (named columns) or online-retail.")
]
FileColumns = Annotated[
    str | None, typer.Option(help="--data: column mapping, as for recoffer import.")
]
FileCurrency = Annotated[
    str | None, typer.Option(help="--data: currency of prices without a currency column.")
]
SkipBadRows = Annotated[
    bool, typer.Option("--skip-bad-rows", help="--data: leave out the rows import refuses.")
]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def parse_columns(text: str | None) -> ColumnMapping | None:
    return ColumnMapping.parse(text) if text else None


# How a purchase (or event, or catalogue) file is written: every command that reads one takes
# these three and passes read_options(...) to the readers of training.data.
Delimiter = Annotated[
    str | None,
    typer.Option(
        "--delimiter",
        help="CSV field separator: one character, or tab. Default: sniffed from the first lines "
        "(one of , ; tab |).",
    ),
]
DateFormat = Annotated[
    str | None,
    typer.Option(
        "--date-format",
        help="strftime format of every timestamp, e.g. '%d/%m/%Y %H:%M'. Default: ISO 8601, or "
        "the day/month order the column shows (refused when it shows both, or neither).",
    ),
]
DayFirst = Annotated[
    bool | None,
    typer.Option(
        "--dayfirst/--monthfirst",
        help="Read dates such as 01/06/2026 day-first (1 June) or month-first (6 January). "
        "Default: the order the column shows.",
    ),
]


def read_options(
    delimiter: str | None, date_format: str | None, dayfirst: bool | None
) -> ReadOptions:
    """The three file options as one object for the readers; a bad value is a usage error."""
    try:
        return ReadOptions(delimiter=delimiter, date_format=date_format, dayfirst=dayfirst)
    except DataError as exc:
        raise UsageProblem(str(exc)) from None
