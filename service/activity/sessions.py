"""Each user's recent events in Redis, shared by every worker and replica (issue 15, item 5).

With ``RECOFFER_REDIS_URL`` set, an event batch is pushed here after its database commit (the
database stays the durable event log) and every recommendation reads the user's list back, so
an event ingested by one replica is used by the next request on any other, and no worker has
to hold every session in memory (``ActivityStore`` then keeps only this worker's own writes,
the fallback below).

One Redis list per user, ``{prefix}:session:{user_id}``: newest first, trimmed to
``per_user`` events and expiring ``ttl_seconds`` after the user's last event, all in one
MULTI/EXEC per batch (``LPUSH``, ``LTRIM``, ``EXPIRE``). An empty Redis (the first start with
it, or a Redis restarted without persistence) is filled once from the events the starting worker
reads from the database (``seed``). Each entry is
``type|microseconds since the epoch|item_id`` (the item id last: it may hold any character).

A Redis that cannot be reached never fails a request: a read falls back to the user's newest
events in the database (then to this worker's memory when the database fails too), a write is
skipped (the events are in the database already), each counted in
``recoffer_session_store_errors_total`` and ``recoffer_session_fallbacks_total`` and logged
once per outage. After a failure Redis is left alone for ``retry_seconds``, so an outage costs
one timeout, not one per request.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from starlette.concurrency import run_in_threadpool

from service.activity.records import Activity, StoredEvent
from service.activity.store import ActivityStore

if TYPE_CHECKING:  # redis is imported when a store is built, not with this module
    import redis
    import redis.asyncio

    from service.metrics import Metrics

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
SEPARATOR = "|"
SEED_CHUNK = 1000  # users per round trip when filling Redis from the database
# the user's newest events from the database, when Redis cannot answer
DatabaseRecent = Callable[[str, int], Sequence[Activity]]


def encode(event: Activity) -> str:
    """One list entry: the type, the time in whole microseconds (exact), then the item id."""
    ts = event.ts if event.ts.tzinfo is not None else event.ts.replace(tzinfo=UTC)
    return f"{event.type}{SEPARATOR}{(ts - EPOCH) // MICROSECOND}{SEPARATOR}{event.item_id}"


def decode(raw: bytes | str) -> Activity:
    text = raw.decode() if isinstance(raw, bytes) else raw
    kind, micros, item_id = text.split(SEPARATOR, 2)
    return Activity(item_id=item_id, type=kind, ts=EPOCH + int(micros) * MICROSECOND)


class RedisSessions:
    """Recent events per user in Redis, with the database and this worker's memory behind it.

    ``recent`` (blocking, for threads) and ``arecent`` (the event loop, ``redis.asyncio``) read
    one user's events oldest first, as ``ActivityStore.recent`` does; ``write`` / ``awrite``
    push a stored batch; ``forget`` deletes a user's list (an erasure).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        per_user: int,
        ttl_seconds: float,
        timeout_seconds: float,
        retry_seconds: float,
        memory: ActivityStore,
        database: DatabaseRecent | None = None,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis
        import redis.asyncio

        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
        }
        self.client: redis.Redis = redis.Redis.from_url(url, **options)
        self.aclient: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, **options)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.prefix = f"{prefix}:session:"
        self.marker = f"{prefix}:session-seeded"
        self.per_user = per_user
        self.ttl = max(1, int(ttl_seconds))
        self.retry_seconds = retry_seconds
        self.memory = memory
        self.database = database
        self.metrics = metrics
        self._monotonic = monotonic
        self._down_until = 0.0  # Redis is not asked again before this (monotonic seconds)
        self._down = False

    def key(self, user_id: str) -> str:
        return self.prefix + user_id

    # --- state of the connection ------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether Redis is asked now (False for ``retry_seconds`` after a failure)."""
        return self._monotonic() >= self._down_until

    def _failed(self, op: str, exc: BaseException) -> None:
        self._down_until = self._monotonic() + self.retry_seconds
        if self.metrics is not None:
            self.metrics.session_store_errors.labels(op).inc()
        if not self._down:  # once per outage; the counter has every one
            self._down = True
            log.warning("session_store_unavailable", extra={"op": op, "error": type(exc).__name__})

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("session_store_available")

    def _fell_back(self, source: str) -> None:
        if self.metrics is not None:
            self.metrics.session_fallbacks.labels(source).inc()

    # --- writes -------------------------------------------------------------------------------

    def _batches(self, rows: Iterable[StoredEvent]) -> dict[str, list[str]]:
        by_user: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if row.item_id is not None:
                by_user[row.user_id].append(encode(Activity(row.item_id, row.type, row.ts)))
        return by_user

    def _queue(self, pipe: Any, by_user: dict[str, list[str]]) -> None:
        for user_id, entries in by_user.items():
            key = self.key(user_id)
            pipe.lpush(key, *entries)  # oldest first in, so the newest ends at the head
            pipe.ltrim(key, 0, self.per_user - 1)
            pipe.expire(key, self.ttl)

    def write(self, rows: Iterable[StoredEvent]) -> bool:
        """Push a stored batch (blocking); False when Redis did not take it (skipped)."""
        by_user = self._batches(rows)
        if not by_user:
            return True
        if not self.available:
            self._skipped()
            return False
        try:
            with self.client.pipeline(transaction=True) as pipe:
                self._queue(pipe, by_user)
                pipe.execute()
        except self._errors as exc:
            self._failed("write", exc)
            return False
        self._succeeded()
        return True

    async def awrite(self, rows: Iterable[StoredEvent]) -> bool:
        """``write`` on the event loop."""
        by_user = self._batches(rows)
        if not by_user:
            return True
        if not self.available:
            self._skipped()
            return False
        try:
            async with self.aclient.pipeline(transaction=True) as pipe:
                self._queue(pipe, by_user)
                await pipe.execute()
        except self._errors as exc:
            self._failed("write", exc)
            return False
        self._succeeded()
        return True

    def _skipped(self) -> None:
        if self.metrics is not None:
            self.metrics.session_store_errors.labels("write_skipped").inc()

    def seed(self, rows: Sequence[StoredEvent], *, now: datetime | None = None) -> int:
        """Fill Redis from the database's recent events (``rows``, oldest first: what a worker
        reads at start-up) once per deployment and Redis: the first worker to set the marker
        ``{prefix}:session-seeded`` does it, for the users without a list (a user with one has
        newer events pushed already), each expiring a TTL after their last event. Returns the
        users filled; 0 when another worker did, or Redis cannot be reached.
        """
        if not rows or not self.available:
            return 0
        now = now or datetime.now(UTC)
        by_user = self._batches(rows)
        last = {row.user_id: row.ts for row in rows if row.item_id is not None}
        users = list(by_user)
        filled = 0
        try:
            if not self.client.set(self.marker, "1", nx=True, ex=self.ttl):
                return 0
            for first in range(0, len(users), SEED_CHUNK):
                chunk = users[first : first + SEED_CHUNK]
                with self.client.pipeline(transaction=False) as pipe:
                    for user_id in chunk:
                        pipe.exists(self.key(user_id))
                    present = pipe.execute()
                with self.client.pipeline(transaction=False) as pipe:
                    for user_id, held in zip(chunk, present, strict=True):
                        ts = last[user_id]
                        ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
                        left = self.ttl - int((now - ts).total_seconds())
                        if held or left <= 0:
                            continue
                        key = self.key(user_id)
                        # newest first from the head: appended at the older end
                        pipe.rpush(key, *reversed(by_user[user_id][-self.per_user :]))
                        pipe.ltrim(key, 0, self.per_user - 1)
                        pipe.expire(key, left)
                        filled += 1
                    pipe.execute()
        except self._errors as exc:
            self._failed("seed", exc)
            return filled
        self._succeeded()
        if filled:
            log.info("session_store_seeded", extra={"users": filled})
        return filled

    # --- reads --------------------------------------------------------------------------------

    def _decoded(self, raw: Sequence[bytes]) -> tuple[Activity, ...]:
        return tuple(decode(r) for r in reversed(raw))  # oldest first

    def recent(self, user_id: str) -> tuple[Activity, ...]:
        """The user's recent events, oldest first (blocking: threads only)."""
        if self.available:
            try:
                raw = cast(list[bytes], self.client.lrange(self.key(user_id), 0, self.per_user - 1))
            except self._errors as exc:
                self._failed("read", exc)
            else:
                self._succeeded()
                return self._decoded(raw)
        return self._from_database(user_id)

    async def arecent(self, user_id: str) -> tuple[Activity, ...]:
        """``recent`` on the event loop; the database fallback runs in a thread."""
        if self.available:
            try:
                pending = self.aclient.lrange(self.key(user_id), 0, self.per_user - 1)
                raw = await cast(Awaitable[list[bytes]], pending)
            except self._errors as exc:
                self._failed("read", exc)
            else:
                self._succeeded()
                return self._decoded(raw)
        return await run_in_threadpool(self._from_database, user_id)

    async def arecent_many(self, user_ids: Iterable[str]) -> dict[str, tuple[Activity, ...]]:
        """Several users' recent events in one round trip (the offers evaluated on a view)."""
        users = list(user_ids)
        if not users:
            return {}
        if self.available:
            try:
                async with self.aclient.pipeline(transaction=False) as pipe:
                    for user_id in users:
                        pipe.lrange(self.key(user_id), 0, self.per_user - 1)
                    lists = await pipe.execute()
            except self._errors as exc:
                self._failed("read", exc)
            else:
                self._succeeded()
                return {u: self._decoded(r) for u, r in zip(users, lists, strict=True)}
        return {u: await run_in_threadpool(self._from_database, u) for u in users}

    def _from_database(self, user_id: str) -> tuple[Activity, ...]:
        """Redis cannot answer: the database's newest events, else this worker's own."""
        if self.database is not None:
            try:
                found = tuple(self.database(user_id, self.per_user))
            except Exception as exc:  # the database is down too: what this worker holds
                log.warning("session_database_fallback_failed", extra={"error": type(exc).__name__})
            else:
                self._fell_back("database")
                return found
        self._fell_back("memory")
        return self.memory.recent(user_id)

    # --- erasure and shutdown -----------------------------------------------------------------

    def forget(self, user_id: str) -> int | None:
        """Delete the user's list (an erasure): 1 if there was one, 0 if not, None when Redis
        could not be reached (the caller tries again)."""
        try:
            deleted = cast(int, self.client.delete(self.key(user_id)))
        except self._errors as exc:
            self._failed("delete", exc)
            return None
        return deleted

    def held(self, user_id: str) -> bool:
        """Whether Redis holds a list for the user (tests and the erasure's checks)."""
        return bool(self.client.exists(self.key(user_id)))

    async def aclose(self) -> None:
        await self.aclient.aclose()
        self.client.close()
