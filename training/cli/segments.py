"""``recoffer segments``: compute every user's segment now, or on a schedule."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from service.errors import UsageProblem
from training.cli.common import JsonOutput, Verbose, setup_logging, utc_option
from training.cli.render import err, errors, out

if TYPE_CHECKING:
    from service.segments.service import RunSummary


def segments(
    database_url: Annotated[
        str,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = "sqlite:///var/recoffer.db",
    as_of: Annotated[
        str | None,
        typer.Option(help="Compute as of this UTC time (ISO 8601; default now), e.g. for a log."),
    ] = None,
    every: Annotated[
        str | None,
        typer.Option(help="Run again on this interval (24h, 6h, ...): each run a child process."),
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="Or on this cron expression in UTC, e.g. '0 4 * * *'.")
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="With --every/--cron: stop after this many runs.")
    ] = None,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Compute every user's RFM scores, lifecycle stage and loyalty type; print the counts.

    Thresholds come from RECOFFER_SEGMENT_* (README, "Segments"). The service keeps a user's
    row current between runs as their events arrive, with this run's shop thresholds.

    Examples:

      recoffer segments --database-url sqlite:///var/recoffer.db

      recoffer segments --cron '0 4 * * *' --database-url postgresql://...
    """
    setup_logging(verbose)
    if every is not None or cron is not None:
        _scheduled(database_url, as_json, every, cron, max_runs)
        return
    with errors():
        summary = _run_once(database_url, utc_option("--as-of", as_of, "2011-12-10"))
    stages, kinds = summary.per_stage(), summary.per_type()
    if as_json:
        doc = {
            "as_of": summary.as_of.isoformat(),
            "users": summary.users,
            "customers": summary.customers,
            "typical_interval_days": round(summary.typical_interval_days, 3),
            "stages": stages,
            "loyalty_types": kinds,
            "matrix": summary.matrix,
            "seconds": round(summary.seconds, 3),
        }
        out.print(json.dumps(doc), markup=False)
        return
    out.print(
        f"{summary.users:,} users ({summary.customers:,} with orders) as of "
        f"{summary.as_of.isoformat()}, typical interval "
        f"{summary.typical_interval_days:.1f} days, in {summary.seconds:.1f} s",
        markup=False,
    )
    out.print("stage       " + " ".join(f"{k:>10}" for k in kinds) + "      total", markup=False)
    for stage, total in stages.items():
        cells = " ".join(f"{summary.matrix[stage][k]:>10,}" for k in kinds)
        out.print(f"{stage:<11} {cells} {total:>10,}", markup=False)
    out.print(
        f"{'total':<11} "
        + " ".join(f"{n:>10,}" for n in kinds.values())
        + f" {summary.users:>10,}",
        markup=False,
    )


def _run_once(database_url: str, as_of: datetime | None) -> RunSummary:
    from pydantic import ValidationError

    from service.activity.repository import Repository
    from service.clock import utc_now
    from service.db import make_engine, migrate
    from service.segments.repository import SegmentRepository
    from service.segments.service import Segments
    from service.settings import SegmentSettings

    try:
        settings = SegmentSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "_".join(str(part) for part in first["loc"]).upper()
        name = f"RECOFFER_SEGMENT_{where}" if where else "RECOFFER_SEGMENT_*"
        raise UsageProblem(f"{name}: {first['msg']}") from None
    try:
        engine = make_engine(database_url, timeout_seconds=60)
    except Exception as exc:  # an unparsable URL, an unknown driver
        raise UsageProblem(f"--database-url: {exc}") from None
    try:
        migrate(engine)
        return Segments(SegmentRepository(Repository(engine)), settings, utc_now).run(as_of)
    finally:
        engine.dispose()


def _scheduled(
    database_url: str, as_json: bool, every: str | None, cron: str | None, max_runs: int | None
) -> None:
    from service.logs import configure_logging
    from training.schedule import Schedule, Scheduler, parse_every

    with errors():
        plan = Schedule(every=parse_every(every) if every else None, cron=cron)
    command = [sys.executable, "-m", "training.cli", "segments", "--database-url", database_url]
    if as_json:
        command.append("--json")
    configure_logging("INFO")
    scheduler = Scheduler(plan, command, run_now=True, max_runs=max_runs)
    scheduler.install_signal_handlers()
    err.print(f"segments {plan.describe()}", markup=False)
    history = scheduler.run()
    failed = [r for r in history if r.failed]
    err.print(f"{len(history)} run(s), {len(failed)} failed", markup=False)
    if history and failed and failed[-1] is history[-1]:
        raise typer.Exit(1)
