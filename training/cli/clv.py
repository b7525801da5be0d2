"""``recoffer clv``: predicted lifetime value per customer (BG/NBD + Gamma-Gamma), its holdout
check, and with ``--write`` the predictions stored for the API."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from service.errors import DataError, UsageProblem
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
)
from training.cli.render import errors, out, progress

if TYPE_CHECKING:
    from service.analytics.loyalty import Line

EXTRA = "recoffer clv needs the clv extra: pip install 'recoffer[clv]'"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def holdout_table(check: dict[str, Any]) -> Table:
    """Predicted against actual purchase days in the holdout: the model and the baseline."""
    table = Table(
        title=f"holdout check: fitted on {check['calibration_start']} .. "
        f"{check['calibration_end']}, purchase days in {check['holdout_start']} .. "
        f"{check['holdout_end']} ({check['holdout_days']} days), "
        f"{check['customers']:,} customers",
        title_justify="left",
    )
    for name in ("", "predicted", "actual", "predicted / actual", "MAE", "RMSE", "correlation"):
        table.add_column(name, justify="left" if not name else "right")
    for label, key in (("BG/NBD", "model"), ("baseline: calibration rate", "baseline")):
        f = check[key]
        table.add_row(
            label,
            _number(f["predicted"], 1),
            _number(check["actual"], 0),
            _number(f["ratio"]),
            _number(f["mae"]),
            _number(f["rmse"]),
            _number(f["correlation"]),
        )
    return table


def frequency_table(check: dict[str, Any]) -> Table:
    """Mean holdout purchase days per calibration frequency (the calibration/holdout plot)."""
    table = Table(
        title="mean purchase days in the holdout, by calibration frequency", title_justify="left"
    )
    for name in ("repeat days", "customers", "actual", "BG/NBD", "baseline"):
        table.add_column(name, justify="right")
    for b in check["by_frequency"]:
        table.add_row(
            b["frequency"],
            f"{b['customers']:,}",
            _number(b["actual"]),
            _number(b["model"]),
            _number(b["baseline"]),
        )
    return table


def value_tables(summary: dict[str, Any]) -> list[Table]:
    """The predicted value's total, mean and quantiles; the top customers."""
    cur = summary["currency"]
    head = Table(
        title=f"predicted lifetime value, next {summary['horizon_days']} days from "
        f"{summary['as_of'][:10]} ({cur})",
        title_justify="left",
    )
    names = ["customers", "expected purchases", "total", "mean", *summary["quantiles"]]
    for name in names:
        head.add_column(name, justify="right")
    head.add_row(
        f"{summary['customers']:,}",
        _number(summary["expected_purchases"], 1),
        summary["total"],
        summary["mean"],
        *summary["quantiles"].values(),
    )
    top = Table(title="top customers by predicted value", title_justify="left")
    for name in ("user", "expected purchases", "p(alive)", "order value", "predicted value"):
        top.add_column(name, justify="left" if name == "user" else "right")
    for row in summary["top"]:
        top.add_row(
            row["user_id"],
            _number(row["expected_purchases"]),
            _number(row["p_alive"]),
            row["expected_order_value"],
            row["predicted_value"],
        )
    return [head, top]


