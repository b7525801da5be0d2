"""Every query of recommendation feedback: lists shown (one row per impression event), clicks,
attributions, pruning, the day series of the console.

The writes run inside the transaction of the events batch they came with
(``activity.Repository.add_events``'s ``also``), so a batch of views, impressions and purchases
is stored whole or not at all, and a purchase is credited in its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Dialect, delete, func, select, tuple_, update

from service.activity.records import StoredEvent
from service.activity.repository import Repository
from service.feedback.token import LETTER_SOURCES, SOURCE_LETTERS
from service.money import MAX_AMOUNT
from service.offers.repository.history import utc_day
from service.tables import UTCDateTime, events, rec_attributions, rec_clicks, rec_impressions

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
    "position",  # None: a click of an item not in its list's row (not counted by tally)
)
# a click whose list's impression of the item was never reported: placement and source
UNKNOWN = "unknown"
CREDITED_TYPES = ("add_to_cart", "purchase")


@dataclass(frozen=True, slots=True)
class ShownList:
    """One list shown (one impression event), checked, ready to store (``request_id``: the id
    part; ``letters``: the source letter of each shown item, ``token.SOURCE_LETTERS``)."""

    request_id: str
    user_id: str
    placement: str
    items: tuple[str, ...]
    positions: tuple[int, ...]
    letters: str
    model_version: str | None
    recipe: str
    experiment_id: str | None
    arm: str | None
    served_at: datetime
    ts: datetime
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class ClickRow:
    """One click, checked, ready to store; its position, source and placement are its list's
    row's when the list was reported shown with the item."""

    request_id: str
    user_id: str
    item_id: str
    placement: str | None  # None: the click did not say (its list's, else unknown)
    model_version: str | None
    recipe: str
    list_source: str  # when the item is not in its list's row: the list's one source, or unknown
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

    lists: int = 0  # lists stored (impression events)
    shown: list[str] = field(default_factory=list)  # each stored list's source letters
    clicks: list[str] = field(default_factory=list)  # source of each stored click
    duplicates: int = 0
    credits: list[Credit] = field(default_factory=list)


@dataclass(frozen=True)
class Windows:
    """The attribution windows (last touch): a click's, then an impression's."""

    click: timedelta
    impression: timedelta


# where a list's row says an item was: (position, source, placement)
Place = tuple[int, str, str]


