"""One leader among every worker and replica, for the jobs that must run once cluster-wide
(issue 15, item 5).

The time-driven jobs (``background.campaign_schedule_loop``, ``background.feedback_prune_loop``)
run on the worker holding the lock; the others keep serving and keep trying, so when the
leader stops (a graceful shutdown releases the lock; a crash lets it expire) another takes
over within one time to live.

Which lock, chosen once from the settings:

- Redis configured: redis-py's ``Lock`` (``SET key token NX PX ttl``, renewed by the holder
  with its token-checked Lua script every third of the TTL). A renewal that fails (Redis did
  not answer) is retried with the same token every ``RETRY_SECONDS`` while the last renewal is
  still valid (two thirds of the TTL, counted from before it); the worker stops acting as
  leader when that runs out, before its lock can have expired elsewhere, or at once when the
  token is no longer its own.
- PostgreSQL without Redis: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  connection of its own; PostgreSQL releases it when that connection ends, so a crashed
  leader's lock goes with its connection. Each round, and each job right before it runs
  (``Leader.confirm``), checks the lock is still granted to that connection's session. A
  transaction-mode pooler (PgBouncer ``pool_mode = transaction``) between the service and
  PostgreSQL breaks this: session locks need a session of their own.
- SQLite without Redis (the embedded setup: one machine): every worker is leader, as before;
  the jobs' own guards in the database (one sweep per interval, idempotent deletes) hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, text
from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    import redis.asyncio

    from service.metrics import Metrics

log = logging.getLogger(__name__)
NAME = "time-driven-jobs"
RETRY_SECONDS = 1.0  # a failed renewal is tried again this soon, while still valid


class Backend(Protocol):
    """A lock that one holder has at a time."""

    kind: str
    retries: bool  # a renewal that raised may be tried again with the same hold

    async def acquire(self) -> bool: ...  # take it if free; True when held by us

    async def renew(self) -> bool: ...  # keep it; False when lost

    async def release(self) -> None: ...


class Leader:
    """Whether this worker is the leader now (``held``), kept by ``run`` on the event loop."""

    def __init__(
        self,
        backend: Backend | None,
        ttl_seconds: float,
        *,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.ttl = ttl_seconds
        self.metrics = metrics
        self._monotonic = monotonic
        self._valid_until = 0.0
        self._holding = False
        self._retrying = False  # the last renewal failed; the lock is ours while still valid
        self._lock = asyncio.Lock()  # one call on the backend at a time (run and confirm)
        self.kind = "every worker" if backend is None else backend.kind
        if metrics is not None:  # shown from the start: 1 on every worker without a shared lock
            metrics.leader.set(1 if backend is None else 0)

    @property
    def held(self) -> bool:
        """True while this worker holds the lock (always, without a shared lock)."""
        if self.backend is None:
            return True
        return self._holding and self._monotonic() < self._valid_until

    async def step(self) -> bool:
        """One round: renew what is held, or try to take it; returns ``held``."""
        if self.backend is None:
            return True
        async with self._lock:
            return await self._step()

    async def confirm(self) -> bool:
        """Right before a job runs: renew now and say whether the lock is still held (on
        PostgreSQL a connection lost since the last round has lost the lock)."""
        if self.backend is None:
            return True
        if not self.held:
            return False
        return await self.step()

    async def _step(self) -> bool:
        assert self.backend is not None
        started = self._monotonic()
        try:
            ok = await (self.backend.renew() if self._holding else self.backend.acquire())
            self._retrying = False
        except Exception as exc:  # the lock's store did not answer
            log.warning("leader_lock_failed", extra={"error": type(exc).__name__})
            # held: the same token again soon, while the last renewal holds (Redis); the
            # PostgreSQL lock went with its connection, so its next renewal says False
            ok = self.backend.retries and self._holding and started < self._valid_until
            self._retrying = ok
            if ok:
                return self.held
        was = self._holding
        self._holding = ok
        if ok:
            # counted from before the call: the lock may have been set a moment after it began
            self._valid_until = started + self.ttl * 2 / 3
        if ok != was:
            log.info("leader_taken" if ok else "leader_lost", extra={"lock": self.kind})
            if self.metrics is not None:
                self.metrics.leader.set(1 if ok else 0)
        return self.held

    async def run(self) -> None:
        """Keep the lock, or keep trying, every third of its TTL; release it when cancelled."""
        try:
            while True:
                await self.step()
                pause = self.ttl / 3
                await asyncio.sleep(min(RETRY_SECONDS, pause) if self._retrying else pause)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Let another worker take over at its next round (a graceful shutdown)."""
        if self.backend is not None and self._holding:
            self._holding = False
            with contextlib.suppress(Exception):
                await self.backend.release()
            if self.metrics is not None:
                self.metrics.leader.set(0)


