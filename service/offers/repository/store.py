"""Queries of the campaign store: current definitions, their append-only change log, the probe.

A change is one transaction: the definition's row is updated only ``WHERE version = expected``
(``version + 1`` set by the statement itself), and the change's row is inserted with the
version the update returned, under a unique index on (campaign, version). Of two writers that
read the same version, PostgreSQL re-checks the WHERE on the locked row once the first one
commits, and SQLite has one writer at a time: one wins, the other changes nothing and is told
so. A creation is an INSERT ... ON CONFLICT DO NOTHING on the campaign id. No read decides
a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, func, select, update

from service.activity.repository import Repository
from service.tables import campaign_changes, campaign_definitions, offer_decisions

CampaignStatus = Literal["active", "paused", "archived"]
CampaignSource = Literal["file", "default", "api"]
ChangeAction = Literal["create", "update", "pause", "resume", "archive"]


@dataclass(frozen=True)
class StoredDefinition:
    """A campaign as the store holds it now: the fields given, not the defaults."""

    campaign_id: str
    kind: str
    definition: dict[str, Any]
    status: CampaignStatus  # the table's check constraints hold these three to their values
    version: int
    source: CampaignSource
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ChangeRecord:
    """One row of the change log: what the campaign was after ``action``, and who did it."""

    campaign_id: str
    version: int
    action: ChangeAction
    status: CampaignStatus
    definition: dict[str, Any]  # every field, defaults included
    actor: str
    at: datetime


@dataclass(frozen=True)
class Change:
    """What a change writes: the row's new values and the log's entry."""

    kind: str
    definition: dict[str, Any]  # the fields given
    status: CampaignStatus
    source: CampaignSource
    action: ChangeAction
    full: dict[str, Any]  # the whole definition, for the log
    actor: str
    at: datetime


def _definition(row: Any) -> StoredDefinition:
    m = row._mapping
    return StoredDefinition(**{k: m[k] for k in campaign_definitions.c.keys()})  # noqa: SIM118


def _change(row: Any) -> ChangeRecord:
    m = row._mapping
    return ChangeRecord(**{k: m[k] for k in ChangeRecord.__dataclass_fields__})


class CampaignRepository:
    """Queries of ``campaign_definitions`` and ``campaign_changes``."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        d = campaign_definitions
        # the poll's probe: every change adds one to one version and nothing is ever deleted,
        # so the sum grows with every commit, whatever order concurrent commits land in
        # (a maximum would miss a change committed after a later one was seen)
        self._signature = select(func.count(), func.coalesce(func.sum(d.c.version), 0))
        self._create = (
            base.insert(d)
            .on_conflict_do_nothing(index_elements=[d.c.campaign_id])
            .returning(d.c.campaign_id)
        )

    # --- reads ----------------------------------------------------------------------------

    def signature(self) -> tuple[int, int]:
        """(campaigns, sum of their versions): changes whenever any campaign changes."""
        with self.engine.connect() as conn:
            count, total = conn.execute(self._signature).one()
        return int(count), int(total)

    def all(self) -> list[StoredDefinition]:
        """Every campaign, archived ones included, the first created first."""
        d = campaign_definitions
        query = select(d).order_by(d.c.created_at, d.c.campaign_id)
        with self.engine.connect() as conn:
            return [_definition(r) for r in conn.execute(query)]

    def get(self, campaign_id: str) -> StoredDefinition | None:
        with self.engine.connect() as conn:
            return self._get(conn, campaign_id)

    def history(self, campaign_id: str, *, after: int = 0, limit: int = 100) -> list[ChangeRecord]:
        """The campaign's changes with a version above ``after``, oldest first."""
        c = campaign_changes
        query = (
            select(*(c.c[k] for k in ChangeRecord.__dataclass_fields__))
            .where(c.c.campaign_id == campaign_id, c.c.version > after)
            .order_by(c.c.version)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_change(r) for r in conn.execute(query)]

    def decisions_by_version(self, campaign_id: str) -> dict[int | None, int]:
        """The campaign's recorded decisions counted by the definition version they used."""
        d = offer_decisions
        query = (
            select(d.c.campaign_version, func.count())
            .where(d.c.campaign_id == campaign_id)
            .group_by(d.c.campaign_version)
        )
        with self.engine.connect() as conn:
            return {None if v is None else int(v): int(n) for v, n in conn.execute(query)}

    # --- writes ---------------------------------------------------------------------------

    def create(self, campaign_id: str, change: Change) -> bool:
        """Insert the campaign at version 1 with its ``create`` entry; False if it exists."""
        row = {
            "campaign_id": campaign_id,
            "kind": change.kind,
            "definition": change.definition,
            "status": change.status,
            "version": 1,
            "source": change.source,
            "created_at": change.at,
            "updated_at": change.at,
        }
        with self.base.writing() as conn:
            if conn.execute(self._create, row).first() is None:
                return False
            self._log(conn, campaign_id, 1, change)
        return True

    def change(self, campaign_id: str, expected: int, change: Change) -> int | None:
        """Apply ``change`` if the campaign is still at version ``expected``: the new version,
        or None when another change came first (nothing written)."""
        d = campaign_definitions
        statement = (
            update(d)
            .where(d.c.campaign_id == campaign_id, d.c.version == expected)
            .values(
                kind=change.kind,
                definition=change.definition,
                status=change.status,
                source=change.source,
                version=d.c.version + 1,
                updated_at=change.at,
            )
            .returning(d.c.version)
        )
        with self.base.writing() as conn:
            version = conn.execute(statement).scalar()
            if version is None:
                return None
            self._log(conn, campaign_id, int(version), change)
        return int(version)

    def _log(self, conn: Connection, campaign_id: str, version: int, change: Change) -> None:
        conn.execute(
            campaign_changes.insert(),
            {
                "campaign_id": campaign_id,
                "version": version,
                "action": change.action,
                "status": change.status,
                "definition": change.full,
                "actor": change.actor,
                "at": change.at,
            },
        )

    def _get(self, conn: Connection, campaign_id: str) -> StoredDefinition | None:
        d = campaign_definitions
        row = conn.execute(select(d).where(d.c.campaign_id == campaign_id)).first()
        return None if row is None else _definition(row)
