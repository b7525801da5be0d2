"""Every query of recommendation feedback: impressions, clicks, attributions, pruning, the day
series of the console.

The writes run inside the transaction of the events batch they came with
(``activity.Repository.add_events``'s ``also``), so a batch of views, impressions and purchases
is stored whole or not at all, and a purchase is credited in its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select, tuple_

from service.activity.records import StoredEvent
from service.activity.repository import Repository
from service.money import MAX_AMOUNT
from service.offers.repository.history import utc_day
from service.tables import events, rec_attributions, rec_clicks, rec_impressions

PRUNE_BATCH = 5_000
# what an attribution copies from the click or impression it credits
LIST_COLUMNS = (
    "request_id",
    "placement",
    "model_version",
    "recipe",
    "source",
    "experiment_id",
    "arm",
)
# a click whose list's impression of the item was never reported: placement and source
UNKNOWN = "unknown"
CREDITED_TYPES = ("add_to_cart", "purchase")


@dataclass(frozen=True)
class ServedRow:
    """One impression or click, checked, ready to store (``request_id``: the id part)."""

    kind: str  # impression, click
    request_id: str
    user_id: str
    item_id: str
    position: int | None
    placement: str | None  # None: a click that did not say (its impression's, else unknown)
    model_version: str | None
    recipe: str
    source: str | None  # None: a click (its impression's, else the list's single source)
    list_source: str  # a click's fallback: the list's one source, or unknown
    experiment_id: str | None
    arm: str | None
    served_at: datetime
    ts: datetime
    client_event_id: str | None


@dataclass(frozen=True)
class Credit:
    """One stored add-to-cart or purchase credited to a list."""

    event_id: int
    kind: str
    via: str  # click, impression
    source: str


@dataclass
class Written:
    """What one batch's feedback write did."""

    impressions: list[str] = field(default_factory=list)  # source of each stored impression
    clicks: list[str] = field(default_factory=list)
    duplicates: int = 0
    credits: list[Credit] = field(default_factory=list)


@dataclass(frozen=True)
class Windows:
    """The attribution windows (last touch): a click's, then an impression's."""

    click: timedelta
    impression: timedelta