class RedisLock:
    """redis-py's ``Lock`` on ``{prefix}:leader:{name}``: one token, a TTL the holder renews."""

    kind = "redis"
    retries = True  # the token stays valid in Redis until its TTL, whatever we heard

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str, ttl_seconds: float) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.lock = client.lock(
            f"{prefix}:leader:{NAME}",
            timeout=ttl_seconds,
            blocking=False,
            thread_local=False,
        )

    async def acquire(self) -> bool:
        # a fresh token each time: a lock lost and re-taken is a new tenure
        return bool(await self.lock.acquire(token=uuid.uuid4().hex.encode()))

    async def renew(self) -> bool:
        from redis.exceptions import LockError

        try:
            await self.lock.reacquire()  # resets the TTL only while the token is ours
        except LockError:
            return False
        return True

    async def release(self) -> None:
        from redis.exceptions import LockError

        with contextlib.suppress(LockError):
            await self.lock.release()


MASK32 = 0xFFFFFFFF
# a bigint advisory key is shown in pg_locks as classid (high 32 bits), objid (low), objsubid 1
HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND objsubid = 1 "
    "AND classid::bigint = :hi AND objid::bigint = :lo)"
)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock`` from the lock's name."""
    digest = hashlib.sha256(f"recoffer:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresAdvisoryLock:
    """A session-level advisory lock held on a connection of its own (blocking calls in a
    thread); released by PostgreSQL when that connection closes."""

    kind = "postgresql"
    retries = False  # a failed check closed the connection: the lock went with it

    def __init__(self, engine: Engine, name: str = NAME) -> None:
        self.engine = engine
        self.key = advisory_key(name)
        self._conn: Connection | None = None

    def _acquire(self) -> bool:
        self._close()
        conn = self.engine.connect()
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            )
            conn.commit()  # no transaction left open while the lock is held
        except Exception:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def _renew(self) -> bool:
        if self._conn is None:
            return False
        try:  # still granted to this session? (a connection that dropped and reconnected
            # is a new session without it)
            held = self._conn.execute(
                HELD, {"hi": (self.key >> 32) & MASK32, "lo": self.key & MASK32}
            )
            granted = bool(held.scalar())
            self._conn.commit()
        except Exception:
            self._close()
            raise
        if not granted:
            self._close()
        return granted

    def _release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.commit()
        except Exception:
            self._close()
            return
        conn, self._conn = self._conn, None
        conn.close()

    def _close(self) -> None:
        """Drop the connection for good (not back to the pool: its session would keep the
        lock), so PostgreSQL releases whatever it held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    async def acquire(self) -> bool:
        return await run_in_threadpool(self._acquire)

    async def renew(self) -> bool:
        return await run_in_threadpool(self._renew)

    async def release(self) -> None:
        await run_in_threadpool(self._release)


def build_leader(
    *,
    ttl_seconds: float,
    redis_client: Any | None,
    prefix: str,
    engine: Engine,
    metrics: Metrics | None = None,
) -> Leader:
    """The leader election the settings call for (see the module's docstring)."""
    backend: Backend | None = None
    if redis_client is not None:
        backend = RedisLock(redis_client, prefix=prefix, ttl_seconds=ttl_seconds)
    elif engine.dialect.name == "postgresql":
        backend = PostgresAdvisoryLock(engine)
    return Leader(backend, ttl_seconds, metrics=metrics)
