"""Database faults: recommendations keep being served, writes fail cleanly (503), both recover."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from benchmarks.harness import TcpProxy
from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.settings import Settings
from service.tables import events

KEY = "frontend-key-0123456789"
H = {"X-API-Key": KEY}


def _client(model_dir: Path, url: str, timeout: float) -> TestClient:
    settings = Settings(
        model_dir=model_dir,
        database_url=url,
        frontend_keys=[KEY],
        db_timeout_seconds=timeout,
        event_poll_seconds=0.05,
        access_log=False,
    )
    return TestClient(create_app(settings))


def _known_user(root: Path) -> str:
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    return str(artifact.arrays["user_ids"][0])


def _event(n: int) -> dict[str, str]:
    return {"user_id": "w", "type": "view", "item_id": f"i{n}", "client_event_id": f"e{n}"}


def test_a_locked_sqlite_database_gives_503_not_500(small_model_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with _client(small_model_root, f"sqlite:///{path}", timeout=0.3) as client:
        assert client.post("/v1/events", json=_event(1), headers=H).status_code == 200
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            r = client.post("/v1/events", json=_event(2), headers=H)
            assert r.status_code == 503
            assert r.json()["error"] == "database_unavailable"
            assert r.headers["retry-after"]
            recs = client.get(
                f"/v1/users/{_known_user(small_model_root)}/recommendations", headers=H
            )
            assert recs.status_code == 200
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert client.post("/v1/events", json=_event(2), headers=H).json()["accepted"] == 1


@pytest.fixture
def proxied_postgres(fresh_postgres: str) -> Iterator[tuple[str, TcpProxy, str]]:
    url = make_url(fresh_postgres)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield (
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
            proxy,
            fresh_postgres,
        )
    finally:
        proxy.stop()


def test_postgres_outage_keeps_recommendations_and_loses_no_accepted_event(
    small_model_root: Path, proxied_postgres: tuple[str, TcpProxy, str]
) -> None:
    url, proxy, direct = proxied_postgres
    user = _known_user(small_model_root)
    accepted = 0
    with _client(small_model_root, url, timeout=1.0) as client:
        for n in range(5):
            accepted += client.post("/v1/events", json=_event(n), headers=H).json()["accepted"]
        proxy.cut()  # the path to PostgreSQL breaks: connections reset, new ones dropped
        for n in range(5, 10):
            r = client.post("/v1/events", json=_event(n), headers=H)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "database_unavailable"
            assert client.get(f"/v1/users/{user}/recommendations", headers=H).status_code == 200
        # counted for the alert on event write failures (issue 13, item 4)
        failures = 'recoffer_event_write_failures_total{reason="database_unavailable"} 5.0'
        assert failures in client.get("/metrics").text
        proxy.restore()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            status = client.post("/v1/events", json=_event(10), headers=H).status_code
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        accepted += 1
        for n in range(11, 15):
            accepted += client.post("/v1/events", json=_event(n), headers=H).json()["accepted"]
    engine = create_engine(direct)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
    engine.dispose()
    assert stored == accepted == 10
