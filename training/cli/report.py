"""``recoffer report``: the loyalty metrics and the cohort matrix of a purchase file or database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from service.errors import UsageProblem
from training.cli.common import (
    DateFormat,
    DayFirst,
    Delimiter,
    FileColumns,
    FileCurrency,
    FileFormat,
    JsonOutput,
    PurchaseFile,
    SkipBadRows,
    SourceDatabase,
    Verbose,
    read_options,
    setup_logging,
    utc_option,
)
from training.cli.render import err, errors, out

if TYPE_CHECKING:
    from service.analytics.loyalty import Period


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _money(per_currency: dict[str, str]) -> str:
    return ", ".join(f"{cur} {amount}" for cur, amount in per_currency.items()) or "-"


def loyalty_table(report: dict[str, Any]) -> Table:
    """One row per period: S, N, E, the rates, order value and lifetime value."""
    table = Table(
        title=f"loyalty per {report['period']} (UTC)",
        title_justify="left",
        caption="* the data stops inside this period: its figures cover only part of it"
        if any(p.get("partial") for p in report["periods"])
        else None,
        caption_justify="left",
    )
    for name in ("period", "S", "N", "E", "retention", "churn", "repurchase", "repeat cust.",
                 "frequency", "upsell", "avg order", "LTV mean / median"):  # fmt: skip
        # a narrow terminal wraps a figure onto two lines rather than cutting it ("2010-12…")
        table.add_column(name, justify="left" if name == "period" else "right", overflow="fold")
    for p in report["periods"]:
        ltv = ", ".join(
            f"{cur} {v['mean']} / {v['median']}" for cur, v in p["lifetime_value"].items()
        )
        frequency = p["purchase_frequency"]
        table.add_row(
            f"{p['period']} *" if p.get("partial") else p["period"],
            f"{p['customers_at_start']:,}",
            f"{p['new_customers']:,}",
            f"{p['customers_at_end']:,}",
            _rate(p["retention"]),
            _rate(p["churn"]),
            _rate(p["repurchase_rate"]),
            _rate(p["repeat_customer_rate"]),
            "-" if frequency is None else f"{frequency:.3f}",
            _rate(p["upsell_rate"]),
            _money(p["average_order_value"]),
            ltv or "-",
        )
    return table


def cohort_table(matrix: dict[str, Any]) -> Table:
    """One row per cohort month: its size and the share active in month 0, 1, 2, ..."""
    table = Table(title="cohort retention (share active in month k)", title_justify="left")
    table.add_column("cohort", overflow="fold")
    table.add_column("size", justify="right", overflow="fold")
    for k in range(len(matrix["months"])):
        table.add_column(f"m{k}", justify="right", overflow="fold")
    for row in matrix["cohorts"]:
        table.add_row(row["cohort"], f"{row['size']:,}", *(_rate(s) for s in row["share"]))
    return table


def report(
    data: PurchaseFile = None,
    database_url: SourceDatabase = None,
    fmt: FileFormat = "generic",
    columns: FileColumns = None,
    currency: FileCurrency = None,
    skip_bad_rows: SkipBadRows = False,
    segment: Annotated[
        str | None,
        typer.Option(help="--database-url: only users of this lifecycle stage or loyalty type."),
    ] = None,
    period: Annotated[str, typer.Option(help="week (from Monday) or month, UTC.")] = "month",
    since: Annotated[
        str | None, typer.Option(help="Start with the period holding this time (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End with the period holding this time (ISO 8601).")
    ] = None,
    delimiter: Delimiter = None,
    date_format: DateFormat = None,
    dayfirst: DayFirst = None,
    as_json: JsonOutput = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write the report as one self-contained HTML page with charts.",
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Print the loyalty metrics per period and the cohort retention matrix.

    The figures are the API's (GET /v1/analytics/loyalty and /v1/analytics/cohorts), to the
    last digit: a file is read as recoffer import would store it. Definitions: README,
    "Loyalty metrics".

    Examples:

      recoffer report --data ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --currency GBP

      recoffer report --database-url sqlite:///var/recoffer.db --period week --json

      recoffer report --data purchases.csv --currency EUR --html loyalty.html
    """
    from service.analytics.loyalty import cohorts, loyalty, report_end
    from service.analytics.orders import check_segment
    from service.analytics.service import check_range
    from service.api.schemas import CohortsOut, LoyaltyOut

    setup_logging(verbose)
    with errors():
        if (data is None) == (database_url is None):
            raise UsageProblem("give one of --data FILE or --database-url URL")
        if segment is not None and data is not None:
            raise UsageProblem("--segment needs --database-url (segments live in the database)")
        check_segment(segment)
        if period not in ("week", "month"):
            raise UsageProblem(f"--period {period!r}: use week or month")
        start = utc_option("--since", since, "2011-01-01")
        end = utc_option("--until", until, "2011-01-01")
        chosen = cast("Period", period)
        check_range(chosen, start, end)
        check_range("month", start, end)
        if html is not None:
            _check_writable(html)
        if data is not None:
            from training.report import report_figures

            options = read_options(delimiter, date_format, dayfirst)
            figures = report_figures(
                data,
                period=chosen,
                since=start,
                until=end,
                fmt=fmt,
                columns=columns,
                currency=currency,
                skip_bad=skip_bad_rows,
                options=options,
            )
            source = f"purchase file {data.name}"
        else:
            ends = [report_end(p, end) for p in (chosen, "month")]  # a week may end later
            before = None if end is None else max(ends)  # type: ignore[type-var]
            lines = _database_lines(str(database_url), before, segment)
            figures = {
                "loyalty": loyalty(lines, chosen, start, end),
                "cohorts": cohorts(lines, start, end),
            }
            source = f"database {_shown_url(str(database_url))}"
            if segment is not None:
                source += f", segment {segment}"
        body = {
            "loyalty": LoyaltyOut.model_validate(figures["loyalty"]).model_dump(mode="json"),
            "cohorts": CohortsOut.model_validate(figures["cohorts"]).model_dump(mode="json"),
        }
        if html is not None:
            _write_html(html, body, source)
    if as_json:
        out.print(json.dumps(body), markup=False)
        return
    out.print(loyalty_table(body["loyalty"]))
    out.print(cohort_table(body["cohorts"]))
    if html is not None:
        err.print(f"wrote {html}", markup=False)


