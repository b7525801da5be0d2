"""``recoffer import``: bulk-load past purchases, events or the catalogue into the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from training.cli.common import (
    DateFormat,
    DayFirst,
    Delimiter,
    JsonOutput,
    Verbose,
    read_options,
    setup_logging,
)
from training.cli.render import errors, out
from training.data.imports import BATCH_ROWS, KINDS


def import_(
    kind: Annotated[str, typer.Argument(help=f"What the file holds: {', '.join(KINDS)}.")],
    path: Annotated[Path, typer.Argument(help="The file: .csv, .csv.gz or .parquet.")],
    database_url: Annotated[
        str,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = "sqlite:///var/recoffer.db",
    fmt: Annotated[
        str,
        typer.Option("--format", help="purchases: generic (named columns) or online-retail."),
    ] = "generic",
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping, role=column, e.g. 'user=customer,item=sku,timestamp=ts,"
            "price=unit_price,currency=cur,order=invoice' (roles not named keep their default "
            "name: user_id, item_id, timestamp, type, quantity, price, currency, order_id, ...)."
        ),
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="Currency of prices in a file without a currency column (e.g. GBP)."),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            "--skip-bad-rows",
            help="Import the good rows and list the bad ones (default: refuse the file).",
        ),
    ] = False,
    batch_rows: Annotated[
        int, typer.Option(min=1, max=100_000, help="Rows per transaction.")
    ] = BATCH_ROWS,
    delimiter: Delimiter = None,
    date_format: DateFormat = None,
    dayfirst: DayFirst = None,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Bulk-load a file of past purchases, events or catalogue items; safe to run again.

    A re-run stores nothing twice: an event's key is its client_event_id or a digest of the
    row, an item's its id. Bad rows (ids the API refuses, times in the future, inexact
    amounts) are listed with their line numbers; the file is refused unless --skip-bad-rows.

    Examples:

      recoffer import purchases ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --currency GBP --database-url sqlite:///var/recoffer.db

      recoffer import items catalogue.csv --currency EUR

      recoffer import events events.parquet
    """
    from training.data.imports import import_file

    setup_logging(verbose)
    with errors():
        options = read_options(delimiter, date_format, dayfirst)
        report = import_file(
            kind,
            path,
            database_url,
            fmt=fmt,
            columns=columns,
            currency=currency,
            skip_bad=skip_bad_rows,
            batch_rows=batch_rows,
            options=options,
        )
    if as_json:
        out.print(json.dumps(report.as_dict()), markup=False)
    else:
        out.print(report.render(), markup=False)
