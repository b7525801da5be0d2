"""Sessions in Redis (issue 15, item 5): written at ingest, read per request by any replica,
bounded and expiring, erased with the user, and a Redis outage never a failed request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.activity.records import Activity, StoredEvent
from service.activity.sessions import RedisSessions, decode, encode
from service.activity.store import ActivityStore
from service.app import create_app
from service.clock import utc_now
from service.metrics import Metrics
from service.settings import Settings

FRONTEND = "frontend-key-sessions-0123456789"
ADMIN = "admin-key-sessions-0123456789ab"
F = {"X-API-Key": FRONTEND}
A = {"X-API-Key": ADMIN}
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every call fails at once
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _rows(user: str, n: int, *, start: int = 0) -> list[StoredEvent]:
    return [
        StoredEvent(k, user, f"item-{k}", "view", T0 + timedelta(seconds=k))
        for k in range(start, start + n)
    ]


def _sessions(url: str, prefix: str, **options: Any) -> RedisSessions:
    defaults: dict[str, Any] = {
        "prefix": prefix,
        "per_user": 5,
        "ttl_seconds": 60,
        "timeout_seconds": 0.5,
        "retry_seconds": 5,
        "memory": ActivityStore(per_user=5),
        "metrics": Metrics(),
    }
    return RedisSessions(url, **{**defaults, **options})


def _key(sessions: RedisSessions, user_id: str) -> str:
    key = sessions.key(user_id)
    assert key is not None
    return key


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_an_entry_keeps_the_exact_time_and_any_item_id() -> None:
    event = Activity(item_id="a|b|c", type="add_to_cart", ts=T0 + timedelta(microseconds=7))
    assert decode(encode(event)) == event
    assert decode(encode(event).encode()) == event


def test_a_batch_is_kept_newest_last_trimmed_and_expiring(
    redis_server: str, redis_prefix: str
) -> None:
    sessions = _sessions(redis_server, redis_prefix)
    assert sessions.write(_rows("u1", 3)) is True
    assert sessions.write(_rows("u1", 4, start=3)) is True  # 7 in all, 5 kept
    recent = sessions.recent("u1")
    # the newest five, oldest first, as ActivityStore.recent gives them
    assert [a.item_id for a in recent] == [f"item-{k}" for k in range(2, 7)]
    assert recent[-1] == Activity("item-6", "view", T0 + timedelta(seconds=6))
    ttl = sessions.client.ttl(_key(sessions, "u1"))
    assert 0 < int(ttl) <= 60  # type: ignore[arg-type]
    assert sessions.recent("nobody") == ()
    assert sessions.forget("u1") == 1
    assert sessions.recent("u1") == ()
    assert sessions.forget("u1") == 0


def test_one_batch_longer_than_the_bound_keeps_its_newest(
    redis_server: str, redis_prefix: str
) -> None:
    sessions = _sessions(redis_server, redis_prefix)
    sessions.write([*_rows("u2", 8), *_rows("other", 1)])
    assert [a.item_id for a in sessions.recent("u2")] == [f"item-{k}" for k in range(3, 8)]
    assert [a.item_id for a in sessions.recent("other")] == ["item-0"]


def test_seeding_merges_under_pushed_lists_and_skips_sessions_past_their_window(
    redis_server: str, redis_prefix: str
) -> None:
    sessions = _sessions(redis_server, redis_prefix, ttl_seconds=3600)
    sessions.write(_rows("has-list", 1, start=100))  # newer events pushed since a restart
    old = [StoredEvent(1, "gone", "x", "view", T0 - timedelta(hours=2))]
    rows = [*old, *_rows("has-list", 3), *_rows("fresh", 7)]
    assert sessions.seed(rows, now=T0 + timedelta(minutes=10)) == 2
    # the database's older events completed the list under the one pushed meanwhile
    assert [a.item_id for a in sessions.recent("has-list")] == [
        "item-0",
        "item-1",
        "item-2",
        "item-100",
    ]
    assert [a.item_id for a in sessions.recent("fresh")] == [f"item-{k}" for k in range(2, 7)]
    assert sessions.recent("gone") == ()
    ttl = int(sessions.client.ttl(_key(sessions, "fresh")))  # type: ignore[arg-type]
    assert 2990 < ttl <= 3600 - 594  # an hour after the last event (T0 + 6 s), not after now
    assert sessions.seed(_rows("fresh-2", 1), now=T0) == 0  # the marker is there: not again
    assert sessions.client.exists(sessions.marker)
    assert not sessions.client.exists(sessions.seeding)  # the fill's lock released
    assert not sessions.needs_seed()


def test_an_unreachable_redis_reads_the_database_then_memory_and_is_counted() -> None:
    memory = ActivityStore(per_user=5)
    memory.add(_rows("u3", 2), from_tail=False)
    from_db = (Activity("db-item", "view", T0),)
    now = [100.0]
    calls: list[str] = []

    def database(user_id: str, limit: int) -> tuple[Activity, ...]:
        calls.append(user_id)
        return from_db

    sessions = _sessions(NOWHERE, "x", memory=memory, database=database, monotonic=lambda: now[0])
    assert sessions.recent("u3") == from_db
    # a failed read does not stop writes: tried, failed, then skipped within retry_seconds
    assert sessions.write(_rows("u3", 1)) is False
    assert sessions.write(_rows("u3", 1, start=1)) is False
    assert sessions.is_stale("u3")  # read from the database until repaired
    metrics = sessions.metrics
    assert metrics is not None
    assert _count(metrics, "recoffer_session_store_errors_total", op="read") == 1
    assert _count(metrics, "recoffer_session_store_errors_total", op="write") == 1
    assert _count(metrics, "recoffer_session_store_errors_total", op="write_skipped") == 1
    assert _count(metrics, "recoffer_session_fallbacks_total", source="database") == 1
    assert not sessions.available  # Redis left alone for retry_seconds: one failure, not many
    now[0] += 6
    assert sessions.available

    def broken(user_id: str, limit: int) -> tuple[Activity, ...]:
        raise OSError("database down too")

    sessions.database = broken
    assert [a.item_id for a in sessions.recent("u3")] == ["item-0", "item-1"]
    assert _count(metrics, "recoffer_session_fallbacks_total", source="memory") == 1
    assert sessions.forget("u3") is None


def test_a_redis_that_never_answers_costs_one_timeout_then_is_left_alone() -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never replies
    port = silent.getsockname()[1]
    from_db = (Activity("db-item", "view", T0),)
    try:
        sessions = _sessions(
            f"redis://127.0.0.1:{port}/0", "x", timeout_seconds=0.2, database=lambda u, n: from_db
        )
        started = time.monotonic()
        assert sessions.recent("u6") == from_db
        first = time.monotonic() - started
        started = time.monotonic()
        assert sessions.recent("u6") == from_db  # within retry_seconds: Redis not asked
        again = time.monotonic() - started
    finally:
        silent.close()
    assert 0.15 <= first < 2.0
    assert again < 0.1


def test_the_async_reads_fall_back_the_same_way() -> None:
    import asyncio

    from_db = (Activity("db-item", "view", T0),)
    sessions = _sessions(NOWHERE, "x", database=lambda u, n: from_db)

    async def run() -> tuple[Any, ...]:
        one = await sessions.arecent("u4")
        many = await sessions.arecent_many(["u4", "u5"])
        wrote = await sessions.awrite(_rows("u4", 1))
        await sessions.aclose()
        return one, many, wrote

    one, many, wrote = asyncio.run(run())
    assert one == from_db
    assert many == {"u4": from_db, "u5": from_db}
    assert wrote is False


# --- two apps, one database, one Redis ------------------------------------------------------


def _app(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 3600,  # no tail in these tests: whatever B sees came by Redis
        "offer_metrics_seconds": 0,
        "access_log": False,
    }
    return TestClient(create_app(Settings(**{**options, **overrides}), clock=utc_now))


@pytest.fixture
def two_apps(
    small_model_root: Path, tmp_path: Path, redis_server: str, redis_prefix: str
) -> Iterator[tuple[TestClient, TestClient]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    redis = {"redis_url": redis_server, "redis_prefix": redis_prefix}
    with _app(small_model_root, url, **redis) as a, _app(small_model_root, url, **redis) as b:
        yield a, b


def _items(client: TestClient, n: int) -> list[str]:
    model = client.app.state.recoffer.models.current.model  # type: ignore[attr-defined]
    return [str(label) for label in model.item_labels[:n]]


def _view(client: TestClient, user: str, items: list[str]) -> None:
    events = [{"user_id": user, "type": "view", "item_id": i} for i in items]
    r = client.post("/v1/events", json={"events": events}, headers=F)
    assert r.status_code == 200, r.text


def test_an_event_ingested_on_one_app_is_used_by_the_other_at_once(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    user = "visitor-redis-1"
    before = b.get(f"/v1/users/{user}/recommendations", headers=F).json()
    assert before["source"] == "popular"
    viewed = _items(a, 3)
    _view(a, user, viewed)
    after = b.get(f"/v1/users/{user}/recommendations", params={"limit": 5}, headers=F).json()
    assert after["source"] == "session", after  # folded in from what A took in
    # B's own memory holds nothing of it: the session came from Redis
    assert b.app.state.recoffer.activity.recent(user) == ()  # type: ignore[attr-defined]
    assert a.app.state.recoffer.activity.users_held <= 1  # type: ignore[attr-defined]


def test_an_empty_redis_is_filled_once_from_the_database_at_start(
    small_model_root: Path, tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    from service.activity.records import NewEvent
    from service.activity.repository import Repository
    from service.db import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'before.db'}"
    with _app(small_model_root, url) as embedded:  # the events of a deployment without Redis
        items = _items(embedded, 3)
    engine = make_engine(url, timeout_seconds=5)
    migrate(engine)
    now = utc_now()
    Repository(engine).add_events(
        [
            NewEvent("visitor-before", "view", now - timedelta(minutes=3 - k), item_id=i)
            for k, i in enumerate(items)
        ]
    )
    engine.dispose()
    redis = {"redis_url": redis_server, "redis_prefix": redis_prefix}
    with _app(small_model_root, url, **redis) as a, _app(small_model_root, url, **redis) as b:
        sessions = b.app.state.recoffer.sessions  # type: ignore[attr-defined]
        # filled once (the second app found the marker): three events, oldest first
        assert [e.item_id for e in sessions.recent("visitor-before")] == items
        assert sessions.client.exists(sessions.marker)
        assert sessions.seed(_rows("visitor-late", 2), now=T0) == 0  # the marker: not again
        assert sessions.recent("visitor-late") == ()
        r = b.get("/v1/users/visitor-before/recommendations", headers=F)
        assert r.json()["source"] == "session"
        ttl = int(sessions.client.ttl(_key(sessions, "visitor-before")))
        assert 0 < ttl <= a.app.state.recoffer.settings.session_ttl_seconds  # type: ignore[attr-defined]


def test_erasure_deletes_the_redis_session_and_export_shows_it(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    user = "visitor-redis-2"
    _view(a, user, _items(a, 2))
    exported = b.get(f"/v1/users/{user}/export", headers=A).json()
    assert len(exported["recent_activity"]) == 2  # what Redis holds about them
    sessions = b.app.state.recoffer.sessions  # type: ignore[attr-defined]
    assert sessions.held(user)
    r = b.delete(f"/v1/users/{user}", headers=A)
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["redis_session"] == 1
    assert not sessions.held(user)
    assert a.get(f"/v1/users/{user}/export", headers=A).json()["recent_activity"] == []


def test_a_redis_outage_answers_every_request_from_the_database(
    small_model_root: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    with _app(small_model_root, url, redis_url=NOWHERE) as c:
        user = "visitor-redis-3"
        _view(c, user, _items(c, 3))  # stored; the Redis write is skipped and counted
        r = c.get(f"/v1/users/{user}/recommendations", headers=F)
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "session"  # the database's events, folded in
        r = c.post(f"/v1/users/{user}/recommendations", json={"limit": 4}, headers=F)
        assert r.status_code == 200, r.text
        r = c.delete(f"/v1/users/{user}", headers=A)
        assert r.status_code == 200, r.text
        # not "0 deleted": the list may be there, and its delete is retried at each poll
        assert r.json()["pending"] == ["redis_session"]
        assert "redis_session" not in r.json()["removed"]
        metrics = c.get("/metrics").text
    assert 'recoffer_session_fallbacks_total{source="database"}' in metrics
    # the fill at start failed first, so the write was skipped (its user marked stale)
    assert 'recoffer_session_store_errors_total{op="seed"} 1.0' in metrics
    assert 'recoffer_session_store_errors_total{op="write_skipped"} 1.0' in metrics


def test_without_redis_the_worker_holds_the_sessions_as_before(
    small_model_root: Path, tmp_path: Path
) -> None:
    with _app(small_model_root, f"sqlite:///{tmp_path / 'embedded.db'}") as c:
        state = c.app.state.recoffer  # type: ignore[attr-defined]
        assert state.sessions is None
        assert state.activity.tail_sessions
        _view(c, "visitor-embedded", _items(c, 2))
        assert len(state.activity.recent("visitor-embedded")) == 2
        r = c.get("/v1/users/visitor-embedded/recommendations", headers=F)
        assert r.json()["source"] == "session"


# --- review of issue 15: writes after a failure, an emptied Redis, erasure, bad entries -------


def test_a_failed_read_does_not_skip_the_next_write(redis_server: str, redis_prefix: str) -> None:
    now = [0.0]
    sessions = _sessions(redis_server, redis_prefix, monotonic=lambda: now[0])
    sessions.write(_rows("u7", 1))
    sessions._failed("read", TimeoutError())  # one blip on a read
    assert sessions.write(_rows("u7", 1, start=1)) is True  # still written
    now[0] += 6
    assert [a.item_id for a in sessions.recent("u7")] == ["item-0", "item-1"]
    assert not sessions.is_stale("u7")


def test_a_skipped_write_is_read_from_the_database_then_repaired_into_redis(
    redis_server: str, redis_prefix: str
) -> None:
    now = [0.0]
    stored: list[StoredEvent] = []

    def database(user_id: str, limit: int) -> list[Activity]:
        mine = [Activity(r.item_id or "", r.type, r.ts) for r in stored if r.user_id == user_id]
        return mine[-limit:]

    sessions = _sessions(redis_server, redis_prefix, database=database, monotonic=lambda: now[0])

    def accept(rows: list[StoredEvent]) -> bool:
        stored.extend(rows)  # the database commit comes first
        return sessions.write(rows)

    assert accept(_rows("u8", 1)) is True
    sessions._failed("write", TimeoutError())  # a write failed: writes wait retry_seconds
    assert accept(_rows("u8", 1, start=1)) is False  # skipped, the user marked stale
    assert sessions.is_stale("u8")
    now[0] += 6
    # Redis answers again but lacks item-1: the read goes to the database until repaired
    assert [a.item_id for a in sessions.recent("u8")] == ["item-0", "item-1"]
    assert accept(_rows("u8", 1, start=2)) is True  # a newer event pushed before the repair
    assert sessions.repair() == 1
    assert not sessions.is_stale("u8")
    raw = sessions.client.lrange(_key(sessions, "u8"), 0, -1)
    assert [decode(e).item_id for e in raw] == ["item-2", "item-1", "item-0"]  # type: ignore[union-attr]
    assert [a.item_id for a in sessions.recent("u8")] == ["item-0", "item-1", "item-2"]


def test_too_many_stale_users_ask_for_a_full_fill(redis_server: str, redis_prefix: str) -> None:
    sessions = _sessions(redis_server, redis_prefix, max_stale=2)
    assert sessions.seed(_rows("a", 1), now=T0) == 1
    assert not sessions.needs_seed()
    sessions._mark_stale(["x", "y", "z"])
    assert sessions.stale_users == 2
    assert sessions.needs_seed()  # the marker deleted: the leader fills every user again


def test_a_redis_restarted_empty_is_filled_again_under_the_lists_pushed_since(
    redis_server: str, redis_prefix: str
) -> None:
    sessions = _sessions(redis_server, redis_prefix, ttl_seconds=3600)
    rows = _rows("u9", 3)
    assert sessions.seed(rows, now=T0) == 1
    for key in sessions.client.scan_iter(f"{redis_prefix}:*"):  # Redis restarted empty
        sessions.client.delete(key)
    later = _rows("u9", 1, start=3)
    sessions.write(later)  # an event pushed before anyone notices
    assert sessions.needs_seed()
    sessions.client.set(sessions.seeding, "1", ex=60)  # another worker is filling
    assert sessions.seed([*rows, *later], now=T0) == 0
    assert sessions.needs_seed()  # the marker only after a complete fill
    sessions.client.delete(sessions.seeding)
    assert sessions.seed([*rows, *later], now=T0) == 1
    assert [a.item_id for a in sessions.recent("u9")] == [f"item-{k}" for k in range(4)]
    assert not sessions.needs_seed()


def test_lists_are_named_by_the_tombstone_hash_and_erased_users_never_written(
    redis_server: str, redis_prefix: str
) -> None:
    from service.privacy.tombstones import Tombstones, user_hash

    key = b"k" * 32
    tombstones = Tombstones(key)
    sessions = _sessions(redis_server, redis_prefix, tombstones=tombstones)
    sessions.write(_rows("alice", 2))
    name = _key(sessions, "alice")
    assert name == f"{redis_prefix}:session:{user_hash(key, 'alice')}"
    assert sessions.held("alice")
    assert all(b"alice" not in k for k in sessions.client.scan_iter(f"{redis_prefix}:*"))
    hashed = user_hash(key, "alice")
    assert sessions.forget_hashes([hashed])  # any worker, knowing only the tombstone
    assert not sessions.held("alice")
    tombstones.add([hashed])
    assert sessions.write(_rows("alice", 1, start=5)) is True  # nothing to push for her
    assert not sessions.held("alice")
    assert sessions.seed([*_rows("alice", 3), *_rows("bob", 1)], now=T0) == 1  # bob only
    assert not sessions.held("alice")
    assert sessions.held("bob")
    sessions.client.lpush(name, encode(Activity("x", "view", T0)))
    assert sessions.recent("alice") == ()  # erased: Redis not even read


def test_a_malformed_entry_is_skipped_and_counted(redis_server: str, redis_prefix: str) -> None:
    sessions = _sessions(redis_server, redis_prefix)
    sessions.write(_rows("u10", 1))
    sessions.client.lpush(_key(sessions, "u10"), "garbage", b"\xff|x|y", "view|notanumber|i")
    assert [a.item_id for a in sessions.recent("u10")] == ["item-0"]
    assert sessions.metrics is not None
    assert _count(sessions.metrics, "recoffer_session_store_errors_total", op="malformed") == 3


def test_the_clients_pools_are_bounded_and_database_fallbacks_capped() -> None:
    import threading

    import redis

    entered, release = threading.Event(), threading.Event()
    from_db = (Activity("db-item", "view", T0),)

    def slow(user_id: str, limit: int) -> tuple[Activity, ...]:
        entered.set()
        release.wait(5)
        return from_db

    memory = ActivityStore(per_user=5)
    memory.add(_rows("u11", 1), from_tail=False)
    sessions = _sessions(
        NOWHERE, "x", database=slow, memory=memory, max_connections=3, max_fallbacks=1
    )
    assert isinstance(sessions.client.connection_pool, redis.BlockingConnectionPool)
    assert sessions.client.connection_pool.max_connections == 3
    assert sessions.aclient.connection_pool.max_connections == 3
    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(sessions.recent("u11")))
    worker.start()
    assert entered.wait(5)
    # one database read at a time: the next answers from this worker's memory at once
    assert [a.item_id for a in sessions.recent("u11")] == ["item-0"]
    release.set()
    worker.join(5)
    assert first == [from_db]


def test_every_worker_deletes_an_erased_users_list_when_it_reads_the_tombstone(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    user = "visitor-redis-4"
    _view(a, user, _items(a, 2))
    r = a.delete(f"/v1/users/{user}", headers=A)
    assert r.json()["removed"]["redis_session"] == 1
    assert r.json()["pending"] == []
    state = b.app.state.recoffer  # type: ignore[attr-defined]
    # an event B accepted before it knew: pushed after A's delete, the list is back
    state.sessions.write([StoredEvent(10**6, user, "late-item", "view", utc_now())])
    assert state.sessions.held(user)
    state.privacy.refresh()  # B's next poll reads the tombstone: B deletes the list by hash
    assert not state.sessions.held(user)
    state.sessions.write([StoredEvent(10**6 + 1, user, "later", "view", utc_now())])
    assert not state.sessions.held(user)  # never pushed again once the tombstone is known
    for client in (a, b):
        assert client.get(f"/v1/users/{user}/export", headers=A).json()["recent_activity"] == []


def test_the_leader_fills_a_redis_restarted_empty_while_the_apps_run(
    small_model_root: Path, tmp_path: Path, redis_server: str, redis_prefix: str
) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    options = {"redis_url": redis_server, "redis_prefix": redis_prefix, "event_poll_seconds": 0.2}
    with _app(small_model_root, url, **options) as a, _app(small_model_root, url, **options) as b:
        user = "visitor-redis-5"
        viewed = _items(a, 3)
        _view(a, user, viewed)
        sessions = b.app.state.recoffer.sessions  # type: ignore[attr-defined]
        assert [e.item_id for e in sessions.recent(user)] == viewed
        for key in sessions.client.scan_iter(f"{redis_prefix}:session*"):  # restarted empty
            sessions.client.delete(key)
        assert sessions.recent(user) == ()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sessions.client.exists(sessions.marker):
            time.sleep(0.1)
        assert sessions.client.exists(sessions.marker)  # the leader noticed and filled again
        assert [e.item_id for e in sessions.recent(user)] == viewed


def test_a_coupon_ranked_for_a_view_uses_the_session_read_for_it(
    two_apps: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_apps
    state = a.app.state.recoffer  # type: ignore[attr-defined]
    engine = state.auto_offers.engine
    handed: list[Any] = []
    from types import SimpleNamespace

    def evaluate(user_id: str, campaign_id: str, recent: Any = None) -> Any:
        handed.append(recent)
        return SimpleNamespace(decision="pending")

    monkeypatch.setattr(engine, "evaluate", evaluate)
    campaign = next(iter(engine.campaigns.values()))
    on_view = campaign.model_copy(update={"evaluate_on_view": True, "min_views": 1})
    monkeypatch.setattr(state.auto_offers, "campaigns", [on_view])
    user = "visitor-redis-6"
    viewed = _items(a, 6)
    _view(a, user, viewed)
    deadline = time.monotonic() + 5
    while not handed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handed, "no evaluation on the view"
    assert [e.item_id for e in handed[0]] == viewed  # the session read at ingest, handed down
    recent = handed[0]

    def read_again(user_id: str) -> Any:
        raise AssertionError("the session was read again")

    monkeypatch.setattr(state.sessions, "recent", read_again)
    served = state.recommendations
    assert sorted(served.rank(user, viewed, recent)) == sorted(viewed)
    assert len(served.top_items(user, 3, recent)) == 3
