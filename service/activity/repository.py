"""Every query on users, events and items (the shop's behaviour as stored)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite

from service.activity.records import (
    Activity,
    IngestResult,
    ItemChange,
    ItemOutcome,
    ItemRecord,
    ItemResult,
    NewEvent,
    StoredEvent,
    UserRecord,
)
from service.clock import Clock, utc_now
from service.errors import SignUpMovedLater
from service.money import to_units
from service.tables import events, items, users

# the users of a list that still have their row, their rows held (Repository.present_users)
_PRESENT_USERS = (
    select(users.c.user_id)
    .where(users.c.user_id.in_(bindparam("users", expanding=True)))
    .with_for_update(read=True)
)


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

    @staticmethod
    def present_users(conn: Connection, user_ids: Sequence[str]) -> set[str]:
        """Which of ``user_ids`` still have their row, inside the caller's write transaction.

        A write made from facts read earlier calls it before writing about a user, so an
        erasure that ran since is not undone; FOR SHARE on PostgreSQL holds the rows until the
        write commits (an erasure starting meanwhile waits, then deletes what it made), and
        SQLite's single writer orders the two.
        """
        if not user_ids:
            return set()
        rows = conn.execute(_PRESENT_USERS, {"users": list(user_ids)})
        return {str(r[0]) for r in rows}

    def upsert_user(
        self,
        user_id: str,
        *,
        signed_up_at: datetime | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> UserRecord:
        """Register a user or update the fields given; returns the stored row.

        ``signed_up_at`` never moves later once set (issue 12, item 7: a later sign-up would
        reopen the new-user window of an old account): an earlier or equal one is taken, a
        later one raises ``SignUpMovedLater`` and nothing of the request is written. The rule
        is the WHERE of the upsert, checked on the row as the write finds it (locked on
        PostgreSQL, one writer on SQLite), so two racing PUTs cannot let the later one win.
        """
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
        keep_earliest = None
        if signed_up_at is not None:
            keep_earliest = or_(
                users.c.signed_up_at.is_(None), users.c.signed_up_at >= stmt.excluded.signed_up_at
            )
        stmt = stmt.on_conflict_do_update(
            index_elements=[users.c.user_id], set_=updates, where=keep_earliest
        ).returning(users.c.user_id)
        with self.writing() as conn:
            written = conn.execute(stmt).first()
            row = conn.execute(select(users).where(users.c.user_id == user_id)).one()
        if written is None:  # the WHERE refused: a sign-up time earlier than this one is stored
            raise SignUpMovedLater(row.signed_up_at)
        return UserRecord(**row._mapping)

    def get_user(self, user_id: str) -> UserRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.user_id == user_id)).first()
        return UserRecord(**row._mapping) if row else None

    # --- events ---------------------------------------------------------------------------

    def add_events(
        self,
        batch: Sequence[NewEvent],
        also: Callable[[Connection, list[StoredEvent]], None] | None = None,
    ) -> IngestResult:
        """Store a batch in one transaction; a repeated ``client_event_id`` is skipped.

        Users first seen here are registered (first_seen_at = their earliest event; a
        ``sign_up`` event sets signed_up_at when it is not known yet). ``also`` runs in the
        same transaction, after the events, with those stored (the feedback rows and the
        attributions of issue 14, ``service.feedback``), even for an empty batch.
        """
        if not batch and also is None:
            return IngestResult(0, 0, [])
        stored: list[StoredEvent] = []
        with self.writing() as conn:
            if batch:
                user_stmt, user_rows, event_rows = self._event_rows(batch)
                event_stmt = (
                    self.insert(events)
                    .on_conflict_do_nothing(index_elements=[events.c.client_event_id])
                    .returning(
                        events.c.id, events.c.user_id, events.c.item_id, events.c.type, events.c.ts
                    )
                )
                conn.execute(user_stmt, user_rows)
                stored = [StoredEvent(*row) for row in conn.execute(event_stmt, event_rows)]
            if also is not None:
                also(conn, stored)
        return IngestResult(len(stored), len(batch) - len(stored), stored)

    def _event_rows(
        self, batch: Sequence[NewEvent]
    ) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        """(the users upsert, its rows, the event rows) of a batch."""
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
                # a purchase is at least one unit; other events carry no money
                "quantity": (e.quantity or 1) if e.type == "purchase" else None,
                "price": e.price,
                "currency": e.currency if e.price is not None else None,
            }
            for e in batch
        ]
        return user_stmt, user_rows, event_rows

    def import_events(self, batch: Sequence[NewEvent]) -> tuple[int, int]:
        """Bulk-store past events (``recoffer import``): (stored, skipped as already there).

        As :meth:`add_events` (users registered, a repeated ``client_event_id`` skipped) but
        returns no rows; on PostgreSQL the batch goes through COPY into a temporary table and
        two INSERT ... SELECT, as a multi-row VALUES statement spends its time in the driver.
        """
        if not batch:
            return 0, 0
        if self.engine.dialect.name != "postgresql":
            # no RETURNING: the driver's own executemany, and its count of rows changed
            user_stmt, user_rows, event_rows = self._event_rows(batch)
            event_stmt = self.insert(events).on_conflict_do_nothing(
                index_elements=[events.c.client_event_id]
            )
            with self.writing() as conn:
                conn.execute(user_stmt, user_rows)
                stored = conn.execute(event_stmt, event_rows).rowcount
            return stored, len(batch) - stored
        now = self.clock()
        names = "user_id, item_id, type, ts, order_id, client_event_id, quantity, price, currency"
        with self.writing() as conn:
            conn.exec_driver_sql(
                "CREATE TEMPORARY TABLE import_batch (user_id text, item_id text, type text, "
                "ts timestamptz, order_id text, client_event_id text, quantity integer, "
                "price bigint, currency text) ON COMMIT DROP"
            )
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY import_batch ({names}) FROM STDIN") as copy:
                for e in batch:
                    purchase = e.type == "purchase"
                    copy.write_row(
                        (
                            e.user_id,
                            e.item_id,
                            e.type,
                            e.ts,
                            e.order_id,
                            e.client_event_id,
                            (e.quantity or 1) if purchase else None,
                            None if e.price is None else to_units(e.price),
                            e.currency if e.price is not None else None,
                        )
                    )
            conn.execute(
                text(
                    "INSERT INTO users (user_id, signed_up_at, first_seen_at, attributes, "
                    "created_at, updated_at) "
                    "SELECT user_id, MIN(ts) FILTER (WHERE type = 'sign_up'), MIN(ts), "
                    "CAST('{}' AS json), :now, :now FROM import_batch GROUP BY user_id "
                    "ON CONFLICT (user_id) DO UPDATE SET "
                    "first_seen_at = LEAST(users.first_seen_at, excluded.first_seen_at), "
                    "signed_up_at = COALESCE(users.signed_up_at, excluded.signed_up_at)"
                ),
                {"now": now},
            )
            stored = conn.execute(
                text(
                    f"INSERT INTO events ({names}, received_at) "
                    f"SELECT {names}, :now FROM import_batch "
                    "ON CONFLICT (client_event_id) DO NOTHING"
                ),
                {"now": now},
            ).rowcount
        return stored, len(batch) - stored

    def events_after(self, after_id: int, limit: int = 10_000) -> list[StoredEvent]:
        query = (
            select(events.c.id, events.c.user_id, events.c.item_id, events.c.type, events.c.ts)
            .where(events.c.id > after_id)
            .order_by(events.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [StoredEvent(*row) for row in conn.execute(query)]

    def recent_activity(self, user_id: str, limit: int) -> list[Activity]:
        """The user's newest ``limit`` events with an item, oldest first (the session read's
        fallback when Redis cannot answer, ``service.activity.sessions``)."""
        query = (
            select(events.c.item_id, events.c.type, events.c.ts)
            .where(events.c.user_id == user_id, events.c.item_id.is_not(None))
            .order_by(events.c.ts.desc(), events.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [Activity(item_id=i, type=t, ts=ts) for i, t, ts in conn.execute(query)]
        return rows[::-1]

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
        price: Decimal | None = None,
        currency: str | None = None,
        in_stock: bool | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> ItemRecord:
        """Create or update one catalogue item; fields left None keep their stored value."""
        change = ItemChange(
            "upsert",
            item_id,
            name=name,
            category=category,
            price=price,
            currency=currency,
            in_stock=in_stock,
            attributes=attributes,
        )
        with self.writing() as conn:
            self._apply(conn, change, self.clock())
            row = conn.execute(select(items).where(items.c.item_id == item_id)).one()
        return ItemRecord(**row._mapping)

    def apply_items(
        self, changes: Sequence[ItemChange]
    ) -> tuple[list[ItemResult], list[ItemRecord]]:
        """Apply a catalogue batch in one transaction (all or nothing), in order.

        Returns (what each operation did, the rows as stored afterwards).
        """
        if not changes:
            return [], []
        ids = list(dict.fromkeys(c.item_id for c in changes))
        now = self.clock()
        results: list[ItemResult] = []
        with self.writing() as conn:
            status = {
                str(i): str(s)
                for i, s in conn.execute(
                    select(items.c.item_id, items.c.status).where(items.c.item_id.in_(ids))
                )
            }
            for change in changes:
                before = status.get(change.item_id)
                outcome, after = _outcome(change.op, before)
                if after is not None:
                    self._apply(conn, change, now)
                    status[change.item_id] = after
                results.append(ItemResult(change.item_id, change.op, outcome))
            rows = conn.execute(select(items).where(items.c.item_id.in_(ids)))
            records = [ItemRecord(**row._mapping) for row in rows]
        return results, records

    def _apply(self, conn: Connection, change: ItemChange, now: datetime) -> None:
        """Write one operation of a batch."""
        if change.op == "upsert":
            values: dict[str, Any] = {
                "name": change.name,
                "category": change.category,
                "price": change.price,
                "currency": change.currency if change.price is not None else None,
                "in_stock": change.in_stock,
                "attributes": change.attributes,
            }
            stmt = self.insert(items).values(
                item_id=change.item_id, updated_at=now, created_at=now, status="active", **values
            )
            updates = {k: stmt.excluded[k] for k, v in values.items() if v is not None}
            updates["updated_at"] = stmt.excluded.updated_at
            updates["status"] = case(  # an upsert brings a deleted item back, keeps it hidden
                (items.c.status == "deleted", "active"), else_=items.c.status
            )
            conn.execute(stmt.on_conflict_do_update(index_elements=[items.c.item_id], set_=updates))
            return
        where = items.c.item_id == change.item_id
        if change.op == "delete":
            cleared = dict.fromkeys(("name", "category", "price", "currency", "in_stock"))
            update = (
                items.update()
                .where(where)
                .values(status="deleted", attributes=None, updated_at=now, **cleared)
            )
        elif change.op == "hide":
            update = (
                items.update()
                .where(where, items.c.status != "deleted")
                .values(status="hidden", updated_at=now)
            )
        else:  # show
            update = (
                items.update()
                .where(where, items.c.status == "hidden")
                .values(status="active", updated_at=now)
            )
        conn.execute(update)

    def import_items(self, rows: Sequence[dict[str, Any]], *, replace: bool = True) -> int:
        """Bulk-write catalogue rows (``recoffer import``) in one statement; returns rows written.

        Each row has item_id and any of name, category, price, currency, in_stock, attributes.
        ``replace``: the columns the rows name replace the stored ones, and a deleted item comes
        back; otherwise only items not in the catalogue yet are added. A repeated id: the last.
        """
        latest = {r["item_id"]: r for r in rows}
        if not latest:
            return 0
        now = self.clock()
        columns = ("name", "category", "price", "currency", "in_stock", "attributes")
        given = [c for c in columns if any(c in r for r in latest.values())]
        values = [
            {"item_id": i, "updated_at": now, "created_at": now, "status": "active"}
            | {c: r.get(c) for c in given}
            for i, r in latest.items()
        ]
        stmt = self.insert(items)
        if replace:
            updates = {c: stmt.excluded[c] for c in given}
            updates |= {"updated_at": stmt.excluded.updated_at, "status": stmt.excluded.status}
            stmt = stmt.on_conflict_do_update(index_elements=[items.c.item_id], set_=updates)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[items.c.item_id])
        with self.writing() as conn:
            written = conn.execute(stmt.returning(items.c.item_id), values).all()
        return len(written)

    def item_event_counts(
        self, item_ids: Sequence[str], since: datetime
    ) -> list[tuple[str, str, str, int]]:
        """(item, user, event type, events) of ``item_ids`` at or after ``since``, in one query.

        What the products a model does not know are folded in from (issue 14).
        """
        if not item_ids:
            return []
        query = (
            select(events.c.item_id, events.c.user_id, events.c.type, func.count())
            .where(
                events.c.item_id.in_(bindparam("items", expanding=True)),
                events.c.ts >= since,
                events.c.type.in_(("view", "add_to_cart", "purchase")),
            )
            .group_by(events.c.item_id, events.c.user_id, events.c.type)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"items": list(item_ids)})
            return [(str(i), str(u), str(t), int(n)) for i, u, t, n in rows]

    def items_updated_since(self, since: datetime | None) -> list[ItemRecord]:
        query = select(items).order_by(items.c.updated_at)
        if since is not None:
            query = query.where(items.c.updated_at >= since)
        with self.engine.connect() as conn:
            return [ItemRecord(**row._mapping) for row in conn.execute(query)]


def _outcome(op: str, before: str | None) -> tuple[ItemOutcome, str | None]:
    """(what ``op`` does to an item whose status is ``before``, its status after; None: nothing)."""
    if op == "upsert":
        if before in (None, "deleted"):
            return "created", "active"
        return "updated", before
    if before is None or (before == "deleted" and op != "delete"):
        return "not_found", None
    if op == "delete":
        return "deleted", "deleted"
    if op == "hide":
        return "hidden", "hidden"
    return "shown", "active"
