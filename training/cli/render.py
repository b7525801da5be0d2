"""What ``recoffer`` prints: tables and numbers on stdout, progress and one-line errors on stderr.

An error ends the command with one line and the exit code of its kind in ``service.errors``
(2 bad input, 1 any other failure); nothing here lists exception classes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from service.errors import RecofferError, kind_of, public_detail
from service.scoring import PROTOCOLS
from training.evaluate import METRICS

log = logging.getLogger("recoffer")

# rich falls back to 80 columns when not writing to a terminal; tables need a little more
_WIDTH = None if sys.stdout.isatty() else 120
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)
CANDIDATE_ORDER = ("popularity", "repeat", "als", "als_signals", "ease", "blend", "served")


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as recoffer's one error line; the exit to raise with ``code``."""
    err.print(f"recoffer: error: {message}", markup=False)
    return typer.Exit(code)


def progress(message: str) -> None:
    err.print(f"[dim]·[/dim] {message}")


class errors:
    """Map recoffer's exceptions to one line on stderr and an exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, typer.Exit | KeyboardInterrupt):
            return False
        if isinstance(exc, RecofferError):
            raise fail(public_detail(exc), kind_of(exc).exit_code) from None
        log.debug("unexpected failure", exc_info=exc)
        raise fail(f"{type(exc).__name__}: {exc}", 1) from None


def metrics_tables(
    metrics: dict[str, dict[str, dict[str, float]]], served: dict[str, str]
) -> list[Table]:
    """One table per protocol, one row per candidate; the served candidate marked with *."""
    tables = []
    for protocol in PROTOCOLS:
        rows = metrics.get(protocol, {})
        table = Table(title=f"protocol {protocol}: test split, k = 10", title_justify="left")
        table.add_column("candidate")
        for name in METRICS:
            table.add_column(name.replace("_", " "), justify="right")
        table.add_column("users", justify="right")
        order = sorted(rows, key=lambda n: (*CANDIDATE_ORDER, n).index(n))
        for name in order:
            row = rows[name]
            if name == "served" and name not in served.values():
                continue
            label = f"{name} *" if served.get(protocol) == name else name
            table.add_row(
                label,
                *(f"{row[f'{m}@10']:.4f}" for m in METRICS),
                f"{int(row.get('users', 0)):,}",
            )
        tables.append(table)
    if tables:
        tables[-1].caption = "* served (chosen on the validation split, before the test window)"
    return tables


def models_table(rows: list[dict[str, Any]], model_dir: Path) -> Table:
    """The versions of ``recoffer models``, oldest first; the current one marked with *."""
    table = Table(title=f"Models in {model_dir}")
    for col in ("", "version", "created", "served", "all ndcg@10", "novel ndcg@10", "gate"):
        table.add_column(col)
    for row in rows:
        served = row.get("served") or {}
        table.add_row(
            "*" if row["current"] else "",
            row["version"],
            str(row.get("created_at", ""))[:19],
            ",".join(sorted(set(served.values()))) if served else row.get("error", ""),
            _fmt(row.get("all_ndcg@10")),
            _fmt(row.get("novel_ndcg@10")),
            {True: "passed", False: "refused", None: ""}[row.get("promoted_by_gate")],
        )
    return table


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def backtest_tables(document: dict[str, Any]) -> list[Table]:
    """The backtest report for people: a summary table and a per-day table."""
    span = document["events"]
    summary = Table(
        title=f"backtest of {document['campaign']} on {span['source']} "
        f"({span['start'][:10]} .. {span['end'][:10]})",
        title_justify="left",
        show_header=False,
    )
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    rows: list[tuple[str, str]] = [
        ("users in the log", f"{document['users']:,}"),
        ("new users (sign-up inside the log)", f"{document['new_users']:,}"),
        ("qualifying", f"{document['qualifying']:,}"),
        ("  held out (under the caps)", f"{document['holdout']:,}"),
        ("  would be treated", f"{document['treated']:,}"),
        ("expected coupons (under the caps)", f"{document['expected_coupons']:,}"),
        ("  turned away by the daily cap (either side)", f"{document['capped']['per_day']:,}"),
        ("  turned away by the total cap (either side)", f"{document['capped']['total']:,}"),
    ]
    starts = document["start_from"]
    rows.insert(
        2,
        (
            "  sign-up from: event / users file / first event",
            f"{starts['sign_up_event']:,} / {starts['users_file']:,} / {starts['first_event']:,}",
        ),
    )
    for reason, n in document["not_qualifying"].items():
        if n or reason == "too_few_views":
            rows.append((f"not qualifying: {reason.replace('_', ' ')}", f"{n:,}"))
    bought = document["bought_anyway"]
    others = document["non_qualifying_new_users"]
    if bought is None or others is None:
        rows.append(("bought anyway", "no purchases in the log"))
    else:
        rows.append(
            (
                "qualifying users who bought anyway (no coupon)",
                f"{bought['users']:,} ({_percent(bought['share'])})",
            )
        )
        rows.append(("  of them, would have got a coupon", f"{bought['would_get_coupon']:,}"))
        rows.append(
            (
                "non-qualifying new users who bought",
                f"{others['bought']:,} of {others['users']:,} ({_percent(others['share'])})",
            )
        )
    for label, value in rows:
        summary.add_row(label, value)
    per_day = Table(title="per UTC day", title_justify="left")
    per_day.add_column("day")
    per_day.add_column("qualifying", justify="right")
    per_day.add_column("coupons", justify="right")
    for day, n in document["qualifying_per_day"].items():
        per_day.add_row(day, f"{n:,}", f"{document['coupons_per_day'].get(day, 0):,}")
    return [summary, per_day]


def lifecycle_backtest_tables(document: dict[str, Any]) -> list[Table]:
    """A lifecycle kind's backtest for people: summary, reach per day, money, bought anyway."""
    span = document["events"]
    summary = Table(
        title=f"backtest of {document['campaign']} ({document['kind']}) on {span['source']} "
        f"({span['start'][:10]} .. {span['end'][:10]})",
        title_justify="left",
        show_header=False,
    )
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    sweeps = document["sweeps"]
    eligible = document["eligible"]
    money = document["money"]
    currency = f" {money['currency']}" if money["currency"] else ""
    rows: list[tuple[str, str]] = [
        (
            "users / orders / add-to-carts in the log",
            _counts(span, "users", "orders", "add_to_carts"),
        ),
        ("sweeps (every ... hours)", f"{sweeps['count']:,} ({sweeps['every_hours']:g} h)"),
        ("eligible occurrences (users)", f"{eligible['occurrences']:,} ({eligible['users']:,})"),
        ("  issued", f"{document['issued']:,}"),
        ("  held out", f"{document['holdout']:,}"),
        ("  budget misses never decided", f"{document['budget_misses_never_decided']:,}"),
        ("  occurrences already decided (deduplicated)", f"{document['already_decided']:,}"),
        (
            f"discount cost if every coupon were redeemed ({money['discount']})",
            f"{money['if_every_coupon_redeemed']}{currency}",
        ),
        (
            "  on the orders placed anyway in the window",
            f"{money['on_orders_placed_anyway']}{currency} ({money['orders_placed_anyway']:,})",
        ),
    ]
    bought = document["bought_anyway"]
    if bought is None:
        rows.append(("bought anyway", "no purchases in the log"))
    else:
        for side in ("treated", "holdout"):
            b = bought[side]
            rows.append(
                (
                    f"{side} who bought within {bought['conversion_window_hours']:g} h (no coupon)",
                    f"{b['bought']:,} of {b['decided']:,} ({_percent(b['share'])})",
                )
            )
    for reason, n in document["refused_at_sweep"].items():
        rows.append((f"refused at a sweep: {reason}", f"{n:,}"))
    for label, value in rows:
        summary.add_row(label, value)
    reach = Table(title="reach per UTC day", title_justify="left")
    reach.add_column("")
    for column in ("eligible", "issued", "holdout", "budget_misses"):
        reach.add_column(column.replace("_", " "), justify="right")
    stats = document["per_day_summary"]
    for stat in ("median", "max", "total"):
        reach.add_row(
            stat,
            *(
                f"{stats[c][stat]:,.1f}" if stat == "median" else f"{stats[c][stat]:,}"
                for c in ("eligible", "issued", "holdout", "budget_misses")
            ),
        )
    busiest = sorted(document["per_day"].items(), key=lambda kv: (-kv[1]["eligible"], kv[0]))[:10]
    days = Table(title="the ten busiest days", title_justify="left")
    for column in ("day", "eligible", "issued", "holdout", "budget misses"):
        days.add_column(column, justify="left" if column == "day" else "right")
    for day, n in sorted(d for d in busiest if d[1]["eligible"]):
        days.add_row(
            day, *(f"{n[c]:,}" for c in ("eligible", "issued", "holdout", "budget_misses"))
        )
    return [summary, reach, days]


def _counts(document: dict[str, Any], *keys: str) -> str:
    return " / ".join(f"{document[k]:,}" for k in keys)


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f} %"
