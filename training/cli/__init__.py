"""``recoffer``: the command line. Parses, calls the pipeline or the registry, prints.

Exit codes (``training.exit_codes``): 0 success, 3 a training run the quality gate refused,
2 bad input (file, column, value, option), 1 any other failure.
Results go to stdout (a table, or one JSON object with ``--json``); progress goes to stderr.

One module per group of commands; ``render`` prints. Commands are registered here, in the
order ``recoffer --help`` lists them.
"""

from __future__ import annotations

import typer

from training.cli import (
    backtest,
    clv,
    experiment,  # issue 14, item 3
    import_,
    migrate,
    models,
    report,
    schedule,
    segments,
    serve,
    train,
)

app = typer.Typer(
    name="recoffer",
    help="Train, evaluate and publish recommendation models for recoffer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(train.train)
app.command()(train.evaluate)
app.command()(models.models)
app.command()(models.rollback)
app.command()(models.prune)
app.command()(serve.demo)
app.command()(serve.serve)
app.command()(backtest.backtest)
app.command()(migrate.migrate)
app.command("import")(import_.import_)
app.command(context_settings=schedule.CONTEXT_SETTINGS)(schedule.schedule)
app.command()(segments.segments)  # issue 12, item 1
app.command()(report.report)  # issue 13, item 1
app.command()(clv.clv)  # issue 13, item 1: predicted lifetime value
app.add_typer(experiment.app)  # issue 14, item 3: A/B tests of recommenders


def main() -> None:
    """Console-script entry point."""
    app()