def _check_writable(path: Path) -> None:
    """Refuse an ``--html`` path that cannot be written, before the work starts."""
    if path.is_dir():
        raise UsageProblem(f"--html: {path} is a directory")
    if not path.parent.is_dir():
        raise UsageProblem(f"--html: cannot write {path} (no directory {path.parent})")


def _write_html(path: Path, body: dict[str, Any], source: str) -> None:
    """The HTML page, written beside ``path`` and renamed over it (never half a file)."""
    import os
    import tempfile

    from service.analytics.html import report_page

    page = report_page(
        body["loyalty"],
        body["cohorts"],
        source=source,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    try:
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise UsageProblem(f"--html: cannot write {path} ({exc.strerror})") from None
    try:
        umask = os.umask(0)  # mkstemp's file is private: give it a report's usual mode
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(page)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise UsageProblem(f"--html: cannot write {path} ({exc.strerror})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _shown_url(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsed URL)"


def _database_lines(url: str, before: datetime | None, segment: str | None) -> list[Any]:
    """Every purchase line of the database at ``url`` (before ``before``, of ``segment``)."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.analytics.orders import read_lines
    from service.db import make_engine
    from service.errors import DataError

    try:
        engine = make_engine(url)
    except Exception as exc:  # a malformed URL
        raise DataError(f"--database-url: {exc}") from None
    try:
        return list(read_lines(engine, before, segment))
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(f"cannot read the database: {first}") from None
    finally:
        engine.dispose()
