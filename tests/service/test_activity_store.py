"""The activity store's memory bound: users kept, least recently active forgotten, reported."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.activity.records import StoredEvent
from service.activity.store import ActivityStore
from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def events(users: list[str], start: int = 1, per_user: int = 1) -> Iterator[StoredEvent]:
    n = start
    for user in users:
        for k in range(per_user):
            yield StoredEvent(n, user, f"item-{n % 97}", "view", T0 + timedelta(seconds=n + k))
            n += 1


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_the_least_recently_active_user_is_forgotten_first_and_counted() -> None:
    metrics = Metrics()
    store = ActivityStore(max_users=3, lookback=0, metrics=metrics)
    store.add(events(["a", "b", "c"]))
    store.add(events(["a"], start=10))  # a is active again: b is now the least recent
    store.add(events(["d"], start=20))
    assert store.recent("b") == ()
    assert [len(store.recent(u)) for u in ("a", "c", "d")] == [2, 1, 1]
    assert store.users_held == 3
    assert store.evictions == 1
    assert sample(metrics, "recoffer_activity_users") == 3
    assert sample(metrics, "recoffer_activity_evictions_total") == 1
    assert sample(metrics, "recoffer_activity_bytes_estimated") == store.estimated_bytes()


def test_the_bound_holds_however_many_users_come() -> None:
    metrics = Metrics()
    store = ActivityStore(per_user=5, max_users=50, lookback=0, metrics=metrics)
    users = [f"user-{n}" for n in range(1_000)]
    store.add(events(users, per_user=7))  # 7 events each: 5 kept per user
    assert store.users_held == 50
    assert store.evictions == 950
    assert store.events_held == 50 * 5
    assert all(store.recent(u) for u in users[-50:])
    assert not any(store.recent(u) for u in users[:-50])
    assert sample(metrics, "recoffer_activity_evictions_total") == 950
    assert sample(metrics, "recoffer_activity_users") == 50


@pytest.mark.parametrize("per_user", [1, 20])
def test_estimated_bytes_are_near_what_the_events_take(per_user: int) -> None:
    store = ActivityStore(per_user=50, max_users=100_000, lookback=0)
    users = [f"u-{n:010d}" for n in range(5_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store.add(events(users, per_user=per_user))
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # the ids of seen events are kept too (a bounded window), which the estimate leaves out
    assert 0.5 * measured <= store.estimated_bytes() <= 2 * measured


def test_the_setting_bounds_the_service_and_metrics_report_it(tmp_path: Path) -> None:
    admin = "admin-key-0123456789abcd"
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        admin_keys=[admin],
        activity_max_users=2,
        event_poll_seconds=0.05,
        access_log=False,
    )
    with TestClient(create_app(settings)) as client:
        batch = [{"user_id": f"shopper-{n}", "type": "view", "item_id": "i1"} for n in range(5)]
        posted = client.post("/v1/events", json={"events": batch}, headers={"X-API-Key": admin})
        assert posted.status_code == 200, posted.text
        text = client.get("/metrics", headers={"X-API-Key": admin}).text
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("recoffer_activity")
    )
    assert float(lines["recoffer_activity_users"]) == 2
    assert float(lines["recoffer_activity_evictions_total"]) == 3
    assert float(lines["recoffer_activity_bytes_estimated"]) > 0


def test_the_catalogue_poll_reads_again_behind_the_newest_change_seen() -> None:
    """A hide committed after a later-stamped change (PostgreSQL, or a replica whose clock runs
    behind) is still read by the next poll; rows read again that changed nothing are ignored."""
    from service.activity.records import ItemRecord
    from service.activity.store import CATALOGUE_LOOKBACK

    store = ActivityStore(per_user=10)
    assert store.catalogue_since() is None  # first contact: everything
    newest = datetime(2026, 12, 1, 12, tzinfo=UTC)
    shown = ItemRecord("a", None, "c1", True, newest)
    assert store.update_catalogue([shown]) == [shown]
    since = store.catalogue_since()
    assert since == newest - CATALOGUE_LOOKBACK
    late = ItemRecord("b", None, "c1", True, newest - timedelta(seconds=5), status="hidden")
    assert since <= late.updated_at  # the poll's WHERE updated_at >= since takes it
    assert store.update_catalogue([shown, late]) == [late]
    assert "b" in store.unservable
    assert store.catalogue_watermark == newest