class FeedbackRepository:
    """Impressions, clicks and attributions, on the service's database."""

    def __init__(self, base: Repository) -> None:
        self.base = base

    # --- the writes, inside the events batch's transaction ---------------------------------

    def write(
        self,
        conn: Connection,
        rows: Sequence[ServedRow],
        stored: Sequence[StoredEvent],
        windows: Windows,
    ) -> Written:
        """Store ``rows`` (a repeat skipped), then credit the stored carts and purchases."""
        out = Written()
        impressions = [r for r in rows if r.kind == "impression"]
        clicks = [r for r in rows if r.kind == "click"]
        if impressions:
            values = [
                _values(r, r.source or r.list_source, r.placement or UNKNOWN) for r in impressions
            ]
            out.impressions = self._insert(conn, rec_impressions, values)
        if clicks:
            shown = self._shown(conn, [(r.request_id, r.item_id) for r in clicks])
            values = []
            for r in clicks:
                position, placement, source = shown.get(
                    (r.request_id, r.item_id), (None, r.placement or UNKNOWN, r.list_source)
                )
                row = _values(r, source, placement)
                row["position"] = position
                values.append(row)
            out.clicks = self._insert(conn, rec_clicks, values)
        out.duplicates = len(rows) - len(out.impressions) - len(out.clicks)
        credited = [s for s in stored if s.type in CREDITED_TYPES and s.item_id is not None]
        if credited:
            out.credits = self._attribute(conn, credited, windows)
        return out

    def _insert(self, conn: Connection, table: Any, values: list[dict[str, Any]]) -> list[str]:
        """Insert, skipping any row whose (request_id, item_id) or client_event_id is stored;
        the sources of the rows stored. In key order, so that concurrent batches over the same
        keys wait for each other rather than deadlock on PostgreSQL."""
        values.sort(key=lambda v: (v["request_id"], v["item_id"]))
        if conn.dialect.name == "sqlite":
            return self._insert_sqlite(conn, table, values)
        stmt = self.base.insert(table).on_conflict_do_nothing().returning(table.c.source)
        return [str(s) for s in conn.execute(stmt, values).scalars()]

    @staticmethod
    def _insert_sqlite(conn: Connection, table: Any, values: list[dict[str, Any]]) -> list[str]:
        """The same on SQLite through the driver's own executemany (a tenth of the Python work
        of a multi-row INSERT ... RETURNING built per batch): the one writer holds the database
        from BEGIN IMMEDIATE, so the rows above the largest id before are exactly this call's."""
        names = list(values[0])
        dialect = conn.dialect
        processors = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names]
        rows = [
            tuple(v[n] if f is None else f(v[n]) for n, f in zip(names, processors, strict=True))
            for v in values
        ]
        before = conn.execute(select(func.max(table.c.id))).scalar() or 0
        sql = (
            f"INSERT INTO {table.name} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' * len(names))}) ON CONFLICT DO NOTHING"
        )
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, rows)
            stored = cursor.rowcount
        finally:
            cursor.close()
        if stored == len(values):
            return [str(v["source"]) for v in values]
        query = select(table.c.source).where(table.c.id > before).order_by(table.c.id)
        return [str(s) for s in conn.execute(query).scalars()]

    @staticmethod
    def _shown(
        conn: Connection, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int | None, str, str]]:
        """(position, placement, source) of the stored impressions of (request_id, item_id)."""
        imp = rec_impressions
        found: dict[tuple[str, str], tuple[int | None, str, str]] = {}
        for start in range(0, len(pairs), 500):
            chunk = list(set(pairs[start : start + 500]))
            query = select(
                imp.c.request_id, imp.c.item_id, imp.c.position, imp.c.placement, imp.c.source
            ).where(tuple_(imp.c.request_id, imp.c.item_id).in_(chunk))
            for request_id, item_id, position, placement, source in conn.execute(query):
                found[(request_id, item_id)] = (position, placement, source)
        return found

    def _attribute(
        self, conn: Connection, stored: Sequence[StoredEvent], windows: Windows
    ) -> list[Credit]:
        """Credit each event to the latest click of its user and item within the click
        window, else to the latest impression within the impression window (last touch)."""
        ev = events
        details = {
            int(r.id): r
            for r in conn.execute(
                select(ev.c.id, ev.c.quantity, ev.c.price, ev.c.currency).where(
                    ev.c.id.in_([s.id for s in stored])
                )
            )
        }
        pairs = list({(s.user_id, str(s.item_id)) for s in stored})
        latest = max(s.ts for s in stored)
        earliest = min(s.ts for s in stored)
        touches = {
            "click": _touches(conn, rec_clicks, pairs, earliest - windows.click, latest),
            "impression": (
                _touches(conn, rec_impressions, pairs, earliest - windows.impression, latest)
                if windows.impression > timedelta(0)
                else {}
            ),
        }
        rows: list[dict[str, Any]] = []
        credits: list[Credit] = []
        for s in stored:
            key = (s.user_id, str(s.item_id))
            touch = None
            via = ""
            for via, window in (("click", windows.click), ("impression", windows.impression)):
                touch = _last_touch(touches[via].get(key, ()), s.ts, window)
                if touch is not None:
                    break
            if touch is None:
                continue
            detail = details.get(s.id)
            quantity = int(detail.quantity or 1) if detail is not None else 1
            price = detail.price if detail is not None else None
            revenue = None
            currency = None
            if s.type == "purchase" and price is not None and detail is not None:
                revenue = Decimal(price) * quantity
                currency = detail.currency
                if revenue >= MAX_AMOUNT:  # not storable; the purchase is credited all the same
                    revenue = currency = None
            row = {c: touch[c] for c in LIST_COLUMNS}
            row.update(
                event_id=s.id,
                kind=s.type,
                via=via,
                user_id=s.user_id,
                item_id=s.item_id,
                quantity=quantity if s.type == "purchase" else 1,
                revenue=revenue,
                currency=currency,
                ts=s.ts,
            )
            rows.append(row)
            credits.append(Credit(s.id, s.type, via, str(touch["source"])))
        if rows:
            stmt = self.base.insert(rec_attributions).on_conflict_do_nothing(
                index_elements=[rec_attributions.c.event_id]
            )
            conn.execute(stmt, rows)
        return credits

    # --- retention -------------------------------------------------------------------------

    def prune(self, before: datetime) -> int:
        """Delete the impressions, clicks and attributions older than ``before`` (by their
        ``ts``); how many rows went. In batches, each its own transaction."""
        deleted = 0
        for table, key in (
            (rec_attributions, rec_attributions.c.event_id),
            (rec_clicks, rec_clicks.c.id),
            (rec_impressions, rec_impressions.c.id),
        ):
            old = select(key).where(table.c.ts < before).limit(PRUNE_BATCH)
            while True:
                with self.base.writing() as conn:
                    ids = list(conn.execute(old).scalars())
                    if ids:
                        conn.execute(delete(table).where(key.in_(ids)))
                deleted += len(ids)
                if len(ids) < PRUNE_BATCH:
                    break
        return deleted

    # --- the console's day series ----------------------------------------------------------

    def daily(self, since: datetime | None, until: datetime | None) -> list[tuple[str, int, int]]:
        """(UTC day, impressions, clicked impressions) per day shown, in day order."""
        imp, clk = rec_impressions, rec_clicks
        day = utc_day(imp.c.ts, self.base.engine.dialect.name)
        same = and_(clk.c.request_id == imp.c.request_id, clk.c.item_id == imp.c.item_id)
        query = select(day, func.count(), func.count(clk.c.id)).select_from(
            imp.outerjoin(clk, same)
        )
        if since is not None:
            query = query.where(imp.c.ts >= since)
        if until is not None:
            query = query.where(imp.c.ts < until)
        query = query.group_by(day).order_by(day)
        with self.base.engine.connect() as conn:
            return [(str(d), int(n), int(c)) for d, n, c in conn.execute(query)]


