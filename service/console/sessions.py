"""Console sessions: an API key exchanged for a random token in an HttpOnly cookie.

Only the token's SHA-256 is stored (a copy of the table lets nobody in), with the role, the
digest of the key it was made from and the session's CSRF token. Sessions live in the database,
so every worker and replica knows them and signing out ends a session everywhere at once; a key
taken out of the settings ends its sessions at their next request (``key_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from service.activity.repository import Repository
from service.settings import Role
from service.tables import console_sessions


def digest(secret: str) -> str:
    """The SHA-256 of a token or key, in hex: what is stored and compared, never the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user."""

    role: Role
    csrf: str  # sent back in every form; compared in constant time
    key_digest: str
    expires_at: datetime

    def csrf_ok(self, given: str | None) -> bool:
        """Whether a form's CSRF token is this session's."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class ConsoleSessions:
    """The ``console_sessions`` table."""

    def __init__(self, repository: Repository, lifetime: timedelta) -> None:
        self.repository = repository
        self.lifetime = lifetime

    def open(self, role: Role, key: str) -> tuple[str, Session]:
        """A new session for ``key`` of ``role``: the cookie's token and the session."""
        token = secrets.token_urlsafe(32)
        now = self.repository.clock()
        session = Session(role, secrets.token_urlsafe(32), digest(key), now + self.lifetime)
        with self.repository.writing() as conn:
            conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
            conn.execute(
                console_sessions.insert().values(
                    token_hash=digest(token),
                    role=role,
                    key_digest=session.key_digest,
                    csrf=session.csrf,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    def find(self, token: str) -> Session | None:
        """The live session of a cookie's token, or None (unknown, expired or signed out)."""
        with self.repository.engine.connect() as conn:
            row = conn.execute(
                select(
                    console_sessions.c.role,
                    console_sessions.c.csrf,
                    console_sessions.c.key_digest,
                    console_sessions.c.expires_at,
                ).where(console_sessions.c.token_hash == digest(token))
            ).first()
        if row is None or row.expires_at <= self.repository.clock():
            return None
        return Session(row.role, row.csrf, row.key_digest, row.expires_at)

    def close(self, token: str) -> None:
        """Sign out: the session is gone for every worker."""
        with self.repository.writing() as conn:
            conn.execute(
                delete(console_sessions).where(console_sessions.c.token_hash == digest(token))
            )
