"""Engines for SQLite (embedded default) and PostgreSQL, migrations, and outage detection.

SQLite: WAL, a busy timeout on every connection, and ``BEGIN IMMEDIATE`` for write
transactions (execution option ``immediate=True``) so writers queue instead of failing with
"database is locked" (shared/RELIABILITY.md); reads use a plain ``BEGIN``.
PostgreSQL: pre-ping, statement / lock / idle-in-transaction timeouts, a bounded pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_ID = 0x7265636F  # "reco": PostgreSQL advisory lock around migrations


def make_engine(url: str, *, timeout_seconds: float = 5.0, pool_size: int = 5) -> Engine:
    """An engine configured for this workload (see the module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_seconds, "check_same_thread": False},
            hide_parameters=True,  # error messages must not carry coupon codes or user data
        )
        busy_ms = int(timeout_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # the driver's own transaction handling is off; we say BEGIN IMMEDIATE ourselves
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # writers take the write lock up front (no upgrade deadlock); readers do not
            immediate = connection.get_execution_options().get("immediate", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        ms = int(timeout_seconds * 1000)
        return create_engine(
            parsed,
            hide_parameters=True,  # error messages must not carry coupon codes or user data
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout_seconds,
            connect_args={
                "connect_timeout": max(1, int(timeout_seconds)),
                # a server that goes silent (power loss, partition) never closes the socket and
                # statement_timeout is the server's own: TCP keepalives and a user timeout let
                # this side give up, so a write answers 503 instead of hanging
                "keepalives": 1,
                "keepalives_idle": max(1, int(timeout_seconds)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": ms * 2,
                "options": (
                    f"-c statement_timeout={ms} -c lock_timeout={ms} "
                    f"-c idle_in_transaction_session_timeout={ms * 4} -c timezone=UTC"
                ),
            },
        )
    raise ValueError(f"unsupported database URL {url!r}")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; safe to call from several workers at once."""
    config = alembic_config()
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
                connection.commit()


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable, locked or timed out."""
    if isinstance(exc, PoolTimeoutError):
        return True
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
