"""A model root with two versions (the second current) and a service on it, on SQLite and
PostgreSQL; impressions, clicks and attributions written straight into their tables."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from service.app import create_app
from service.artifact import ModelStore
from service.settings import Settings
from service.state import AppState
from service.tables import rec_attributions, rec_clicks, rec_impressions
from training.data.formats import Purchases
from training.models import ModelParams
from training.pipeline import TrainConfig, run

KEYS = {
    "frontend": "frontend-key-0123456789",
    "marketing": "marketing-key-0123456789",
    "admin": "admin-key-0123456789abc",
}

FAST = ModelParams(factors=8, iterations=5, threads=1)
ADMIN = {"X-API-Key": KEYS["admin"]}
MARKETING = {"X-API-Key": KEYS["marketing"]}
FRONTEND = {"X-API-Key": KEYS["frontend"]}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tiny_purchases: Purchases) -> Path:
    root = tmp_path_factory.mktemp("experiment-models")
    for _ in range(2):
        run(TrainConfig(model_dir=root, params=FAST, force=True), purchases=tiny_purchases)
    return root


@pytest.fixture
def models(tmp_path: Path, two_versions: Path) -> Path:
    """A copy of the two-version root (a test may promote)."""
    shutil.copytree(two_versions, tmp_path / "models")
    return tmp_path / "models"


def service_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_dir": tmp_path / "models",
        "database_url": database_url,
        "frontend_keys": [KEYS["frontend"]],
        "marketing_keys": [KEYS["marketing"]],
        "admin_keys": [KEYS["admin"]],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "offer_metrics_seconds": 0,
        "campaign_schedule_seconds": 0,
        "access_log": False,
        "experiment_poll_seconds": 0,
        "experiment_guard_seconds": 0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def api(tmp_path: Path, models: Path, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database_url))) as client:
        yield client


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
    return state


def versions(root: Path) -> tuple[str, str]:
    """(the previous version, the current one)."""
    store = ModelStore(root)
    current, previous = store.current(), store.previous()
    assert current
    assert previous
    return previous, current


def show(
    engine: Engine,
    experiment_id: str,
    arm: str,
    *,
    impressions: int,
    users: int,
    clicks: int = 0,
    purchases: int = 0,
    version: str = "v",
) -> None:
    """``impressions`` shown to ``users`` users of the arm; the first ``clicks`` clicked and
    the first ``purchases`` bought (each its own list and item)."""
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    rows = []
    for i in range(impressions):
        n = next(_ids)
        rows.append(
            {
                "request_id": f"r{n}",
                "user_id": f"{arm}-{experiment_id}-{i % users}",
                "item_id": f"i{n}",
                "position": 0,
                "placement": "home",
                "model_version": version,
                "recipe": "all",
                "source": "model",
                "experiment_id": experiment_id,
                "arm": arm,
                "served_at": now,
                "ts": now,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), 500):
            conn.execute(insert(rec_impressions), rows[start : start + 500])
        if clicks:
            conn.execute(insert(rec_clicks), rows[:clicks])
        if purchases:
            conn.execute(
                insert(rec_attributions),
                [
                    {
                        "event_id": next(_ids),
                        "kind": "purchase",
                        "via": "click",
                        "request_id": r["request_id"],
                        "user_id": r["user_id"],
                        "item_id": r["item_id"],
                        "placement": "home",
                        "model_version": version,
                        "recipe": "all",
                        "source": "model",
                        "experiment_id": experiment_id,
                        "arm": arm,
                        "quantity": 1,
                        "revenue": Decimal("10.00"),
                        "currency": "EUR",
                        "ts": now,
                    }
                    for r in rows[:purchases]
                ],
            )
