"""Taking in what the shop sends: behaviour events, users and catalogue items.

``Ingest`` checks what the request schema cannot (times in the future, batch size), stores
(in a worker thread: the database may block), shows this worker its own writes at once,
counts, and hands new views to the offers that evaluate on a view (on the event loop, where
those evaluations are scheduled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool

from service.activity.records import (
    Activity,
    IngestResult,
    ItemChange,
    ItemRecord,
    ItemResult,
    NewEvent,
    UserRecord,
)
from service.activity.repository import Repository
from service.activity.sessions import RedisSessions
from service.activity.store import ActivityStore
from service.clock import Clock
from service.db import is_outage
from service.errors import BatchTooLarge, InvalidInput, UserErased
from service.feedback.repository import CREDITED_TYPES
from service.feedback.service import FEEDBACK_TYPES, Feedback, FeedbackDraft
from service.metrics import Metrics

log = logging.getLogger(__name__)
MAX_FUTURE = timedelta(hours=1)  # clocks drift; a time from tomorrow is a bug upstream


class ViewListener(Protocol):
    """Whoever acts on new views (the offers evaluated on a view)."""

    @property
    def enabled(self) -> bool: ...

    def on_views(self, users: set[str], recent: dict[str, Sequence[Activity]]) -> int: ...


class EventListener(Protocol):
    """Whoever acts on every stored event's user and type (segments kept current, issue 12)."""

    @property
    def enabled(self) -> bool: ...

    def on_events(self, stored: Iterable[tuple[str, str]]) -> int: ...


@dataclass(frozen=True)
class EventDraft:
    """One event as sent; ``ts`` None means "now"."""

    user_id: str
    type: str
    ts: datetime | None = None
    item_id: str | None = None
    order_id: str | None = None
    client_event_id: str | None = None
    quantity: int | None = None
    price: Decimal | None = None
    currency: str | None = None
    # issue 14: an impression's or a click's list (the recommendations' request_id) and place
    request_id: str | None = None
    placement: str | None = None
    # an impression's: the ids shown, in order, and their places (None: 0, 1, ...)
    items: Sequence[str] | None = None
    positions: Sequence[int] | None = None


def _feedback_draft(d: EventDraft, ts: datetime) -> FeedbackDraft:
    assert d.request_id is not None
    return FeedbackDraft(
        type=d.type,
        user_id=d.user_id,
        item_id=d.item_id,
        list_id=d.request_id,
        ts=ts,
        placement=d.placement,
        items=tuple(d.items) if d.items is not None else None,
        positions=tuple(d.positions) if d.positions is not None else None,
        client_event_id=d.client_event_id,
    )


def refuse_future(moment: datetime, now: datetime, field: str) -> None:
    """InvalidInput naming ``field`` when ``moment`` is more than MAX_FUTURE after ``now``."""
    if moment - now > MAX_FUTURE:
        raise InvalidInput(field, f"{moment.isoformat()} is more than {MAX_FUTURE} in the future")


def write_failure(exc: BaseException) -> str:
    """The ``reason`` label of an event write that raised ``exc``."""
    if is_outage(exc):
        return "database_unavailable"  # locked, unreachable, timed out: the client may retry
    if isinstance(exc, DataError):
        return "refused"  # a value the database would not take (answered 422)
    return "error"


