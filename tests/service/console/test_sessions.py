"""Console sessions in the database, on SQLite and PostgreSQL: only hashes stored, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from service.activity.repository import Repository
from service.console.sessions import ConsoleSessions, digest
from service.db import make_engine, migrate
from service.tables import console_sessions


def test_a_session_is_found_by_its_token_until_it_expires_or_closes(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        now = [datetime(2026, 12, 1, 12, tzinfo=UTC)]
        sessions = ConsoleSessions(Repository(engine, clock=lambda: now[0]), timedelta(hours=8))
        token, opened = sessions.open("marketing", "the-marketing-key")
        found = sessions.find(token)
        assert found == opened
        assert found.role == "marketing"
        assert found.key_digest == digest("the-marketing-key")
        assert sessions.find(token + "x") is None
        with engine.connect() as conn:
            stored = conn.execute(select(console_sessions)).mappings().one()
        assert token not in stored.values()  # only the token's hash is kept
        assert "the-marketing-key" not in stored.values()
        now[0] += timedelta(hours=8)
        assert sessions.find(token) is None  # expired
        other, _ = sessions.open("admin", "the-admin-key")  # expired rows are cleared on open
        with engine.connect() as conn:
            assert conn.execute(select(console_sessions.c.role)).scalars().all() == ["admin"]
        sessions.close(other)
        assert sessions.find(other) is None
    finally:
        engine.dispose()