def clv(
    data: PurchaseFile = None,
    database_url: SourceDatabase = None,
    fmt: FileFormat = "generic",
    columns: FileColumns = None,
    currency: FileCurrency = None,
    skip_bad_rows: SkipBadRows = False,
    horizon_days: Annotated[
        int, typer.Option(min=1, max=3650, help="Predict purchases and value this many days.")
    ] = 90,
    holdout_days: Annotated[
        int,
        typer.Option(
            min=0, max=3650, help="Check on the data's last N days, fitted before them; 0: skip."
        ),
    ] = 90,
    top: Annotated[int, typer.Option(min=0, max=1000, help="Top customers to list.")] = 10,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="--database-url: store every customer's prediction (table customer_value, "
            "replacing the previous run) for GET /v1/analytics/customer-value.",
        ),
    ] = False,
    delimiter: Delimiter = None,
    date_format: DateFormat = None,
    dayfirst: DayFirst = None,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Predict each customer's purchases and value over the horizon (BG/NBD + Gamma-Gamma,
    pymc-marketing) and check the model on a holdout window against a naive baseline.

    The orders are the loyalty metrics' (recoffer report); definitions: README, "Predicted
    lifetime value". The printed summary is the API's (GET /v1/analytics/customer-value) after
    --write, to the last digit.

    Examples:

      recoffer clv --data ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --currency GBP

      recoffer clv --database-url sqlite:///var/recoffer.db --write
    """
    from service.analytics.value import summarize
    from service.api.schemas import CustomerValueSummaryOut

    setup_logging(verbose)
    with errors():
        if (data is None) == (database_url is None):
            raise UsageProblem("give one of --data FILE or --database-url URL")
        if write and database_url is None:
            raise UsageProblem("--write needs --database-url (the predictions go to its table)")
        if importlib.util.find_spec("pymc_marketing") is None:
            raise UsageProblem(EXTRA)
        from training import clv as model

        lines = _lines(
            data,
            database_url,
            fmt,
            columns,
            currency,
            skip_bad_rows,
            delimiter,
            date_format,
            dayfirst,
        )
        orders = model.transactions(lines)
        del lines
        started = time.perf_counter()
        check = model.holdout_check(orders, holdout_days) if holdout_days else None
        prediction = model.predict_values(orders, horizon_days)
        written = None
        if write:
            written = _write(str(database_url), prediction)
        seconds = time.perf_counter() - started
        summary = CustomerValueSummaryOut.model_validate(
            summarize(prediction.values, prediction.run, top)
        ).model_dump(mode="json")
    info = model.model_info(prediction.fitted)
    body: dict[str, Any] = {
        "summary": summary,
        "holdout": check,
        "model": info,
        "orders": orders.orders,
        "orders_left_out": orders.orders_left_out,
        "written": written,
        "seconds": seconds,
    }
    if as_json:
        out.print(json.dumps(body), markup=False)
        return
    if check is not None:
        out.print(holdout_table(check))
        out.print(frequency_table(check))
    for table in value_tables(summary):
        out.print(table)
    parameters = info["parameters"]
    bg, gg = parameters["bg_nbd"], parameters["gamma_gamma"]
    out.print(
        f"{orders.orders:,} orders in {summary['currency']} ({orders.orders_left_out:,} without "
        f"an amount in it left out); BG/NBD r={bg['r']:.4g} alpha={bg['alpha']:.4g} "
        f"a={bg['a']:.4g} b={bg['b']:.4g}, Gamma-Gamma p={gg['p']:.4g} q={gg['q']:.4g} "
        f"v={gg['v']:.4g}; pymc-marketing {info['version']}, MAP, {seconds:.1f} s",
        markup=False,
    )
    if written is not None:
        out.print(f"{written:,} predictions written to customer_value", markup=False)


def _lines(
    data: Path | None,
    database_url: str | None,
    fmt: str,
    columns: str | None,
    currency: str | None,
    skip_bad: bool,
    delimiter: str | None,
    date_format: str | None,
    dayfirst: bool | None,
) -> list[Line]:
    """The order lines of the file (as recoffer import would store it) or of the database."""
    if data is not None:
        from training.report import file_lines

        options = read_options(delimiter, date_format, dayfirst)
        return file_lines(
            data, fmt=fmt, columns=columns, currency=currency, skip_bad=skip_bad, options=options
        )
    from training.cli.report import _database_lines

    lines: list[Line] = _database_lines(str(database_url), None, None)
    return lines


def _write(database_url: str, prediction: Any) -> int:
    """Store the run in the database's customer_value table (migrated first); rows written."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.analytics.value import write
    from service.db import make_engine, migrate

    progress(f"writing {len(prediction.values):,} predictions")
    engine = make_engine(database_url, timeout_seconds=60)
    try:
        migrate(engine)
        return write(engine, prediction.values, prediction.run)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(f"cannot write the predictions: {first}") from None
    finally:
        engine.dispose()
