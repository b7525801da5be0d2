"""Every query of the webhooks: claims, results and their log, the expiry scan, listings,
replays, and the coupons a shop pulls.

A sender claims due events in one write transaction: the due rows are read ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL (a concurrent claimer takes the next ones), SQLite has one writer, and
the UPDATE that claims them re-checks ``claimed_until`` in its WHERE; so two workers or
replicas never hold one event at once. An
expired claim (its sender died) is free again. An event is due only when no earlier event of
its coupon is undelivered (pending or dead): that keeps the order per coupon, across senders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.orm import aliased

from service.activity.repository import Repository
from service.delivery.events import coupon_data
from service.delivery.outbox import event_row
from service.offers.repository.coupons import CouponRecord, coupon_of_row
from service.tables import UTCDateTime, coupons, webhook_deliveries, webhook_events

EXPIRING_BATCH = 1000  # coupons per scan transaction
PRUNE_BATCH = 5000  # rows per delete transaction: short locks, even after a long outage
ERROR_LENGTH = 300
CouponState = Literal["active", "redeemed", "expired"]


@dataclass(frozen=True)
class OutboxEvent:
    """One row of the outbox."""

    id: int
    event_id: str
    type: str
    coupon_ref: str
    campaign_id: str
    user_id: str | None
    payload: dict[str, Any]
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class Attempt:
    """How one try to deliver ``event`` went; ``retry_at`` None when it is not retried."""

    event: OutboxEvent
    at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    delivered: bool
    retry_at: datetime | None = None


@dataclass(frozen=True)
class DeliveryLogEntry:
    id: int
    event_id: str
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    sender: str


_EVENT_COLUMNS = [c.name for c in webhook_events.c if c.name not in ("claimed_by", "event_key")]
_EVENT_COLUMNS.remove("claimed_until")


def _event(row: Any) -> OutboxEvent:
    m = row._mapping
    return OutboxEvent(**{k: m[k] for k in _EVENT_COLUMNS})


class DeliveryRepository:
    """The outbox and its log, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        e = webhook_events
        earlier = aliased(e)
        now = bindparam("now", type_=UTCDateTime())
        blocked = (
            select(earlier.c.id)
            .where(
                earlier.c.coupon_ref == e.c.coupon_ref,
                earlier.c.id < e.c.id,
                earlier.c.state != "delivered",
            )
            .exists()
        )
        free = or_(e.c.claimed_until.is_(None), e.c.claimed_until <= now)
        self._due = (
            select(e.c.id)
            .where(e.c.state == "pending", e.c.next_attempt_at <= now, free, ~blocked)
            .order_by(e.c.id)
        )
        self._claim = (
            update(e)
            .where(e.c.id.in_(bindparam("ids", expanding=True)), e.c.state == "pending", free)
            .values(claimed_by=bindparam("sender"), claimed_until=bindparam("until"))
            .returning(*[e.c[k] for k in _EVENT_COLUMNS])
        )

    # --- the sender -----------------------------------------------------------------------

    def claim(self, sender: str, now: datetime, lease: timedelta, limit: int) -> list[OutboxEvent]:
        """Take up to ``limit`` due events for ``sender`` until ``now + lease``, oldest first.

        At most one event per coupon (a later one waits for the earlier to be delivered).
        """
        # PostgreSQL: rows another claimer is taking are skipped, not waited for (it takes
        # the next ones instead); SQLite: one writer, the second claimer sees the first's claims
        with self.engine.connect() as conn:  # idle polls cost a read, not a write lock
            if conn.execute(self._due.limit(1), {"now": now}).first() is None:
                return []
        due = self._due.limit(limit).with_for_update(skip_locked=True, of=webhook_events)
        with self.base.writing() as conn:
            ids = [int(r[0]) for r in conn.execute(due, {"now": now})]
            if not ids:
                return []
            params = {"ids": ids, "now": now, "sender": sender, "until": now + lease}
            claimed = [_event(r) for r in conn.execute(self._claim, params)]
        return sorted(claimed, key=lambda ev: ev.id)

    def record(self, sender: str, attempts: list[Attempt], max_attempts: int) -> list[str]:
        """Write what ``attempts`` did, each with its line in the log, in one transaction.

        Returns each attempt's outcome: ``delivered``, ``failed`` (retried at ``retry_at``),
        ``dead`` (tried ``max_attempts`` times, or no ``retry_at``), or ``lost`` (the claim
        expired and another sender holds the event: only the log line is written).
        """
        e = webhook_events
        outcomes: list[str] = []
        with self.base.writing() as conn:
            for a in attempts:
                number = a.event.attempts + 1
                conn.execute(
                    webhook_deliveries.insert(),
                    {
                        "event_id": a.event.event_id,
                        "attempt": number,
                        "at": a.at,
                        "status_code": a.status_code,
                        "error": None if a.error is None else a.error[:ERROR_LENGTH],
                        "duration_ms": a.duration_ms,
                        "sender": sender,
                    },
                )
                values: dict[str, Any] = {
                    "attempts": e.c.attempts + 1,
                    "claimed_by": None,
                    "claimed_until": None,
                    "last_status": a.status_code,
                    "last_error": None if a.error is None else a.error[:ERROR_LENGTH],
                }
                if a.delivered:
                    # delivered is true whoever holds the claim now
                    where = and_(e.c.id == a.event.id, e.c.state == "pending")
                    values.update(state="delivered", delivered_at=a.at)
                    outcome = "delivered"
                else:
                    where = and_(e.c.id == a.event.id, e.c.claimed_by == sender)
                    if a.retry_at is None or number >= max_attempts:
                        values.update(state="dead")
                        outcome = "dead"
                    else:
                        values.update(next_attempt_at=a.retry_at)
                        outcome = "failed"
                changed = conn.execute(update(e).where(where).values(values)).rowcount
                outcomes.append(outcome if changed else "lost")
        return outcomes

    def backlog(self) -> dict[str, int]:
        """Events not delivered, by state (``pending``, ``dead``)."""
        return self.backlog_and_oldest()[0]

    def backlog_and_oldest(self) -> tuple[dict[str, int], datetime | None]:
        """:meth:`backlog`, and when the oldest pending event was written (None: none is).

        One query over the undelivered rows, as the backlog alone read them.
        """
        e = webhook_events
        query = (
            select(e.c.state, func.count(), func.min(e.c.created_at))
            .where(e.c.state != "delivered")
            .group_by(e.c.state)
        )
        out = {"pending": 0, "dead": 0}
        oldest: datetime | None = None
        with self.engine.connect() as conn:
            for state, count, first in conn.execute(query):
                out[str(state)] = int(count)
                if state == "pending":
                    oldest = first
        return out, oldest

    def prune(self, before: datetime) -> int:
        """Delete the events that are done (delivered or dead) and were written before
        ``before``, and the attempts logged before it; how many rows went.

        A pending event is never deleted, however old: it is still owed to the shop. In
        batches of :data:`PRUNE_BATCH` rows, each its own transaction.
        """
        e, d = webhook_events, webhook_deliveries
        old_events = (
            select(e.c.id)
            .where(e.c.state.in_(("delivered", "dead")), e.c.created_at < before)
            .limit(PRUNE_BATCH)
        )
        old_attempts = select(d.c.id).where(d.c.at < before).limit(PRUNE_BATCH)
        deleted = 0
        for table, query in ((e, old_events), (d, old_attempts)):
            while True:
                with self.base.writing() as conn:
                    ids = list(conn.execute(query).scalars())
                    if ids:
                        conn.execute(table.delete().where(table.c.id.in_(ids)))
                deleted += len(ids)
                if len(ids) < PRUNE_BATCH:
                    break
        return deleted

    def scan_expiring(self, now: datetime, lead: timedelta) -> int:
        """Write ``coupon.expiring`` for unredeemed coupons expiring within ``lead``; how many.

        Batches of ``EXPIRING_BATCH`` in write transactions; the unique ``event_key`` makes a
        concurrent scanner's rows (or a repeat) conflict and be skipped, never doubled.
        A coupon redeemed meanwhile is never announced after its redemption.
        """
        c, e = coupons, webhook_events
        announced = (
            select(e.c.id)
            .where(e.c.coupon_ref == c.c.attribution_id, e.c.type == "coupon.expiring")
            .exists()
        )
        # only coupons the shop was told of: one issued while webhooks were off stays untold
        # (a URL set later must not announce the whole stock of coupons out at once)
        told = (
            select(e.c.id)
            .where(e.c.coupon_ref == c.c.attribution_id, e.c.type == "coupon.issued")
            .exists()
        )
        query = (
            select(c)
            .where(
                c.c.redeemed_at.is_(None),
                c.c.user_id.is_not(None),  # an erased user's coupon is told to no one
                c.c.expires_at > now,
                c.c.expires_at <= now + lead,
                # a coupon living no longer than the lead would be "expiring" when issued
                self._lives_longer_than(lead),
                told,
                ~announced,
            )
            .order_by(c.c.expires_at, c.c.attribution_id)
            .limit(EXPIRING_BATCH)
            # PostgreSQL: FOR SHARE, so a redemption under way is waited for and its coupon
            # re-checked (then left out), and one that comes later waits for this commit: its
            # coupon.redeemed follows the coupon.expiring. SQLite: one writer at a time.
            .with_for_update(read=True, of=c)
        )
        insert = (
            self.base.insert(e)
            .on_conflict_do_nothing(index_elements=[e.c.event_key])
            .returning(e.c.id)
        )
        lead_seconds = int(lead.total_seconds())
        written = 0
        while True:
            with self.base.writing() as conn:
                found = [coupon_of_row(r) for r in conn.execute(query)]
                events = [
                    event_row(
                        "coupon.expiring",
                        f"expiring:{c.attribution_id}",
                        c,
                        {**coupon_data(c), "lead_seconds": lead_seconds},
                        now,
                    )
                    for c in found
                ]
                if events:  # the rows a concurrent scanner wrote first come back as none
                    written += len(conn.execute(insert, events).all())
            if len(found) < EXPIRING_BATCH:
                return written

    def _lives_longer_than(self, lead: timedelta) -> ColumnElement[bool]:
        """A coupon's time to live (issue to expiry) is longer than ``lead``, on either
        database (SQLite keeps times as text: day numbers there)."""
        c = coupons
        if self.base.engine.dialect.name == "sqlite":
            days = func.julianday(c.c.expires_at) - func.julianday(c.c.issued_at)
            return days > lead.total_seconds() / 86_400
        return c.c.expires_at - c.c.issued_at > literal(lead)

    # --- the admin's view -----------------------------------------------------------------

    def events(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        campaign_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[OutboxEvent]:
        """Outbox events matching every filter given, by id above ``after`` (the cursor)."""
        e = webhook_events
        query = select(*[e.c[k] for k in _EVENT_COLUMNS]).where(e.c.id > after)
        for column, value in ((e.c.state, state), (e.c.type, kind), (e.c.campaign_id, campaign_id)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(e.c.created_at >= since)
        if until is not None:
            query = query.where(e.c.created_at < until)
        with self.engine.connect() as conn:
            return [_event(r) for r in conn.execute(query.order_by(e.c.id).limit(limit))]

    def event(self, event_id: str) -> OutboxEvent | None:
        e = webhook_events
        query = select(*[e.c[k] for k in _EVENT_COLUMNS]).where(e.c.event_id == event_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _event(row)

    def deliveries(
        self,
        *,
        event_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        failed: bool | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[DeliveryLogEntry]:
        """Lines of the delivery log matching every filter, by id above ``after``."""
        d = webhook_deliveries
        query = select(d).where(d.c.id > after)
        if event_id is not None:
            query = query.where(d.c.event_id == event_id)
        if since is not None:
            query = query.where(d.c.at >= since)
        if until is not None:
            query = query.where(d.c.at < until)
        if failed is not None:
            ok = and_(d.c.status_code >= 200, d.c.status_code < 300)
            query = query.where(or_(d.c.status_code.is_(None), ~ok) if failed else ok)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(d.c.id).limit(limit))
            return [DeliveryLogEntry(**r._mapping) for r in rows]

    def replay(
        self,
        now: datetime,
        *,
        event_id: str | None = None,
        states: tuple[str, ...] = ("dead",),
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Make events due again with a fresh count of attempts; how many.

        One event by ``event_id`` (whatever its state: a shop may have lost a delivered one),
        or every event in ``states`` created in ``[since, until)``. ``failing`` in ``states``
        means pending events that failed at least once (due now rather than after backoff).
        The log keeps every earlier attempt.
        """
        e = webhook_events
        query = update(e).values(
            state="pending", attempts=0, next_attempt_at=now, claimed_by=None, claimed_until=None
        )
        if event_id is not None:
            query = query.where(e.c.event_id == event_id)
        else:
            picked = []
            if "dead" in states:
                picked.append(e.c.state == "dead")
            if "failing" in states:
                picked.append(and_(e.c.state == "pending", e.c.attempts > 0))
            if not picked:
                return 0
            query = query.where(or_(*picked))
            if since is not None:
                query = query.where(e.c.created_at >= since)
            if until is not None:
                query = query.where(e.c.created_at < until)
        with self.base.writing() as conn:
            return int(conn.execute(query).rowcount)

    # --- the coupons a shop pulls ---------------------------------------------------------

    def campaign_coupons(
        self,
        campaign_id: str,
        now: datetime,
        *,
        state: CouponState | None = None,
        issued_since: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[CouponRecord]:
        """The campaign's coupons in issue order (issued_at, attribution id), after ``after``."""
        c = coupons
        query = select(c).where(c.c.campaign_id == campaign_id)
        if state == "redeemed":
            query = query.where(c.c.redeemed_at.is_not(None))
        elif state == "active":
            query = query.where(c.c.redeemed_at.is_(None), c.c.expires_at > now)
        elif state == "expired":
            query = query.where(c.c.redeemed_at.is_(None), c.c.expires_at <= now)
        if issued_since is not None:
            query = query.where(c.c.issued_at >= issued_since)
        if after is not None:
            at, ref = after
            query = query.where(
                or_(c.c.issued_at > at, and_(c.c.issued_at == at, c.c.attribution_id > ref))
            )
        query = query.order_by(c.c.issued_at, c.c.attribution_id).limit(limit)
        with self.engine.connect() as conn:
            return [coupon_of_row(r) for r in conn.execute(query)]
