"""Alembic environment: runs on the connection handed in by service.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.tables import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # `alembic upgrade head` from a shell: the URL comes from -x url=... or alembic.ini
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database with: alembic -x url=sqlite:///var/recoffer.db ...")
    with create_engine(url).connect() as own:
        context.configure(connection=own, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