class FeedbackRepository:
    """Lists shown, clicks and attributions, on the service's database."""

    def __init__(self, base: Repository) -> None:
        self.base = base

    # --- the writes, inside the events batch's transaction ---------------------------------

    def write(
        self,
        conn: Connection,
        rows: Sequence[ShownList | ClickRow],
        stored: Sequence[StoredEvent],
        windows: Windows,
    ) -> Written:
        """Store ``rows`` (a repeat skipped), then credit the stored carts and purchases."""
        out = Written()
        lists = [r for r in rows if isinstance(r, ShownList)]
        clicks = [r for r in rows if isinstance(r, ClickRow)]
        times = _Times(conn.dialect)
        if lists:
            new = self._insert_lists(conn, lists, times)
            out.lists = len(new)
            out.shown = [r.letters for r in new]
            if new:
                self._place_earlier_clicks(conn, new)
        if clicks:
            out.clicks = self._insert_clicks(conn, clicks, times)
        out.duplicates = len(rows) - out.lists - len(out.clicks)
        credited = [s for s in stored if s.type in CREDITED_TYPES and s.item_id is not None]
        if credited:
            out.credits = self._attribute(conn, credited, windows)
        return out

    def _insert_lists(
        self, conn: Connection, lists: list[ShownList], times: _Times
    ) -> list[ShownList]:
        """Insert one row per list, skipping a list (``request_id``) or ``client_event_id``
        stored before; the lists stored. In key order, so that concurrent batches over the
        same keys wait for each other rather than deadlock on PostgreSQL."""
        first: dict[str, ShownList] = {}
        for r in lists:  # a list reported twice in one batch: the first report counts
            first.setdefault(r.request_id, r)
        lists = sorted(first.values(), key=lambda r: r.request_id)
        imp = rec_impressions
        if conn.dialect.name == "sqlite":
            rows = [
                (
                    r.request_id,
                    r.user_id,
                    r.placement,
                    json.dumps(r.items),
                    json.dumps(r.positions),
                    r.letters,
                    len(r.items),
                    r.model_version,
                    r.recipe,
                    r.experiment_id,
                    r.arm,
                    times(r.served_at),
                    times(r.ts),
                    r.client_event_id,
                )
                for r in lists
            ]
            # the driver's cursor alone: a statement through SQLAlchemy costs more Python than
            # the insert of a list's row
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                before = cursor.execute(f"SELECT max(id) FROM {imp.name}").fetchone()[0] or 0
                cursor.executemany(_insert_sql(imp, LIST_ROW), rows)
                if cursor.rowcount == len(lists):
                    return lists
                # some were repeats: the rows above the largest id before are this call's
                found = cursor.execute(f"SELECT request_id FROM {imp.name} WHERE id > ?", (before,))
                ids = {str(row[0]) for row in found}
            finally:
                cursor.close()
            return [r for r in lists if r.request_id in ids]
        values = [
            {
                "request_id": r.request_id,
                "user_id": r.user_id,
                "placement": r.placement,
                "items": list(r.items),
                "positions": list(r.positions),
                "sources": r.letters,
                "n_items": len(r.items),
                "model_version": r.model_version,
                "recipe": r.recipe,
                "experiment_id": r.experiment_id,
                "arm": r.arm,
                "served_at": r.served_at,
                "ts": r.ts,
                "client_event_id": r.client_event_id,
            }
            for r in lists
        ]
        stmt = self.base.insert(imp).on_conflict_do_nothing().returning(imp.c.request_id)
        ids = set(conn.execute(stmt, values).scalars())
        return [r for r in lists if r.request_id in ids]

    def _insert_clicks(self, conn: Connection, clicks: list[ClickRow], times: _Times) -> list[str]:
        """Insert the clicks (a repeated (request_id, item_id) or client_event_id skipped),
        each placed in its list's row; the sources of those stored, in key order."""
        clicks = sorted(clicks, key=lambda r: (r.request_id, r.item_id))
        lists = self._lists(conn, list({r.request_id for r in clicks}))
        values = []
        for r in clicks:
            place = _place(lists.get(r.request_id), r.item_id)
            if place is None:
                listed = lists.get(r.request_id)
                placement = r.placement or (listed[3] if listed is not None else UNKNOWN)
                position, source = None, r.list_source
            else:
                position, source, placement = place
            values.append(
                {
                    "request_id": r.request_id,
                    "user_id": r.user_id,
                    "item_id": r.item_id,
                    "position": position,
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
            )
        clk = rec_clicks
        if conn.dialect.name == "sqlite":
            rows = [
                tuple(times(v[n]) if n in TIME_COLUMNS else v[n] for n in CLICK_ROW)  # type: ignore[arg-type]
                for v in values
            ]
            before = conn.execute(select(func.max(clk.c.id))).scalar() or 0
            if _executemany_sqlite(conn, clk, CLICK_ROW, rows) == len(values):
                return [str(v["source"]) for v in values]
            query = select(clk.c.source).where(clk.c.id > before).order_by(clk.c.id)
            return [str(s) for s in conn.execute(query).scalars()]
        stmt = self.base.insert(clk).on_conflict_do_nothing().returning(clk.c.source)
        return [str(s) for s in conn.execute(stmt, values).scalars()]

    def _place_earlier_clicks(self, conn: Connection, new: Sequence[ShownList]) -> None:
        """Clicks stored before their list was reported shown (a frontend that sends clicks at
        once and impressions in batches): placed now in the list's row, and the carts and
        purchases credited to them too."""
        clk, att = rec_clicks, rec_attributions
        by_id = {r.request_id: r for r in new}
        keys = list(by_id)
        waiting: list[Any] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            if conn.dialect.name == "sqlite":  # the driver's cursor: the common case finds none
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    sql = (
                        f"SELECT id, request_id, item_id FROM {clk.name} WHERE position IS NULL "
                        f"AND request_id IN ({', '.join('?' * len(chunk))})"
                    )
                    waiting += cursor.execute(sql, chunk).fetchall()
                finally:
                    cursor.close()
                continue
            query = select(clk.c.id, clk.c.request_id, clk.c.item_id).where(
                clk.c.request_id.in_(chunk), clk.c.position.is_(None)
            )
            waiting += conn.execute(query).all()
        for click_id, request_id, item_id in waiting:
            r = by_id[request_id]
            place = _place(_listed(r), item_id)
            if place is None:
                continue
            position, source, placement = place
            fix = {"position": position, "source": source, "placement": placement}
            conn.execute(update(clk).where(clk.c.id == click_id).values(**fix))
            conn.execute(
                update(att)
                .where(
                    att.c.request_id == request_id,
                    att.c.item_id == item_id,
                    att.c.position.is_(None),
                )
                .values(**fix)
            )

    @staticmethod
    def _lists(conn: Connection, request_ids: Sequence[str]) -> dict[str, Listed]:
        """(items, positions, letters, placement) of the stored lists of ``request_ids``."""
        imp = rec_impressions
        found: dict[str, Listed] = {}
        for start in range(0, len(request_ids), 500):
            query = select(
                imp.c.request_id, imp.c["items"], imp.c.positions, imp.c.sources, imp.c.placement
            ).where(imp.c.request_id.in_(request_ids[start : start + 500]))
            for request_id, items, positions, letters, placement in conn.execute(query):
                found[request_id] = (list(items), list(positions), str(letters), str(placement))
        return found

    def _attribute(
        self, conn: Connection, stored: Sequence[StoredEvent], windows: Windows
    ) -> list[Credit]:
        """Credit each event to the latest click of its user and item within the click
        window, else to the latest list shown to the user within the impression window that
        holds the item (last touch)."""
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
        clicked = _clicks(conn, pairs, earliest - windows.click, latest)
        shown: dict[str, list[dict[str, Any]]] = {}
        if windows.impression > timedelta(0):
            users = list({s.user_id for s in stored})
            shown = _shown_lists(conn, users, earliest - windows.impression, latest)
        rows: list[dict[str, Any]] = []
        credits: list[Credit] = []
        for s in stored:
            item = str(s.item_id)
            via = "click"
            touch = _last_touch(clicked.get((s.user_id, item), ()), s.ts, windows.click)
            if touch is None:
                via = "impression"
                holding = []
                for t in shown.get(s.user_id, ()):
                    place = _place(_listed_row(t), item)
                    if place is not None:
                        position, source, _ = place
                        holding.append({**t, "position": position, "source": source})
                touch = _last_touch(holding, s.ts, windows.impression)
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
        """(UTC day, impressions, clicked impressions) per day shown, in day order: items
        shown, and clicks of items in their list's row, by the day the list was shown."""
        imp, clk = rec_impressions, rec_clicks
        day = utc_day(imp.c.ts, self.base.engine.dialect.name)
        where: list[ColumnElement[bool]] = []
        if since is not None:
            where.append(imp.c.ts >= since)
        if until is not None:
            where.append(imp.c.ts < until)
        shown = select(day, func.sum(imp.c.n_items)).where(*where).group_by(day)
        clicked = (
            select(day, func.count())
            .select_from(imp.join(clk, clk.c.request_id == imp.c.request_id))
            .where(clk.c.position.is_not(None), *where)
            .group_by(day)
        )
        with self.base.engine.connect() as conn:
            days = {str(d): [int(n or 0), 0] for d, n in conn.execute(shown)}
            for d, c in conn.execute(clicked):
                days.setdefault(str(d), [0, 0])[1] = int(c)
        return [(d, n, c) for d, (n, c) in sorted(days.items())]


# the columns of one list's row and one click's, in the order the SQLite path binds them
LIST_ROW = (
    "request_id",
    "user_id",
    "placement",
    "items",
    "positions",
    "sources",
    "n_items",
    "model_version",
    "recipe",
    "experiment_id",
    "arm",
    "served_at",
    "ts",
    "client_event_id",
)
CLICK_ROW = (
    "request_id",
    "user_id",
    "item_id",
    "position",
    "placement",
    "model_version",
    "recipe",
    "source",
    "experiment_id",
    "arm",
    "served_at",
    "ts",
    "client_event_id",
)
TIME_COLUMNS = ("served_at", "ts")
# a stored list as the writes read it: (items, positions, letters, placement)
Listed = tuple[list[str], list[int], str, str]


class _Times:
    """A UTC column's bound value of each distinct datetime, computed once per batch (a
    batch's lists mostly share their ``ts``; a per-row processor call costs more than the
    row's insert)."""

    def __init__(self, dialect: Dialect) -> None:
        impl = UTCDateTime()
        inner = impl.impl.dialect_impl(dialect).bind_processor(dialect)
        self._dialect = dialect
        self._impl = impl
        self._inner = inner
        self._seen: dict[datetime, Any] = {}

    def __call__(self, moment: datetime) -> Any:
        found = self._seen.get(moment)
        if found is None:
            found = self._impl.process_bind_param(moment, self._dialect)
            if self._inner is not None:
                found = self._inner(found)
            self._seen[moment] = found
        return found


def _executemany_sqlite(
    conn: Connection, table: Any, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> int:
    """INSERT ... ON CONFLICT DO NOTHING of ``rows`` (bound values, in ``names`` order)
    through the driver's own executemany (a tenth of the Python work of a multi-row INSERT
    ... RETURNING built per batch); how many were stored. The one writer holds the database
    from BEGIN IMMEDIATE, so the rows above the largest id before are exactly this call's."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(_insert_sql(table, names), rows)
        return int(cursor.rowcount)
    finally:
        cursor.close()


def _insert_sql(table: Any, names: Sequence[str]) -> str:
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"VALUES ({', '.join('?' * len(names))}) ON CONFLICT DO NOTHING"
    )


def _listed(r: ShownList) -> Listed:
    return (list(r.items), list(r.positions), r.letters, r.placement)


def _listed_row(row: dict[str, Any]) -> Listed:
    return (list(row["items"]), list(row["positions"]), str(row["sources"]), row["placement"])


def _place(listed: Listed | None, item_id: str) -> Place | None:
    """(position, source, placement) of ``item_id`` in a list's row; None when not in it."""
    if listed is None:
        return None
    items, positions, letters, placement = listed
    try:
        n = items.index(item_id)
    except ValueError:
        return None
    return positions[n], LETTER_SOURCES.get(letters[n], UNKNOWN), placement


def _clicks(
    conn: Connection,
    pairs: Sequence[tuple[str, str]],
    since: datetime,
    until: datetime,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The clicks of each (user, item) of ``pairs`` in [since, until], by pair."""
    clk = rec_clicks
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    columns = [clk.c.id, clk.c.user_id, clk.c.item_id, clk.c.ts, clk.c.position]
    columns += [clk.c[c] for c in LIST_COLUMNS]
    for start in range(0, len(pairs), 500):
        query = select(*columns).where(
            tuple_(clk.c.user_id, clk.c.item_id).in_(list(pairs[start : start + 500])),
            clk.c.ts >= since,
            clk.c.ts <= until,
        )
        for row in conn.execute(query):
            m = dict(row._mapping)
            found.setdefault((m["user_id"], m["item_id"]), []).append(m)
    return found


def _shown_lists(
    conn: Connection, users: Sequence[str], since: datetime, until: datetime
) -> dict[str, list[dict[str, Any]]]:
    """The lists shown to each of ``users`` in [since, until], by user (``ix_..._user_id``:
    user and time; whether a list holds an item is read from its ``items``)."""
    imp = rec_impressions
    found: dict[str, list[dict[str, Any]]] = {}
    columns: list[Any] = [
        imp.c.id,
        imp.c.request_id,
        imp.c.user_id,
        imp.c.ts,
        imp.c["items"],
        imp.c.positions,
        imp.c.sources,
        imp.c.placement,
        imp.c.model_version,
        imp.c.recipe,
        imp.c.experiment_id,
        imp.c.arm,
    ]
    for start in range(0, len(users), 500):
        query = select(*columns).where(
            imp.c.user_id.in_(list(users[start : start + 500])),
            imp.c.ts >= since,
            imp.c.ts <= until,
        )
        for row in conn.execute(query):
            m = dict(row._mapping)
            found.setdefault(m["user_id"], []).append(m)
    return found


def _last_touch(
    touches: Sequence[dict[str, Any]], at: datetime, window: timedelta
) -> dict[str, Any] | None:
    """The latest of ``touches`` at or before ``at`` and within ``window`` of it."""
    if window <= timedelta(0):
        return None
    inside = [t for t in touches if at - window <= t["ts"] <= at]
    return max(inside, key=lambda t: (t["ts"], t["id"])) if inside else None


def impression_row(
    request_id: str,
    user_id: str,
    items: Sequence[str],
    sources: Sequence[str] | str = "model",
    *,
    ts: datetime,
    positions: Sequence[int] | None = None,
    placement: str = "home",
    model_version: str | None = "v1",
    recipe: str = "all",
    experiment_id: str | None = None,
    arm: str | None = None,
    served_at: datetime | None = None,
    client_event_id: str | None = None,
) -> dict[str, Any]:
    """The values of one ``rec_impressions`` row (one list shown), for tests and tools that
    insert lists directly: ``sources`` one source name per shown item, or one for all
    (``model``, ``session``, ``popular``, ``new_arrivals``)."""
    names = [sources] * len(items) if isinstance(sources, str) else list(sources)
    if len(names) != len(items):
        raise ValueError(f"{len(names)} sources for {len(items)} items")
    return {
        "request_id": request_id,
        "user_id": user_id,
        "placement": placement,
        "items": list(items),
        "positions": list(positions) if positions is not None else list(range(len(items))),
        "sources": "".join(SOURCE_LETTERS[s] for s in names),
        "n_items": len(items),
        "model_version": model_version,
        "recipe": recipe,
        "experiment_id": experiment_id,
        "arm": arm,
        "served_at": served_at or ts,
        "ts": ts,
        "client_event_id": client_event_id,
    }
