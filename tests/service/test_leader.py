"""One leader for the time-driven jobs (issue 15, item 5): with two instances on one Redis or
one PostgreSQL, a job runs once per period, and moves to the other when the leader stops
(gracefully: at its next round; crashed: when its lock expires or its connection ends)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.clock import utc_now
from service.db import make_engine
from service.leader import Leader, PostgresAdvisoryLock, RedisLock, advisory_key, build_leader
from service.settings import Settings

PERIOD = 0.1  # the job's period in the timed test
TTL = 0.9  # the lock's time to live there: renewed every 0.3 s


def _redis_leader(url: str, prefix: str, ttl: float = TTL) -> Leader:
    import redis.asyncio

    return Leader(RedisLock(redis.asyncio.Redis.from_url(url), prefix=prefix, ttl_seconds=ttl), ttl)


async def _job_rounds(leaders: dict[str, Leader], seconds: float) -> list[list[str]]:
    """Every PERIOD each instance's job loop looks; returns who ran in each period."""
    rounds: list[list[str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rounds.append([name for name, leader in leaders.items() if leader.held])
        await asyncio.sleep(PERIOD)
    return rounds


def test_two_instances_on_redis_run_the_job_once_per_period_and_hand_over(
    redis_server: str, redis_prefix: str
) -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]], list[list[str]], float]:
        a, b = _redis_leader(redis_server, redis_prefix), _redis_leader(redis_server, redis_prefix)
        task_a = asyncio.create_task(a.run())
        await asyncio.sleep(0.05)  # a asks first
        task_b = asyncio.create_task(b.run())
        both = await _job_rounds({"a": a, "b": b}, 2.0)
        task_a.cancel()  # a graceful stop releases the lock
        await asyncio.gather(task_a, return_exceptions=True)
        after_stop = await _job_rounds({"a": a, "b": b}, 1.0)
        # b crashes: its lock is neither renewed nor released
        assert isinstance(b.backend, RedisLock)
        b.backend.release = _never  # type: ignore[method-assign]
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)
        c = _redis_leader(redis_server, redis_prefix)
        started = time.monotonic()
        task_c = asyncio.create_task(c.run())
        while not c.held and time.monotonic() - started < 5:
            await asyncio.sleep(0.02)
        took = time.monotonic() - started
        crashed = await _job_rounds({"b": b, "c": c}, 0.5)
        task_c.cancel()
        await asyncio.gather(task_c, return_exceptions=True)
        return both, after_stop, crashed, took

    both, after_stop, crashed, took = asyncio.run(scenario())
    # never two at once; a alone while it leads (nearly every period: a busy machine may delay
    # a renewal past its margin, and then a stands down rather than risk a second leader)
    assert all(len(ran) <= 1 for ran in both + after_stop + crashed)
    ran_by = Counter(name for ran in both[1:] for name in ran)
    assert set(ran_by) == {"a"}
    assert ran_by["a"] >= 0.8 * (len(both) - 1)
    # a stopped: b takes over within one round (a third of the TTL), and runs every period after
    late = [ran for ran in after_stop if ran != ["b"]]
    assert len(late) <= int(TTL / 3 / PERIOD) + 1
    assert after_stop[-1] == ["b"]
    # b crashed: c waits for b's lock to expire (at most the TTL and one round), then runs
    assert TTL / 3 - 0.05 <= took <= TTL + TTL / 3 + 1.0  # it waited for the lock to expire
    assert crashed[-1] == ["c"]


async def _never() -> None:
    return None


# --- PostgreSQL without Redis: an advisory lock ----------------------------------------------


def test_two_instances_on_postgresql_take_turns_through_an_advisory_lock(
    fresh_postgres: str,
) -> None:
    first = make_engine(fresh_postgres, timeout_seconds=5, pool_size=2)
    second = make_engine(fresh_postgres, timeout_seconds=5, pool_size=2)

    async def scenario() -> list[tuple[bool, bool]]:
        a, b = Leader(PostgresAdvisoryLock(first), 30), Leader(PostgresAdvisoryLock(second), 30)
        seen = []
        seen.append((await a.step(), await b.step()))  # a takes it, b is refused
        seen.append((await a.step(), await b.step()))  # a renews, b still refused
        await a.stop()  # a graceful stop: unlocked
        seen.append((a.held, await b.step()))
        # b's process dies: its connection ends, PostgreSQL releases the lock (and b, should
        # it come back on a new connection, finds it has lost it)
        backend = b.backend
        assert isinstance(backend, PostgresAdvisoryLock)
        assert backend._conn is not None
        backend._conn.invalidate()
        seen.append((await a.step(), await b.step()))
        return seen

    try:
        assert asyncio.run(scenario()) == [
            (True, False),
            (True, False),
            (False, True),
            (True, False),
        ]
    finally:
        first.dispose()
        second.dispose()


def test_the_advisory_key_is_a_stable_signed_bigint() -> None:
    key = advisory_key("time-driven-jobs")
    assert key == advisory_key("time-driven-jobs") != advisory_key("other")
    assert -(2**63) <= key < 2**63


