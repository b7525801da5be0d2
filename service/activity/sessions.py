"""Each user's recent events in Redis, shared by every worker and replica (issue 15, item 5).

With ``RECOFFER_REDIS_URL`` set, an event batch is pushed here after its database commit (the
database stays the durable event log) and every recommendation reads the user's list back, so
an event ingested by one replica is used by the next request on any other, and no worker has
to hold every session in memory (``ActivityStore`` then keeps only this worker's own writes,
the fallback below).

One Redis list per user, ``{prefix}:session:{hash}``, the hash being the user's tombstone hash
(``service.privacy.tombstones``: HMAC-SHA256 under the installation's key), so every worker
that reads a new tombstone can delete the erased user's list without knowing the id, and Redis
holds no user id. Newest first, trimmed to ``per_user`` events and expiring ``ttl_seconds``
after the user's last event, all in one MULTI/EXEC per batch (``LPUSH``, ``LTRIM``,
``EXPIRE``). Each entry is ``type|microseconds since the epoch|item_id`` (the item id last: it
may hold any character); one that does not parse is skipped and counted.

An empty Redis (the first start with it, or a Redis restarted empty while replicas run) is
filled from the database's recent events (``seed``): at start-up, and whenever the leader finds
the marker ``{prefix}:session-seeded`` gone (``background.sessions_upkeep``). The marker is set
only after a complete fill, under a short lock ``{prefix}:session-seeding``; a fill merges the
database's events under those already pushed (one Lua script per user), so a list written since
the restart is completed, not skipped. Erased users are never filled.

A Redis that cannot be reached never fails a request: a read falls back to the user's newest
events in the database (at most ``max_fallbacks`` at a time per worker; past that, and when the
database fails too, to this worker's memory), a write that fails or is skipped marks the user
"stale" (a bounded set); each is counted in ``recoffer_session_store_errors_total`` and
``recoffer_session_fallbacks_total`` and logged once per outage. A stale user is read from the
database until ``repair`` has merged their database events into their list (the tail loop calls
it on every poll). After a failed read, reads leave Redis alone for ``retry_seconds``; after a
failed write, writes do (an outage costs one timeout, not one per request). When more users go
stale than the set holds, the marker is deleted so that the next fill merges every user.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
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
    from service.privacy.tombstones import Tombstones

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
SEPARATOR = "|"
SEED_CHUNK = 1000  # users per round trip when filling Redis from the database
SEED_LOCK_SECONDS = 120  # one worker fills at a time; a crashed filler's lock goes by then
REPAIR_CHUNK = 200  # stale users merged per repair call
DEFAULT_MAX_STALE = 100_000  # users remembered as stale; past it, the next fill merges all
DEFAULT_MAX_CONNECTIONS = 32  # per client (blocking and asyncio) and worker
DEFAULT_MAX_FALLBACKS = 4  # database reads at a time per worker while Redis cannot answer
# the user's newest events from the database, when Redis cannot answer
DatabaseRecent = Callable[[str, int], Sequence[Activity]]

# Merge entries (ARGV[3..], newest first) into the list KEYS[1]: the union (an entry the list
# holds n times and the argument m times is kept max(n, m) times), newest first by the entry's
# time (the list's order kept for equal times), trimmed to ARGV[1]; the TTL is the longer of
# the list's and ARGV[2] seconds. Entries that do not parse are dropped. Returns 1 if written.
MERGE = """
local function micros(e)
  local a = string.find(e, '|', 1, true)
  if not a then return nil end
  local b = string.find(e, '|', a + 1, true)
  if not b then return nil end
  return tonumber(string.sub(e, a + 1, b - 1))
