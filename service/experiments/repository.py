"""Queries of ``rec_experiments``: at most one running (a partial unique index), every end a
conditional UPDATE.

A start is an INSERT ... ON CONFLICT DO NOTHING: of two starts at once, the index lets one in
and the other learns it inserted nothing. An end (stop, guard, promotion) is
``UPDATE ... WHERE id = ? AND status = 'running'``: of two workers acting at once (every worker
runs the guard), one changes the row and the other changes nothing, on SQLite (one writer) and
PostgreSQL (the WHERE re-checked on the locked row) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update

from service.activity.repository import Repository
from service.feedback.figures import Tally, tally
from service.tables import rec_experiments

Status = Literal["running", "stopped", "promoted"]


@dataclass(frozen=True)
class Experiment:
    """One experiment's row."""

    id: str
    name: str
    status: Status
    control_version: str
    control_recipe: str | None
    candidate_version: str
    candidate_recipe: str | None
    share: float
    settings: dict[str, Any]
    created_by: str
    started_at: datetime
    ended_at: datetime | None
    outcome: dict[str, Any] | None
    version: int

    @property
    def running(self) -> bool:
        return self.status == "running"


def _experiment(row: Any) -> Experiment:
    m = row._mapping
    return Experiment(**{k: m[k] for k in Experiment.__dataclass_fields__})


class ExperimentRepository:
    """The SQL of experiments, and their impressions' tallies per arm."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        e = rec_experiments
        self._insert = base.insert(e).on_conflict_do_nothing().returning(e.c.id)

    def create(self, row: dict[str, Any]) -> bool:
        """Insert a running experiment; False when one is running already (nothing written)."""
        with self.base.writing() as conn:
            return (
                conn.execute(self._insert, dict(row, status="running", version=1)).first()
                is not None
            )

    def get(self, experiment_id: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(rec_experiments).where(rec_experiments.c.id == experiment_id)
            ).first()
        return None if row is None else _experiment(row)

    def running(self) -> Experiment | None:
        """The running experiment, if any (the partial unique index keeps it to one)."""
        e = rec_experiments
        with self.engine.connect() as conn:
            row = conn.execute(select(e).where(e.c.status == "running")).first()
        return None if row is None else _experiment(row)

    def all(self, limit: int = 100) -> list[Experiment]:
        """The newest ``limit`` experiments, newest first."""
        e = rec_experiments
        query = select(e).order_by(e.c.started_at.desc(), e.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_experiment(r) for r in conn.execute(query)]

    def end(
        self, experiment_id: str, status: Status, outcome: dict[str, Any], at: datetime
    ) -> bool:
        """End the experiment if it is still running; False when it was not (nothing written)."""
        e = rec_experiments
        statement = (
            update(e)
            .where(e.c.id == experiment_id, e.c.status == "running")
            .values(status=status, outcome=outcome, ended_at=at, version=e.c.version + 1)
        )
        with self.base.writing() as conn:
            return conn.execute(statement).rowcount == 1

    def tallies(self, experiment_id: str) -> list[Tally]:
        """Impressions, users, clicks, carts, purchases per arm (``feedback.figures.tally``)."""
        with self.engine.connect() as conn:
            return tally(conn, by=("arm",), experiment_id=experiment_id)