def test_sqlite_without_redis_keeps_every_worker_leader(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", timeout_seconds=5)
    leader = build_leader(ttl_seconds=30, redis_client=None, prefix="p", engine=engine)
    assert leader.backend is None
    assert leader.held
    assert asyncio.run(leader.step())
    engine.dispose()


def test_an_unreachable_lock_store_makes_no_leader() -> None:
    leader = _redis_leader("redis://127.0.0.1:1/0", "p")
    assert asyncio.run(leader.step()) is False
    assert not leader.held


# --- two apps: the loops' leader ---------------------------------------------------------------


def _app(model_dir: Path, url: str, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": url,
        "auth_disabled": True,
        "reload_interval_seconds": 0,
        "event_poll_seconds": 3600,
        "offer_metrics_seconds": 0,
        "access_log": False,
        "leader_lock_seconds": 3,
    }
    return TestClient(create_app(Settings(**{**options, **overrides}), clock=utc_now))


def _wait(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()  # type: ignore[no-any-return]


@pytest.mark.parametrize("lock", ["redis", "postgresql"])
def test_two_apps_elect_one_leader_and_the_other_takes_over_when_it_stops(
    lock: str, small_model_root: Path, fresh_postgres: str, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {}
    if lock == "redis":
        options = {
            "redis_url": request.getfixturevalue("redis_server"),
            "redis_prefix": request.getfixturevalue("redis_prefix"),
        }
    apps = [_app(small_model_root, fresh_postgres, **options) for _ in range(2)]
    for app in apps:
        app.__enter__()
    try:
        leaders = [c.app.state.recoffer.leader for c in apps]  # type: ignore[attr-defined]
        assert {leader.kind for leader in leaders} == {lock}
        assert _wait(lambda: sum(leader.held for leader in leaders) == 1, 5)
        metrics = [c.get("/metrics").text for c in apps]
        assert sum("recoffer_leader 1.0" in m for m in metrics) == 1
        first = 0 if leaders[0].held else 1
        apps.pop(first).__exit__(None, None, None)  # the leader stops: its lock is released
        # the other leads at its next round (a third of the 3 s TTL)
        assert _wait(lambda: leaders[1 - first].held, 3)
    finally:
        for app in apps:
            app.__exit__(None, None, None)


# --- review of issue 15: renewals retried, the lock checked before each job, one app ticks ----


def test_a_failed_redis_renewal_is_retried_with_the_same_token_while_still_valid(
    redis_server: str, redis_prefix: str
) -> None:
    import redis.exceptions

    async def scenario() -> tuple[bool, bool, bool, bool, bool]:
        leader = _redis_leader(redis_server, redis_prefix, ttl=30)
        backend = leader.backend
        assert isinstance(backend, RedisLock)
        taken = await leader.step()
        token = await backend.client.get(backend.lock.name)
        real = backend.lock.reacquire
        calls = [0]

        async def blip() -> bool:
            calls[0] += 1
            raise redis.exceptions.ConnectionError("a blip")

        backend.lock.reacquire = blip  # type: ignore[method-assign]
        during = await leader.step()  # one failed renewal: still leader, retried soon
        retrying = leader._retrying
        backend.lock.reacquire = real  # type: ignore[method-assign]
        after = await leader.step()
        same = await backend.client.get(backend.lock.name) == token
        await leader.stop()
        return taken, during, retrying, after, same and calls[0] == 1

    assert asyncio.run(scenario()) == (True, True, True, True, True)


def test_the_advisory_lock_is_checked_again_right_before_a_job(fresh_postgres: str) -> None:
    from sqlalchemy import text

    engine = make_engine(fresh_postgres, timeout_seconds=5, pool_size=2)
    other = make_engine(fresh_postgres, timeout_seconds=5, pool_size=2)

    async def scenario() -> tuple[bool, bool, bool, bool]:
        leader = Leader(PostgresAdvisoryLock(engine), 30)
        taken = await leader.step()
        confirmed = await leader.confirm()
        backend = leader.backend
        assert isinstance(backend, PostgresAdvisoryLock)
        assert backend._conn is not None
        pid = backend._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        backend._conn.commit()
        with other.connect() as conn:  # the lock's connection ends (a restart, a proxy)
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        still = leader.held  # the time bound alone would still say yes
        return taken, confirmed, still, await leader.confirm()

    try:
        assert asyncio.run(scenario()) == (True, True, True, False)
    finally:
        engine.dispose()
        other.dispose()


@pytest.mark.parametrize("lock", ["redis", "postgresql"])
def test_the_leader_gated_loops_tick_on_one_app_only(
    lock: str,
    small_model_root: Path,
    fresh_postgres: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.offers.schedule import CampaignSchedule

    ticks: Counter[tuple[str, int]] = Counter()
    real_tick = CampaignSchedule.tick

    def counted(self: CampaignSchedule) -> Any:
        ticks["schedule", id(self.sweeps)] += 1
        return real_tick(self)

    monkeypatch.setattr(CampaignSchedule, "tick", counted)
    options: dict[str, Any] = {"campaign_schedule_seconds": 0.1, "feedback_prune_seconds": 0.1}
    if lock == "redis":
        options |= {
            "redis_url": request.getfixturevalue("redis_server"),
            "redis_prefix": request.getfixturevalue("redis_prefix"),
        }
    apps = [_app(small_model_root, fresh_postgres, **options) for _ in range(2)]
    for app in apps:
        app.__enter__()
    try:
        states = [c.app.state.recoffer for c in apps]  # type: ignore[attr-defined]
        for state in states:
            prune = state.feedback.prune

            def pruned(prune: Any = prune, state: Any = state) -> Any:
                ticks["prune", id(state.sweeps)] += 1
                return prune()

            state.feedback.prune = pruned
        assert _wait(lambda: sum(s.leader.held for s in states) == 1, 5)
        time.sleep(1.5)
        leader = 0 if states[0].leader.held else 1
        mine, theirs = id(states[leader].sweeps), id(states[1 - leader].sweeps)
        assert ticks["schedule", mine] >= 3
        assert ticks["prune", mine] >= 3
        assert ticks["schedule", theirs] == 0
        assert ticks["prune", theirs] == 0
    finally:
        for app in apps:
            app.__exit__(None, None, None)