class Ingest:
    """Stores events, users and items, and keeps this worker's recent view current."""

    def __init__(
        self,
        repository: Repository,
        activity: ActivityStore,
        metrics: Metrics,
        clock: Clock,
        *,
        max_batch: int,
        max_items: int = 1000,
        views: ViewListener | None = None,
        erased: Callable[[str], bool] | None = None,
        segments: EventListener | None = None,
        feedback: Feedback | None = None,
        catalogue: Callable[[Sequence[ItemRecord]], None] | None = None,
        sessions: RedisSessions | None = None,
    ) -> None:
        self.repository = repository
        self.activity = activity
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self.max_items = max_items
        self.views = views
        # erased ids (service.privacy): their events are dropped, their user row refused
        self.erased = erased or (lambda _: False)
        self.segments = segments  # recomputes the users' segment rows in the background
        # impressions and clicks, and the carts and purchases credited to lists (issue 14)
        self.feedback = feedback
        # told the catalogue rows that changed (new products' vectors, issue 14); in a thread
        self.catalogue = catalogue
        # users' recent events in Redis for every replica (issue 15, item 5), after the commit
        self.sessions = sessions

    async def add_events(self, drafts: Sequence[EventDraft], *, batch: bool) -> IngestResult:
        """Store ``drafts`` in one transaction (a repeated ``client_event_id`` is skipped).

        ``batch``: they came as ``{"events": [...]}``, so a refused time is named
        ``events.N.timestamp`` rather than ``timestamp``.
        """
        if len(drafts) > self.max_batch:
            raise BatchTooLarge(f"at most {self.max_batch} events per request")
        now = self.clock()
        events = []
        shown: list[tuple[int, FeedbackDraft]] = []
        for index, d in enumerate(drafts):
            ts = d.ts or now
            prefix = f"events.{index}." if batch else ""
            refuse_future(ts, now, f"{prefix}timestamp")
            if d.price is not None and d.currency is None:
                raise InvalidInput(f"{prefix}currency", "a price needs its currency")
            if d.type in FEEDBACK_TYPES:
                shown_what = d.items if d.type == "impression" else d.item_id
                if self.feedback is None or d.request_id is None or shown_what is None:
                    raise InvalidInput(f"{prefix}type", f"{d.type} events are not taken here")
                if not self.erased(d.user_id):
                    shown.append((index, _feedback_draft(d, ts)))
                continue
            if self.erased(d.user_id):
                continue  # not stored, not counted as accepted
            events.append(
                NewEvent(
                    user_id=d.user_id,
                    type=d.type,
                    ts=ts,
                    item_id=d.item_id,
                    order_id=d.order_id,
                    client_event_id=d.client_event_id,
                    quantity=d.quantity,
                    price=d.price,
                    currency=d.currency,
                )
            )
        write = None
        credited = any(e.type in CREDITED_TYPES for e in events)
        if self.feedback is not None and (shown or credited):  # list ids checked before writing
            write = self.feedback.writer(self.feedback.check(shown, batch=batch))
        try:
            result = await run_in_threadpool(self.repository.add_events, events, write)
        except Exception as exc:  # counted for the alerts, then answered as before (503, 422)
            self.metrics.event_write_failures.labels(write_failure(exc)).inc(
                len(events) + len(shown)
            )
            raise
        if write is not None and self.feedback is not None:
            self.feedback.count(write.written)
            fed = write.written.lists + len(write.written.clicks)
            result = IngestResult(
                result.accepted + fed, result.duplicates + write.written.duplicates, result.stored
            )
        self.activity.add(result.stored, from_tail=False)  # this worker sees its own writes now
        if self.sessions is not None:  # every replica sees them now (a failure is counted)
            await self.sessions.awrite(result.stored)
        for stored in result.stored:
            self.metrics.events.labels(stored.type).inc()
        if result.duplicates:
            self.metrics.event_duplicates.inc(result.duplicates)
        if self.views is not None and self.views.enabled:
            viewers = {s.user_id for s in result.stored if s.type == "view"}
            recent: dict[str, Sequence[Activity]]
            if self.sessions is not None:
                recent = dict(await self.sessions.arecent_many(viewers))
            else:
                recent = {u: self.activity.recent(u) for u in viewers}
            self.views.on_views(viewers, recent)
        if self.segments is not None and self.segments.enabled and result.stored:
            try:
                self.segments.on_events((s.user_id, s.type) for s in result.stored)
            except Exception:  # the events are stored: a segment refresh never fails them
                log.warning("segment_refresh_not_scheduled", exc_info=True)
        return result

    async def put_user(
        self,
        user_id: str,
        *,
        signed_up_at: datetime | None,
        attributes: dict[str, Any] | None,
    ) -> UserRecord:
        """Register a user or update the fields given (None: keep the stored value).

        A ``signed_up_at`` later than the stored one raises ``SignUpMovedLater`` (409, naming
        the field): the repository's upsert refuses it in its WHERE (issue 12, item 7).
        """
        if signed_up_at is not None:
            refuse_future(signed_up_at, self.clock(), "signed_up_at")
        if self.erased(user_id):
            raise UserErased()
        return await run_in_threadpool(
            self.repository.upsert_user, user_id, signed_up_at=signed_up_at, attributes=attributes
        )

    async def put_item(
        self,
        item_id: str,
        *,
        name: str | None,
        category: str | None,
        price: Decimal | None,
        currency: str | None = None,
        in_stock: bool | None,
        attributes: dict[str, Any] | None = None,
    ) -> ItemRecord:
        """Create or update a catalogue item; this worker's filters see it at once."""
        if price is not None and currency is None:
            raise InvalidInput("currency", "a price needs its currency")
        record = await run_in_threadpool(
            self.repository.upsert_item,
            item_id,
            name=name,
            category=category,
            price=price,
            currency=currency,
            in_stock=in_stock,
            attributes=attributes,
        )
        await self._catalogue_changed(self.activity.update_catalogue([record]))
        return record

    async def change_items(self, changes: Sequence[ItemChange]) -> list[ItemResult]:
        """Apply a catalogue batch, all or nothing; this worker's filters see it at once."""
        if len(changes) > self.max_items:
            raise BatchTooLarge(f"at most {self.max_items} items per request")
        for index, change in enumerate(changes):
            if change.price is not None and change.currency is None:
                raise InvalidInput(f"items.{index}.currency", "a price needs its currency")
        results, records = await run_in_threadpool(self.repository.apply_items, changes)
        await self._catalogue_changed(self.activity.update_catalogue(records))
        return results

    async def _catalogue_changed(self, rows: Sequence[ItemRecord]) -> None:
        """Hand the changed rows on (in a thread); the write is done, so never fail it."""
        if self.catalogue is None or not rows:
            return
        try:
            await run_in_threadpool(self.catalogue, rows)
        except Exception:
            log.warning("catalogue_listener_failed", exc_info=True)
