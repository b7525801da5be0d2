"""Users, behaviour events and catalogue items: the repository and each worker's recent view.

All SQL of these tables lives in ``Repository``. ``ActivityStore`` is an in-memory, per-worker
copy of recent events per user, filled by tailing the events table, so answering a
recommendation never waits for the database (and keeps working while it is down).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from service.clock import Clock, utc_now
from service.recommender import Activity, CatalogueEntry
from service.tables import events, items, users

log = logging.getLogger(__name__)
TAIL_LOOKBACK_IDS = 2_000  # ids may commit out of order on PostgreSQL; re-read this many


@dataclass(frozen=True)
class NewEvent:
    user_id: str
    type: str
    ts: datetime
    item_id: str | None = None
    order_id: str | None = None
    client_event_id: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    user_id: str
    item_id: str | None
    type: str
    ts: datetime


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    stored: list[StoredEvent]


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    signed_up_at: datetime | None
    first_seen_at: datetime
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    name: str | None
    category: str | None
    price: float | None
    in_stock: bool | None
    updated_at: datetime


class Repository:
    """Every query on users, events and items."""

    def __init__(self, engine: Engine, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        # SQLite has one writer: queue this process's writers here, in order, rather than in
        # SQLite's busy handler, which sleeps and backs off (seconds under contention)
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    def change_signature(self) -> tuple[int, ...] | None:
        """A cheap "did anything change?" probe: SQLite file and WAL stats; None elsewhere.

        Lets the tail skip a thread hop (which competes with requests for the interpreter)
        when the embedded database has not changed since the last poll.
        """
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        out: list[int] = []
        for suffix in ("", "-wal"):
            try:
                info = os.stat(f"{database}{suffix}")
            except OSError:
                out += [0, 0]
                continue
            out += [info.st_mtime_ns, info.st_size]
        return tuple(out)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction: this process's writers queue on SQLite, BEGIN IMMEDIATE."""
        with contextlib.ExitStack() as stack:
            if self._write_lock is not None:
                stack.enter_context(self._write_lock)
            conn = stack.enter_context(self.engine.connect())
            conn = conn.execution_options(immediate=True)
            stack.enter_context(conn.begin())
            yield conn

    def insert(self, table: Any) -> Any:
        """An INSERT of this dialect (for ON CONFLICT clauses)."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # --- users ----------------------------------------------------------------------------

    def upsert_user(
        self,
        user_id: str,
        *,
        signed_up_at: datetime | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> UserRecord:
        """Register a user or update the fields given; returns the stored row."""
        now = self.clock()
        stmt = self.insert(users).values(
            user_id=user_id,
            signed_up_at=signed_up_at,
            first_seen_at=min(now, signed_up_at) if signed_up_at else now,
            attributes=attributes or {},
            created_at=now,
            updated_at=now,
        )
        updates: dict[str, Any] = {"updated_at": stmt.excluded.updated_at}
        if signed_up_at is not None:
            updates["signed_up_at"] = stmt.excluded.signed_up_at
        if attributes is not None:
            updates["attributes"] = stmt.excluded.attributes
        stmt = stmt.on_conflict_do_update(index_elements=[users.c.user_id], set_=updates)
        with self.writing() as conn:
            conn.execute(stmt)
            row = conn.execute(select(users).where(users.c.user_id == user_id)).one()
        return UserRecord(**row._mapping)

    def get_user(self, user_id: str) -> UserRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.user_id == user_id)).first()
        return UserRecord(**row._mapping) if row else None

    # --- events ---------------------------------------------------------------------------

    def add_events(self, batch: Sequence[NewEvent]) -> IngestResult:
        """Store a batch in one transaction; a repeated ``client_event_id`` is skipped.

        Users first seen here are registered (first_seen_at = their earliest event; a
        ``sign_up`` event sets signed_up_at when it is not known yet).
        """
        if not batch:
            return IngestResult(0, 0, [])
        now = self.clock()
        first_seen: dict[str, datetime] = {}
        signed_up: dict[str, datetime] = {}
        for e in batch:
            first_seen[e.user_id] = min(first_seen.get(e.user_id, e.ts), e.ts)
            if e.type == "sign_up":
                signed_up[e.user_id] = min(signed_up.get(e.user_id, e.ts), e.ts)
        user_rows: list[dict[str, Any]] = [
            {
                "user_id": u,
                "signed_up_at": signed_up.get(u),
                "first_seen_at": ts,
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }
            for u, ts in first_seen.items()
        ]
        user_stmt = self.insert(users)
        user_stmt = user_stmt.on_conflict_do_update(
            index_elements=[users.c.user_id],
            set_={
                "first_seen_at": case(
                    (
                        user_stmt.excluded.first_seen_at < users.c.first_seen_at,
                        user_stmt.excluded.first_seen_at,
                    ),
                    else_=users.c.first_seen_at,
                ),
                "signed_up_at": func.coalesce(
                    users.c.signed_up_at, user_stmt.excluded.signed_up_at
                ),
            },
        )
        event_rows = [
            {
                "user_id": e.user_id,
                "item_id": e.item_id,
                "type": e.type,
                "ts": e.ts,
                "order_id": e.order_id,
                "client_event_id": e.client_event_id,
                "received_at": now,
            }
            for e in batch
        ]
        event_stmt = (
            self.insert(events)
            .on_conflict_do_nothing(index_elements=[events.c.client_event_id])
            .returning(events.c.id, events.c.user_id, events.c.item_id, events.c.type, events.c.ts)
        )
        with self.writing() as conn:
            conn.execute(user_stmt, user_rows)
            stored = [StoredEvent(*row) for row in conn.execute(event_stmt, event_rows)]
        return IngestResult(len(stored), len(batch) - len(stored), stored)

    def events_after(self, after_id: int, limit: int = 10_000) -> list[StoredEvent]:
        query = (
            select(events.c.id, events.c.user_id, events.c.item_id, events.c.type, events.c.ts)
            .where(events.c.id > after_id)
            .order_by(events.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [StoredEvent(*row) for row in conn.execute(query)]

    def events_since(self, since: datetime, limit: int) -> list[StoredEvent]:
        """The newest ``limit`` events at or after ``since``, oldest first."""
        query = (
            select(events.c.id, events.c.user_id, events.c.item_id, events.c.type, events.c.ts)
            .where(events.c.ts >= since)
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [StoredEvent(*row) for row in conn.execute(query)]
        return rows[::-1]

    def purchase_popularity(self) -> Counter[str]:
        """Distinct buyers per item over the whole event log (the no-model fallback)."""
        query = (
            select(events.c.item_id, func.count(events.c.user_id.distinct()))
            .where(events.c.type == "purchase", events.c.item_id.is_not(None))
            .group_by(events.c.item_id)
        )
        with self.engine.connect() as conn:
            return Counter({str(item): int(n) for item, n in conn.execute(query)})

    # --- catalogue ------------------------------------------------------------------------

    def upsert_item(
        self,
        item_id: str,
        *,
        name: str | None = None,
        category: str | None = None,
        price: float | None = None,
        in_stock: bool | None = None,
    ) -> ItemRecord:
        """Create or update one catalogue item; fields left None keep their stored value."""
        now = self.clock()
        values = {"name": name, "category": category, "price": price, "in_stock": in_stock}
        stmt = self.insert(items).values(item_id=item_id, updated_at=now, **values)
        changes = {k: stmt.excluded[k] for k, v in values.items() if v is not None}
        changes["updated_at"] = stmt.excluded.updated_at
        stmt = stmt.on_conflict_do_update(index_elements=[items.c.item_id], set_=changes)
        with self.writing() as conn:
            conn.execute(stmt)
            row = conn.execute(select(items).where(items.c.item_id == item_id)).one()
        return ItemRecord(**row._mapping)

    def items_updated_since(self, since: datetime | None) -> list[ItemRecord]:
        query = select(items).order_by(items.c.updated_at)
        if since is not None:
            query = query.where(items.c.updated_at >= since)
        with self.engine.connect() as conn:
            return [ItemRecord(**row._mapping) for row in conn.execute(query)]


class ActivityStore:
    """Recent events per user and the catalogue overlay, in this worker's memory.

    Bounded: at most ``per_user`` events for each of at most ``max_users`` users (least
    recently active users are forgotten first). Thread-safe.
    """

    def __init__(
        self, per_user: int = 50, max_users: int = 1_000_000, lookback: int | None = None
    ) -> None:
        self.per_user = per_user
        self.max_users = max_users
        # SQLite commits ids in order (one writer); PostgreSQL may not, so re-read a window
        self.lookback = TAIL_LOOKBACK_IDS if lookback is None else lookback
        self._users: OrderedDict[str, deque[Activity]] = OrderedDict()
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._lock = threading.Lock()
        self.watermark = 0
        self.purchases: Counter[str] = Counter()
        self.catalogue: dict[str, CatalogueEntry] = {}
        self.catalogue_watermark: datetime | None = None

    def add(self, rows: Iterable[StoredEvent], *, from_tail: bool = True) -> int:
        """Remember events not seen before; returns how many were new.

        Only rows read by the tail (``from_tail``) move the watermark: a worker's own writes
        may have ids above events of other workers it has not read yet.
        """
        added = 0
        with self._lock:
            for row in rows:
                if from_tail:
                    self.watermark = max(self.watermark, row.id)
                if row.id in self._seen:
                    continue
                self._remember_id(row.id)
                added += 1
                if row.item_id is None:
                    continue
                if row.type == "purchase":
                    self.purchases[row.item_id] += 1
                queue = self._users.get(row.user_id)
                if queue is None:
                    queue = self._users[row.user_id] = deque(maxlen=self.per_user)
                    if len(self._users) > self.max_users:
                        self._users.popitem(last=False)
                else:
                    self._users.move_to_end(row.user_id)
                queue.append(Activity(item_id=row.item_id, type=row.type, ts=row.ts))
        return added

    def _remember_id(self, event_id: int) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        while len(self._seen_order) > 4 * TAIL_LOOKBACK_IDS:
            self._seen.discard(self._seen_order.popleft())

    def recent(self, user_id: str) -> tuple[Activity, ...]:
        queue = self._users.get(user_id)
        return tuple(queue) if queue else ()

    def tail_from(self) -> int:
        """The id after which the next poll should read (with a safety lookback)."""
        return max(0, self.watermark - self.lookback)

    def update_catalogue(self, rows: Iterable[ItemRecord]) -> None:
        with self._lock:
            for row in rows:
                self.catalogue[row.item_id] = CatalogueEntry(
                    category=row.category, in_stock=row.in_stock, name=row.name
                )
                if self.catalogue_watermark is None or row.updated_at > self.catalogue_watermark:
                    self.catalogue_watermark = row.updated_at
