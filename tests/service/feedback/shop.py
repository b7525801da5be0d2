"""What the feedback tests share: an app on a fresh database (SQLite and PostgreSQL), list ids
it signs, the events they post."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from benchmarks.harness import ManualClock
from service.app import create_app
from service.feedback.token import ServedList
from service.settings import Settings
from service.state import AppState

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}
A = {"X-API-Key": ADMIN}
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Shop:
    """A running app, its clock, and helpers to mint list ids and read the tables."""

    def __init__(self, client: TestClient, clock: ManualClock) -> None:
        self.client = client
        self.clock = clock
        self._ids = itertools.count(1)

    @property
    def state(self) -> AppState:
        state: AppState = self.client.app.state.recoffer  # type: ignore[attr-defined]
        return state

    @property
    def engine(self) -> Engine:
        return self.state.repository.engine

    def list_id(
        self,
        user_id: str,
        sources: tuple[str, ...] = ("model", "model", "session", "popular"),
        *,
        request_id: str | None = None,
        version: str | None = "v1",
        recipe: str = "all",
        experiment_id: str | None = None,
        arm: str | None = None,
    ) -> str:
        served = ServedList(
            request_id="",
            model_version=version,
            recipe=recipe,
            sources=sources,
            served_at=self.clock(),
            experiment_id=experiment_id,
            arm=arm,
        )
        rid = request_id or f"r{next(self._ids):06d}"
        return self.state.recommendations.list_ids.issue(rid, user_id, served)

    def post(self, *events: dict[str, Any], key: dict[str, str] = F) -> Any:
        body: dict[str, Any] = {"events": list(events)} if len(events) != 1 else events[0]
        return self.client.post("/v1/events", json=body, headers=key)

    def rows(self, table: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            order = list(table.primary_key.columns)
            return [dict(r._mapping) for r in conn.execute(select(table).order_by(*order))]

    def later(self, **delta: float) -> datetime:
        self.clock.advance(**delta)
        return self.clock()


def make_shop(database_url: str, tmp_path: Path, **overrides: Any) -> Iterator[Shop]:
    clock = ManualClock(START)
    options: dict[str, Any] = {
        "model_dir": tmp_path / "models",
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "access_log": False,
    }
    settings = Settings(**{**options, **overrides})
    with TestClient(create_app(settings, clock=clock)) as client:
        yield Shop(client, clock)


def impression(user: str, item: str, list_id: str, position: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "impression",
        "user_id": user,
        "item_id": item,
        "request_id": list_id,
        "placement": "home",
        "position": position,
        **extra,
    }


def click(user: str, item: str, list_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "click", "user_id": user, "item_id": item, "request_id": list_id, **extra}


def purchase(user: str, item: str, **extra: Any) -> dict[str, Any]:
    return {"type": "purchase", "user_id": user, "item_id": item, **extra}


def at(moment: datetime) -> str:
    return moment.isoformat()