end
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local ttl = math.max(tonumber(ARGV[2]), redis.call('TTL', key))
if ttl <= 0 then return 0 end
local held = redis.call('LRANGE', key, 0, -1)
local all, count = {}, {}
for i, e in ipairs(held) do
  local t = micros(e)
  if t then
    all[#all + 1] = {t, i, e}
    count[e] = (count[e] or 0) + 1
  end
end
local given = {}
for i = 3, #ARGV do
  local e = ARGV[i]
  local t = micros(e)
  if t then
    given[e] = (given[e] or 0) + 1
    if given[e] > (count[e] or 0) then all[#all + 1] = {t, #held + i, e} end
  end
end
table.sort(all, function(x, y)
  if x[1] ~= y[1] then return x[1] > y[1] end
  return x[2] < y[2]
end)
redis.call('DEL', key)
if #all == 0 then return 0 end
local n = math.min(#all, limit)
for i = 1, n do redis.call('RPUSH', key, all[i][3]) end
redis.call('EXPIRE', key, ttl)
return 1
"""


def encode(event: Activity) -> str:
    """One list entry: the type, the time in whole microseconds (exact), then the item id."""
    ts = event.ts if event.ts.tzinfo is not None else event.ts.replace(tzinfo=UTC)
    return f"{event.type}{SEPARATOR}{(ts - EPOCH) // MICROSECOND}{SEPARATOR}{event.item_id}"


def decode(raw: bytes | str) -> Activity:
    """An entry back; ValueError (UnicodeDecodeError included) when it does not parse."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    kind, micros, item_id = text.split(SEPARATOR, 2)
    return Activity(item_id=item_id, type=kind, ts=EPOCH + int(micros) * MICROSECOND)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class RedisSessions:
    """Recent events per user in Redis, with the database and this worker's memory behind it.

    ``recent`` (blocking, for threads) and ``arecent`` (the event loop, ``redis.asyncio``) read
    one user's events oldest first, as ``ActivityStore.recent`` does; ``write`` / ``awrite``
    push a stored batch; ``forget`` / ``forget_hashes`` delete lists (an erasure); ``repair``
    and ``seed`` make lists complete again after an outage or an empty Redis.

    ``tombstones``: the users' hashes name their lists, and an erased user is never pushed,
    read or filled (without it, the tests' setup, lists are named by the id itself).
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
        tombstones: Tombstones | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_fallbacks: int = DEFAULT_MAX_FALLBACKS,
        max_stale: int = DEFAULT_MAX_STALE,
    ) -> None:
        import redis
        import redis.asyncio

        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "max_connections": max_connections,
            "timeout": timeout_seconds,  # waiting for a free connection, at most this long
        }
        pool = redis.BlockingConnectionPool.from_url(url, **options)
        apool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
        self.client: redis.Redis = redis.Redis(connection_pool=pool)
        self.aclient: redis.asyncio.Redis = redis.asyncio.Redis(connection_pool=apool)
        self._merge = self.client.register_script(MERGE)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.prefix = f"{prefix}:session:"
        self.marker = f"{prefix}:session-seeded"
        self.seeding = f"{prefix}:session-seeding"
        self.per_user = per_user
        self.ttl = max(1, int(ttl_seconds))
        self.retry_seconds = retry_seconds
        self.memory = memory
        self.database = database
        self.metrics = metrics
        self.tombstones = tombstones
        self.max_stale = max_stale
        self._monotonic = monotonic
        self._down_until = 0.0  # reads leave Redis alone before this (monotonic seconds)
        self._writes_down_until = 0.0  # and writes before this (set by a failed write)
        self._down = False
        self._fallbacks = threading.BoundedSemaphore(max(1, max_fallbacks))
        # users whose list lacks events (a write failed or was skipped): read from the
        # database until ``repair`` merged them; oldest first, at most ``max_stale``
        self._stale: OrderedDict[str, None] = OrderedDict()
        self._stale_lock = threading.Lock()
        self.refill_wanted = False  # more went stale than remembered: the next fill merges all

    def key(self, user_id: str) -> str | None:
        """The user's list (None while the tombstone key is unknown: no list can be named)."""
        if self.tombstones is None:
            return self.prefix + user_id
        hashed = self.tombstones.hash(user_id)
        return None if hashed is None else self.prefix + hashed

    def _erased(self, user_id: str) -> bool:
        return self.tombstones is not None and self.tombstones.is_erased(user_id)

    # --- state of the connection ------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether reads ask Redis now (False for ``retry_seconds`` after a failure)."""
        return self._monotonic() >= self._down_until

    @property
    def writable(self) -> bool:
        """Whether writes ask Redis now (False for ``retry_seconds`` after a failed write)."""
        return self._monotonic() >= self._writes_down_until

    def _failed(self, op: str, exc: BaseException) -> None:
        until = self._monotonic() + self.retry_seconds
        self._down_until = until
        if op in ("write", "repair", "seed"):
            self._writes_down_until = until
        self._count_error(op)
        if not self._down:  # once per outage; the counter has every one
            self._down = True
            log.warning("session_store_unavailable", extra={"op": op, "error": type(exc).__name__})

    def _count_error(self, op: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.session_store_errors.labels(op).inc(n)

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("session_store_available")

    def _fell_back(self, source: str) -> None:
        if self.metrics is not None:
            self.metrics.session_fallbacks.labels(source).inc()

    # --- users whose list is incomplete -----------------------------------------------------

    def _mark_stale(self, users: Iterable[str]) -> None:
        with self._stale_lock:
            for user_id in users:
                self._stale[user_id] = None
                self._stale.move_to_end(user_id)
            while len(self._stale) > self.max_stale:
                self._stale.popitem(last=False)
                self.refill_wanted = True

    def is_stale(self, user_id: str) -> bool:
        """Whether the user's list may lack events (read from the database meanwhile)."""
        return user_id in self._stale

    @property
    def stale_users(self) -> int:
        return len(self._stale)

    def repair(self) -> int:
        """Merge the database's newest events of up to ``REPAIR_CHUNK`` stale users into their
        lists (blocking); returns the users made complete. A user stays stale when the
        database or Redis fails; a write meanwhile is kept (the merge is one script)."""
        if self.database is None or not self._stale or not self.writable:
            return 0
        with self._stale_lock:
            users = list(self._stale)[:REPAIR_CHUNK]
        done: list[str] = []
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for user_id in users:
                    key = self.key(user_id)
                    if key is None:
                        continue
                    done.append(user_id)
                    if self._erased(user_id):
                        pipe.delete(key)
                        continue
                    rows = self.database(user_id, self.per_user)
                    self._queue_merge(pipe, key, [encode(a) for a in reversed(rows)], rows)
                pipe.execute()
        except self._errors as exc:
            self._failed("repair", exc)
            return 0
        except Exception as exc:  # the database failed: the next poll tries again
            log.warning("session_repair_failed", extra={"error": type(exc).__name__})
            return 0
        self._succeeded()
        with self._stale_lock:
            for user_id in done:
                self._stale.pop(user_id, None)
        return len(done)

    def _queue_merge(
        self,
        pipe: Any,
        key: str,
        entries: list[str],
        rows: Sequence[Activity],
        now: datetime | None = None,
    ) -> None:
        """The MERGE script for one list: ``entries`` newest first, ``rows`` their events."""
        now = now or datetime.now(UTC)
        newest = max((_aware(a.ts) for a in rows), default=None)
        left = 0 if newest is None else self.ttl - int((now - newest).total_seconds())
        self._merge(keys=[key], args=[self.per_user, left, *entries], client=pipe)

    # --- writes -------------------------------------------------------------------------------

    def _batches(self, rows: Iterable[StoredEvent]) -> tuple[dict[str, list[str]], set[str]]:
        """The entries to push per list, and the users whose list cannot be named now."""
        by_key: dict[str, list[str]] = defaultdict(list)
        unnamed: set[str] = set()
        for row in rows:
            if row.item_id is None or self._erased(row.user_id):  # never pushed once erased
                continue
            key = self.key(row.user_id)
            if key is None:
                unnamed.add(row.user_id)
                continue
            by_key[key].append(encode(Activity(row.item_id, row.type, row.ts)))
        return by_key, unnamed

    def _users(self, rows: Iterable[StoredEvent]) -> set[str]:
        return {r.user_id for r in rows if r.item_id is not None and not self._erased(r.user_id)}

    def _queue(self, pipe: Any, by_key: dict[str, list[str]]) -> None:
        for key, entries in by_key.items():
            pipe.lpush(key, *entries)  # oldest first in, so the newest ends at the head
            pipe.ltrim(key, 0, self.per_user - 1)
            pipe.expire(key, self.ttl)

    def _plan_write(
        self, rows: Sequence[StoredEvent]
    ) -> tuple[dict[str, list[str]], set[str], bool | None]:
        """``write``'s and ``awrite``'s part before Redis: the entries per list, the users whose
        list cannot be named now (marked stale), and the answer when nothing is to be pushed
        (nothing left, or writes paused) — None when the pipeline is to run."""
        by_key, unnamed = self._batches(rows)
        if unnamed:
            self._mark_stale(unnamed)
        if not by_key:
            return by_key, unnamed, not unnamed
        if not self.writable:
            return by_key, unnamed, self._not_written(rows, "write_skipped")
        return by_key, unnamed, None

    def _not_written(self, rows: Sequence[StoredEvent], op: str) -> bool:
        self._mark_stale(self._users(rows))
        if op == "write_skipped":
            self._count_error(op)
        return False

    def write(self, rows: Iterable[StoredEvent]) -> bool:
        """Push a stored batch (blocking); False when Redis did not take it all (its users are
        then stale until ``repair``)."""
        rows = list(rows)
        by_key, unnamed, done = self._plan_write(rows)
        if done is not None:
            return done
        try:
            with self.client.pipeline(transaction=True) as pipe:
                self._queue(pipe, by_key)
                pipe.execute()
        except self._errors as exc:
            self._failed("write", exc)
            return self._not_written(rows, "write")
        self._succeeded()
        return not unnamed

    async def awrite(self, rows: Iterable[StoredEvent]) -> bool:
        """``write`` on the event loop."""
        rows = list(rows)
        by_key, unnamed, done = self._plan_write(rows)
        if done is not None:
            return done
        try:
            async with self.aclient.pipeline(transaction=True) as pipe:
                self._queue(pipe, by_key)
                await pipe.execute()
        except self._errors as exc:
            self._failed("write", exc)
            return self._not_written(rows, "write")
        self._succeeded()
        return not unnamed

    # --- filling an empty Redis ---------------------------------------------------------------

    def needs_seed(self) -> bool:
        """Whether the marker of a complete fill is missing (Redis restarted empty, or more
        users went stale than remembered); False when Redis cannot be reached."""
        if not self.writable:
            return False
        try:
            if self.refill_wanted:
                self.client.delete(self.marker)
                self.refill_wanted = False
            return not self.client.exists(self.marker)
        except self._errors as exc:
            self._failed("seed", exc)
            return False

    def seed(self, rows: Sequence[StoredEvent], *, now: datetime | None = None) -> int:
        """Fill Redis from the database's recent events (``rows``, oldest first: what a worker
        reads at start-up) when the marker ``{prefix}:session-seeded`` is missing: the worker
        that takes the lock ``{prefix}:session-seeding`` merges each user's newest events into
        their list (a list pushed meanwhile keeps its entries), each expiring a TTL after the
        user's last event, erased users left out; the marker is set once all went in. Returns
        the users filled; 0 when the marker is there, another worker is filling, or Redis
        cannot be reached (the leader tries again, ``background.sessions_upkeep``).
        """
        if not self.writable:
            return 0
        now = now or datetime.now(UTC)
        by_user: dict[str, list[Activity]] = defaultdict(list)
        for row in rows:
            if row.item_id is not None and not self._erased(row.user_id):
                by_user[row.user_id].append(Activity(row.item_id, row.type, row.ts))
        filled = 0
        try:
            if self.client.exists(self.marker):
                return 0
            if not self.client.set(self.seeding, "1", nx=True, ex=SEED_LOCK_SECONDS):
                return 0
            users = list(by_user)
            for first in range(0, len(users), SEED_CHUNK):
                with self.client.pipeline(transaction=False) as pipe:
                    for user_id in users[first : first + SEED_CHUNK]:
                        key = self.key(user_id)
                        if key is None:
                            continue
                        recent = by_user[user_id][-self.per_user :]
                        entries = [encode(a) for a in reversed(recent)]
                        self._queue_merge(pipe, key, entries, recent, now)
                    filled += sum(int(done) for done in pipe.execute())
            self.client.set(self.marker, "1")  # no TTL: a volatile-* policy never evicts it
            self.client.delete(self.seeding)
        except self._errors as exc:
            self._failed("seed", exc)
            return filled
        self._succeeded()
        log.info("session_store_seeded", extra={"users": filled})
        return filled

    # --- reads --------------------------------------------------------------------------------

    def _decoded(self, raw: Sequence[bytes]) -> tuple[Activity, ...]:
        """Oldest first; an entry that does not parse is skipped and counted."""
        out: list[Activity] = []
        bad = 0
        for entry in reversed(raw):
            try:
                out.append(decode(entry))
            except ValueError:
                bad += 1
        if bad:
            self._count_error("malformed", bad)
        return tuple(out)

    def _asks_redis(self, user_id: str) -> str | None:
        """The user's list when Redis is asked for it now (not stale, nameable, reads up)."""
        if not self.available or self.is_stale(user_id):
            return None
        return self.key(user_id)

    def recent(self, user_id: str) -> tuple[Activity, ...]:
        """The user's recent events, oldest first (blocking: threads only); none once erased."""
        if self._erased(user_id):
            return ()
        key = self._asks_redis(user_id)
        if key is not None:
            try:
                raw = cast(list[bytes], self.client.lrange(key, 0, self.per_user - 1))
            except self._errors as exc:
                self._failed("read", exc)
            else:
                self._succeeded()
                return self._decoded(raw)
        return self._from_database(user_id)

    async def arecent(self, user_id: str) -> tuple[Activity, ...]:
        """``recent`` on the event loop; the database fallback runs in a thread."""
        if self._erased(user_id):
            return ()
        key = self._asks_redis(user_id)
        if key is not None:
            try:
                pending = self.aclient.lrange(key, 0, self.per_user - 1)
                raw = await cast(Awaitable[list[bytes]], pending)
            except self._errors as exc:
                self._failed("read", exc)
            else:
                self._succeeded()
                return self._decoded(raw)
        return await run_in_threadpool(self._from_database, user_id)

    async def arecent_many(self, user_ids: Iterable[str]) -> dict[str, tuple[Activity, ...]]:
        """Several users' recent events in one round trip (the offers evaluated on a view)."""
        out: dict[str, tuple[Activity, ...]] = {}
        asked: dict[str, str] = {}
        fallback: list[str] = []
        for user_id in user_ids:
            key = None if self._erased(user_id) else self._asks_redis(user_id)
            if self._erased(user_id):
                out[user_id] = ()
            elif key is None:
                fallback.append(user_id)
            else:
                asked[user_id] = key
        if asked:
            try:
                async with self.aclient.pipeline(transaction=False) as pipe:
                    for key in asked.values():
                        pipe.lrange(key, 0, self.per_user - 1)
                    lists = await pipe.execute()
            except self._errors as exc:
                self._failed("read", exc)
                fallback.extend(asked)
            else:
                self._succeeded()
                for user_id, raw in zip(asked, lists, strict=True):
                    out[user_id] = self._decoded(raw)
        for user_id in fallback:
            out[user_id] = await run_in_threadpool(self._from_database, user_id)
        return out

    def _from_database(self, user_id: str) -> tuple[Activity, ...]:
        """Redis cannot answer: the database's newest events (at most ``max_fallbacks`` reads
        at a time, so an outage is no spike of database reads), else this worker's own."""
        if self.database is not None and self._fallbacks.acquire(blocking=False):
            try:
                found = tuple(self.database(user_id, self.per_user))
            except Exception as exc:  # the database is down too: what this worker holds
                log.warning("session_database_fallback_failed", extra={"error": type(exc).__name__})
            else:
                self._fell_back("database")
                return found
            finally:
                self._fallbacks.release()
        self._fell_back("memory")
        return self.memory.recent(user_id)

    # --- erasure and shutdown -----------------------------------------------------------------

    def forget(self, user_id: str) -> int | None:
        """Delete the user's list (an erasure): 1 if there was one, 0 if not, None when Redis
        could not be reached or the list cannot be named yet (the caller tries again)."""
        key = self.key(user_id)
        if key is None:
            return None
        try:
            deleted = cast(int, self.client.delete(key))
        except self._errors as exc:
            self._failed("delete", exc)
            return None
        with self._stale_lock:
            self._stale.pop(user_id, None)
        return deleted

    def forget_hashes(self, hashes: Iterable[str]) -> bool:
        """Delete the lists of these tombstone hashes (users erased anywhere); False when Redis
        could not be reached (the caller tries again)."""
        keys = [self.prefix + h for h in hashes]
        if not keys or self.tombstones is None:
            return True
        try:
            self.client.delete(*keys)
        except self._errors as exc:
            self._failed("delete", exc)
            return False
        return True

    def held(self, user_id: str) -> bool:
        """Whether Redis holds a list for the user (tests and the erasure's checks)."""
        key = self.key(user_id)
        return key is not None and bool(self.client.exists(key))

    async def aclose(self) -> None:
        await self.aclient.aclose()
        self.client.close()