def _values(r: ServedRow, source: str, placement: str) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "user_id": r.user_id,
        "item_id": r.item_id,
        "position": r.position,
        "placement": placement,
        "model_version": r.model_version,
        "recipe": r.recipe,
        "source": source,
        "experiment_id": r.experiment_id,
        "arm": r.arm,
        "served_at": r.served_at,
        "ts": r.ts,
        "client_event_id": r.client_event_id,
    }


def _touches(
    conn: Connection,
    table: Any,
    pairs: Sequence[tuple[str, str]],
    since: datetime,
    until: datetime,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The rows of ``table`` of each (user, item) of ``pairs`` in [since, until], by pair."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    columns = [
        table.c.id,
        table.c.user_id,
        table.c.item_id,
        table.c.ts,
        *[table.c[c] for c in LIST_COLUMNS],
    ]
    for start in range(0, len(pairs), 500):
        query = select(*columns).where(
            tuple_(table.c.user_id, table.c.item_id).in_(list(pairs[start : start + 500])),
            table.c.ts >= since,
            table.c.ts <= until,
        )
        for row in conn.execute(query):
            m = dict(row._mapping)
            found.setdefault((m["user_id"], m["item_id"]), []).append(m)
    return found


def _last_touch(
    touches: Sequence[dict[str, Any]], at: datetime, window: timedelta
) -> dict[str, Any] | None:
    """The latest of ``touches`` at or before ``at`` and within ``window`` of it."""
    if window <= timedelta(0):
        return None
    inside = [t for t in touches if at - window <= t["ts"] <= at]
    return max(inside, key=lambda t: (t["ts"], t["id"])) if inside else None
