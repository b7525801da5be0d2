"""The migrations build exactly the schema service/tables.py describes, on both databases.

Several changes add tables and columns side by side; this is the check that a column added to
``tables.py`` has its migration (and the other way round), and that the chain downgrades.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db import alembic_config, make_engine, migrate
from service.tables import metadata


def _differences(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _migrate(url: str, revision: str = "head", *, down: bool = False) -> None:
    engine = make_engine(url)
    try:
        if down:
            config = alembic_config()
            with engine.connect() as connection:
                config.attributes["connection"] = connection
                command.downgrade(config, revision)
                connection.commit()
        else:
            migrate(engine, revision)
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_declared_one(database_url: str) -> None:
    _migrate(database_url)
    assert _differences(database_url) == []


def test_the_chain_downgrades_to_nothing_and_back(database_url: str) -> None:
    _migrate(database_url)
    _migrate(database_url, "base", down=True)
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    _migrate(database_url)
    assert _differences(database_url) == []
