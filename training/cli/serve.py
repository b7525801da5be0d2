"""``recoffer demo`` and ``recoffer serve``: the API, started as its own entry point."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from service.__main__ import address_problem
from service.errors import UsageProblem
from training.cli.common import DEFAULT_MODEL_DIR, ModelDir, setup_logging
from training.cli.render import err, errors, fail, progress
from training.cli.train import run_training


def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo shop, its database and its models live.")
    ] = Path("var/demo"),
    preset: Annotated[str, typer.Option(help="Synthetic shop size: tiny, small, demo.")] = "demo",
    tune_seconds: Annotated[float, typer.Option(help="Tuning budget in seconds.")] = 20.0,
    serve_api: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the API after training.")
    ] = True,
    host: Annotated[str, typer.Option(help="Address to serve on (loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The whole product on embedded defaults: demo shop -> model -> API on SQLite.

    Generates the seeded demo shop (once), trains when no model exists yet, loads the shop's
    new-user events and catalogue into the database (once), then serves the API in development
    mode (no API keys, loopback only) at http://127.0.0.1:8000 (docs at /docs, console at
    /console).
    """
    from training.demo import prepare_demo

    setup_logging(False)
    if serve_api:
        _check_port(host, port)  # before minutes of generating and training
    with errors():
        try:
            plan = prepare_demo(workdir, preset, progress=progress, tune_seconds=tune_seconds)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    if plan.train_config is not None:
        run_training(plan.train_config, None, as_json)
    else:
        err.print(f"model {plan.current} already trained in {plan.models}", markup=False)
    with errors():
        plan.seed_database()
    if serve_api:
        _serve(
            model_dir=plan.models,
            database_url=plan.database_url,
            host=host,
            port=port,
            workers=1,
            development=True,
        )


def serve(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = None,
    host: Annotated[str, typer.Option(envvar="RECOFFER_HOST", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="RECOFFER_PORT", help="Bind port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
) -> None:
    """Serve the HTTP API (settings from RECOFFER_* variables; options override them).

    Examples:

      RECOFFER_FRONTEND_KEYS=... RECOFFER_ADMIN_KEYS=... recoffer serve --model-dir var/models

      recoffer serve --database-url postgresql://recoffer@db/recoffer --workers 4
    """
    _serve(
        model_dir=model_dir,
        database_url=database_url,
        host=host,
        port=port,
        workers=workers,
        development=False,
    )


def _check_port(host: str, port: int) -> None:
    """Fail now, with one line, when the address is taken (not after a long start-up)."""
    problem = address_problem(host, port)
    if problem:
        raise fail(problem, 2)


def _serve(
    *,
    model_dir: Path,
    database_url: str | None,
    host: str,
    port: int,
    workers: int,
    development: bool,
) -> None:
    """Replace this process with the API's own entry point, ``python -m service``.

    The API worker then has nothing of the trainer (pandas, implicit) loaded, whichever way it
    was started; the process id stays, so a supervisor's signals still reach the server.
    """
    import os

    argv = [sys.executable, "-m", "service", "--host", host, "--port", str(port)]
    argv += ["--workers", str(workers), "--model-dir", str(model_dir)]
    if database_url:
        argv += ["--database-url", database_url]
    if development:
        argv.append("--development")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
