"""Queries of the sweep jobs: create one unless the campaign has one active, report, read.

"One sweep per campaign at a time" is the partial unique index on the active jobs
(``uq_sweep_jobs_active``): an INSERT ... ON CONFLICT DO NOTHING decides between workers and
replicas, on SQLite and on PostgreSQL alike, with no read before the write.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import JSON, String, bindparam, literal, select, text, update

from service.activity.repository import Repository
from service.tables import ACTIVE_SWEEP, UTCDateTime, sweep_jobs

SweepState = Literal["queued", "running", "done", "failed"]
ACTIVE: tuple[SweepState, ...] = ("queued", "running")


@dataclass(frozen=True)
class SweepJobRecord:
    job_id: str
    campaign_id: str
    state: SweepState  # the table's check constraint holds it to these
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime
    worker: str
    evaluated: int | None
    processed: int
    counts: dict[str, int]
    seconds: float | None
    error: str | None


def _record(row: Any) -> SweepJobRecord:
    mapping = row._mapping
    return SweepJobRecord(**{k: mapping[k] for k in sweep_jobs.c.keys()})  # noqa: SIM118


class SweepJobRepository:
    """Queries of ``sweep_jobs``, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        j = sweep_jobs
        self._create = (
            base.insert(j)
            .on_conflict_do_nothing(
                index_elements=[j.c.campaign_id], index_where=text(ACTIVE_SWEEP)
            )
            .returning(*j.c)
        )
        # the schedule's create (issue 12, item 2): not when a job of the campaign was
        # requested since the given moment, in the same statement as the insert
        recent = (
            select(j.c.job_id)
            .where(
                j.c.campaign_id == bindparam("campaign_id", type_=String()),
                j.c.requested_at >= bindparam("since", type_=UTCDateTime()),
            )
            .exists()
        )
        fields = ("job_id", "campaign_id", "requested_at", "heartbeat_at", "worker")
        row = select(
            *(bindparam(name, type_=j.c[name].type) for name in fields),
            literal("queued", String()),
            literal(0),
            bindparam("counts", type_=JSON()),
        ).where(~recent)
        self._create_due = (
            base.insert(j)
            .from_select([*fields, "state", "processed", "counts"], row)
            .on_conflict_do_nothing(
                index_elements=[j.c.campaign_id], index_where=text(ACTIVE_SWEEP)
            )
            .returning(*j.c)
        )
        self._active = select(j).where(
            j.c.campaign_id == bindparam("campaign_id", type_=String()), j.c.state.in_(ACTIVE)
        )
        self._fail_silent = (
            update(j)
            .where(
                j.c.campaign_id == bindparam("where_campaign", type_=String()),
                j.c.state.in_(ACTIVE),
                j.c.heartbeat_at < bindparam("silent_since", type_=UTCDateTime()),
            )
            .values(
                state="failed",
                finished_at=bindparam("now", type_=UTCDateTime()),
                error=bindparam("error", type_=String()),
            )
        )

    def create(
        self, campaign_id: str, worker: str, now: datetime, *, silent_since: datetime, error: str
    ) -> tuple[SweepJobRecord | None, SweepJobRecord | None]:
        """A queued job for ``campaign_id`` unless one is active: (the new job, the active one).

        First, active jobs whose heartbeat is older than ``silent_since`` (their worker died)
        are marked failed with ``error``, so they no longer block the campaign.
        """
        row = {
            "job_id": uuid.uuid4().hex,
            "campaign_id": campaign_id,
            "state": "queued",
            "requested_at": now,
            "heartbeat_at": now,
            "worker": worker[:200],
            "processed": 0,
            "counts": {},
        }
        with self.base.writing() as conn:
            conn.execute(
                self._fail_silent,
                {
                    "where_campaign": campaign_id,
                    "silent_since": silent_since,
                    "now": now,
                    "error": error,
                },
            )
            created = conn.execute(self._create, row).first()
            if created is not None:
                return _record(created), None
            active = conn.execute(self._active, {"campaign_id": campaign_id}).first()
        return None, None if active is None else _record(active)

    def create_due(
        self,
        campaign_id: str,
        worker: str,
        now: datetime,
        *,
        since: datetime,
        silent_since: datetime,
        error: str,
    ) -> SweepJobRecord | None:
        """``create``, unless a job of the campaign was requested at or after ``since``.

        The schedule of the time-driven campaigns: every worker of every replica asks, the
        statement lets one job through per interval (the check and the insert are one write;
        two at the same moment meet the index of active jobs). None: not due, or one active.
        """
        with self.base.writing() as conn:
            conn.execute(
                self._fail_silent,
                {
                    "where_campaign": campaign_id,
                    "silent_since": silent_since,
                    "now": now,
                    "error": error,
                },
            )
            row = {
                "job_id": uuid.uuid4().hex,
                "campaign_id": campaign_id,
                "requested_at": now,
                "heartbeat_at": now,
                "worker": worker[:200],
                "counts": {},
                "since": since,
            }
            created = conn.execute(self._create_due, row).first()
        return None if created is None else _record(created)

    def update(self, job_id: str, **values: Any) -> None:
        """Set ``values`` (state, heartbeat_at, processed, counts, ...) on the job."""
        with self.base.writing() as conn:
            conn.execute(update(sweep_jobs).where(sweep_jobs.c.job_id == job_id).values(values))

    def report(
        self, job_id: str, now: datetime, processed: int, evaluated: int, counts: Mapping[str, int]
    ) -> None:
        """A running job's progress; doubles as its heartbeat."""
        self.update(
            job_id, heartbeat_at=now, processed=processed, evaluated=evaluated, counts=dict(counts)
        )

    def job(self, campaign_id: str, job_id: str) -> SweepJobRecord | None:
        query = select(sweep_jobs).where(
            sweep_jobs.c.campaign_id == campaign_id, sweep_jobs.c.job_id == job_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _record(row) if row else None

    def recent(self, campaign_id: str, limit: int) -> list[SweepJobRecord]:
        """The campaign's jobs, the latest requested first."""
        query = (
            select(sweep_jobs)
            .where(sweep_jobs.c.campaign_id == campaign_id)
            .order_by(sweep_jobs.c.requested_at.desc(), sweep_jobs.c.job_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query)]
