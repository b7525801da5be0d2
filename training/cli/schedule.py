"""``recoffer schedule``: retrain on a schedule, each run a ``recoffer train`` child process."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from training.cli.render import err, errors, fail

# the options after the schedule's are `recoffer train`'s, passed on as they are
CONTEXT_SETTINGS: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


def schedule(
    ctx: typer.Context,
    every: Annotated[
        str | None, typer.Option(help="Interval between runs: 24h, 6h, 30m, 1h30m ...")
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression in UTC instead, e.g. '0 3 * * *'.")
    ] = None,
    run_now: Annotated[
        bool, typer.Option("--run-now", help="Run once at start, then on the schedule.")
    ] = False,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many runs (default: never).")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Kill a run that takes longer than this (e.g. 2h).")
    ] = None,
) -> None:
    """Retrain on a schedule: every option after the schedule's is passed to `recoffer train`.

    Each run is a `recoffer train` child process: a crash or a kill leaves the served model
    as it was (atomic publish) and the next slot runs again; the trainer lock keeps two runs
    from overlapping. SIGTERM finishes the run under way, a second one stops it.

    Examples:

      recoffer schedule --every 24h --run-now --data purchases.csv --model-dir var/models

      recoffer schedule --cron '0 3 * * *' --database-url sqlite:///var/recoffer.db \\
          --model-dir var/models --tune-seconds 120
    """
    from service.logs import configure_logging
    from training.cli import app
    from training.schedule import Schedule, Scheduler, parse_every, train_command

    train_args = list(ctx.args)
    with errors():
        plan = Schedule(every=parse_every(every) if every else None, cron=cron)
        limit = parse_every(timeout) if timeout else None
    if not train_args:
        raise fail("give the options of `recoffer train` after the schedule's", 2)
    try:  # refuse bad training options now, not at the first run hours later
        train_command_ = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
        parsed = train_command_.make_context("train", list(train_args))
    except typer.Exit:
        return
    except typer.TyperException as exc:  # typer's own usage errors (unknown option, bad value)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise fail(f"training options: {message}", 2) from None
    configure_logging("INFO")
    scheduler = Scheduler(
        plan,
        train_command(train_args),
        run_now=run_now,
        max_runs=max_runs,
        timeout=limit,
        model_dir=parsed.params.get("model_dir"),  # where the runs are recorded
    )
    scheduler.install_signal_handlers()
    err.print(f"retraining {plan.describe()}: recoffer train {' '.join(train_args)}", markup=False)
    history = scheduler.run()
    failed = [r for r in history if r.failed]
    refused = sum(r.outcome == "refused" for r in history)
    err.print(f"{len(history)} run(s), {len(failed)} failed, {refused} refused", markup=False)
    if history and failed and failed[-1] is history[-1]:
        raise typer.Exit(1)
