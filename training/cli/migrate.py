"""``recoffer migrate``: bring the service's database schema up to date."""

from __future__ import annotations

from typing import Annotated

import typer

from service.errors import UsageProblem
from training.cli.common import setup_logging
from training.cli.render import errors, out


def migrate(
    database_url: Annotated[
        str,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = "sqlite:///var/recoffer.db",
) -> None:
    """Apply the database migrations (the service also does this at start by default)."""
    from service.db import make_engine
    from service.db import migrate as apply_migrations

    setup_logging(False)
    with errors():
        try:
            engine = make_engine(database_url)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        try:
            apply_migrations(engine)
        finally:
            engine.dispose()
    out.print(
        f"database at {engine.url.render_as_string(hide_password=True)} is up to date", markup=False
    )
