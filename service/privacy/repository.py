"""Every query of erasure and export: one transaction per erasure, tombstones, the key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from service.activity.repository import Repository
from service.privacy.policy import POLICIES
from service.privacy.tombstones import user_hash
from service.tables import erased_users, erasure_keys, metadata

KEY_NAME = "tombstone"
# tombstone ids may commit out of order on PostgreSQL (as events' do): re-read this many
TOMBSTONE_LOOKBACK_IDS = 1_000


@dataclass(frozen=True)
class Erased:
    """One erasure: when the user was first erased, and what this call removed per table."""

    erased_at: datetime
    removed: dict[str, int]
    user_hash: str


def read_key(conn: Connection) -> bytes | None:
    """The installation's tombstone key (None on a database without one yet)."""
    secret = conn.execute(
        select(erasure_keys.c.secret).where(erasure_keys.c.name == KEY_NAME)
    ).scalar_one_or_none()
    return None if secret is None else bytes.fromhex(secret)


def read_tombstones(conn: Connection, after_id: int = 0) -> list[tuple[int, str]]:
    """(row id, user hash) of the tombstones with an id above ``after_id``, in id order."""
    query = (
        select(erased_users.c.id, erased_users.c.user_hash)
        .where(erased_users.c.id > after_id)
        .order_by(erased_users.c.id)
    )
    return [(int(i), str(h)) for i, h in conn.execute(query)]


class PrivacyRepository:
    """Erasure, tombstones and export rows, on the service's database."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def _key(self, conn: Connection) -> bytes:
        key = read_key(conn)
        if key is None:  # a database made without migration 0004's row (create_all)
            stmt = self.repository.insert(erasure_keys).values(
                name=KEY_NAME, secret=secrets.token_hex(32)
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[erasure_keys.c.name]))
            key = read_key(conn)
            assert key is not None
        return key

    def key(self) -> bytes:
        with self.repository.engine.connect() as conn:
            key = read_key(conn)
        if key is not None:
            return key
        with self.repository.writing() as conn:
            return self._key(conn)

    def erase(self, user_id: str, now: datetime) -> Erased:
        """Apply every table's policy to ``user_id`` and write its tombstone, in one transaction.

        A repeat finds nothing more to remove and keeps the first erasure's time.
        """
        with self.repository.writing() as conn:
            hashed = user_hash(self._key(conn), user_id)
            removed: dict[str, int] = {}
            for name, policy in POLICIES.items():
                table = metadata.tables[name]
                column = table.c[policy.column]
                if policy.action == "delete":
                    result = conn.execute(delete(table).where(column == user_id))
                else:
                    result = conn.execute(
                        update(table).where(column == user_id).values({policy.column: None})
                    )
                removed[name] = int(result.rowcount)
            stmt = self.repository.insert(erased_users).values(user_hash=hashed, erased_at=now)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[erased_users.c.user_hash]))
            erased_at = conn.execute(
                select(erased_users.c.erased_at).where(erased_users.c.user_hash == hashed)
            ).scalar_one()
        return Erased(erased_at=erased_at, removed=removed, user_hash=hashed)

    def tombstones(self, after_id: int) -> tuple[bytes | None, list[tuple[int, str]]]:
        """The key and the tombstones above ``after_id`` (a lookback is the caller's)."""
        with self.repository.engine.connect() as conn:
            return read_key(conn), read_tombstones(conn, after_id)

    def erased_at(self, user_id: str) -> datetime | None:
        with self.repository.engine.connect() as conn:
            key = read_key(conn)
            if key is None:
                return None
            found: datetime | None = conn.execute(
                select(erased_users.c.erased_at).where(
                    erased_users.c.user_hash == user_hash(key, user_id)
                )
            ).scalar_one_or_none()
        return found

    def rows_of(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every row of every user-keyed table that names ``user_id``, by table."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.repository.engine.connect() as conn:
            for name, policy in POLICIES.items():
                table = metadata.tables[name]
                query = (
                    select(table)
                    .where(table.c[policy.column] == user_id)
                    .order_by(*table.primary_key.columns)
                )
                out[name] = [dict(row._mapping) for row in conn.execute(query)]
        return out
