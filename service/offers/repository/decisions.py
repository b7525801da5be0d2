"""Queries of the decisions: the facts the rule reads, the exactly-once decision write, budgets.

Exactly-once lives in the writes themselves (shared/RELIABILITY.md): a unique index carries
"one decision per user per campaign", and a budget is taken by an upsert whose WHERE holds the
cap. No read-then-write anywhere, so the same code is safe on SQLite and on PostgreSQL.

A campaign sweep writes its users in batches (``record_batch``): one transaction per batch,
the same unique index, and the budget rows locked by an upsert before they are read (the lock
is the write, so the read cannot go stale before the count is written in the same transaction).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    null,
    select,
    tuple_,
    update,
)

from service.activity.repository import Repository
from service.delivery import outbox
from service.errors import BudgetExhausted, ErasedMeanwhile, PurchasedMeanwhile
from service.offers.campaigns import Campaign
from service.offers.kinds import FinalKind
from service.offers.occasions import ONCE
from service.offers.repository.coupons import CouponRecord, CouponRepository
from service.offers.repository.lifecycle import (
    ORDER_KINDS,
    LifecycleFacts,
    candidate_ids,
    facts_from_row,
    order_candidates,
)
from service.offers.repository.spend import MoneyCaps, SpendStatements
from service.offers.rules import UserFacts
from service.tables import (
    UTCDateTime,
    campaign_budgets,
    events,
    offer_decisions,
    user_segments,
    users,
)


@dataclass(frozen=True)
class DecisionRecord:
    campaign_id: str
    user_id: str
    decision: str
    attribution_id: str
    views: int
    decided_at: datetime
    convert_until: datetime
    campaign_version: int | None = None  # the definition in force (issue 12, item 5)
    occurrence: str = ONCE  # a recurring campaign's occurrence (issue 12, item 2)


@dataclass(frozen=True)
class CouponDraft:
    """A coupon to issue together with an ``issued`` decision."""

    code: str
    discount_percent: float
    item_ids: list[str] | None
    expires_at: datetime
    # the money terms (issue 12, item 3), as CouponRecord keeps them
    discount_kind: str = "percent"
    discount_fixed: Decimal | None = None
    terms_currency: str | None = None
    min_order_amount: Decimal | None = None


@dataclass(frozen=True)
class Caps:
    per_day: int | None
    total: int | None
    money: MoneyCaps | None = None  # the discount given (issue 12, item 3)


@dataclass(frozen=True)
class Recorded:
    """What a decision write did: ``created`` False means another one was there first."""

    created: bool
    decision: DecisionRecord
    coupon: CouponRecord | None


@dataclass(frozen=True)
class Claim:
    """One eligible user of a batched write, and what the rule decided for them."""

    user_id: str
    kind: FinalKind
    views: int
    coupon: CouponDraft | None  # with ``issued``
    lifecycle_stage: str | None = None  # the user's segment, recorded with the decision
    loyalty_type: str | None = None
    occurrence: str = ONCE  # a recurring campaign's occurrence
    # the facts' last purchase: only a purchase after it refuses the claim (None: any does)
    purchase_after: datetime | None = None


@dataclass(frozen=True)
class BatchRecorded:
    """What a batched write did, user by user (each user in exactly one list)."""

    made: list[Recorded]  # decisions written now, in the order of the claims
    already: list[str]  # a final decision was there first
    purchased: list[str]  # bought meanwhile (seen inside the transaction): nothing written
    missed: list[str]  # a cap was reached: left as budget_exhausted
    exhausted: str | None  # the period whose cap refused the first miss, or budget_money_*
    gone: list[str] = field(default_factory=list)  # erased meanwhile: nothing written


def day_of(moment: datetime) -> str:
    """The budget period of ``moment``: its UTC day, ``YYYY-MM-DD``."""
    return moment.astimezone(UTC).date().isoformat()


SWEEP_READ_TIMEOUT_MS = 600_000  # the candidates of a sweep: one read, in the background
FACTS_BATCH = 2_000  # users whose facts are read in one go (a list of ids in the queries)
# the columns a decision write sets besides its key (campaign, user)
# and the user's segment at that moment (issue 12, item 4)
# and the campaign's definition version in force (issue 12, item 5)
DECISION_VALUES = (
    *("decision", "attribution_id", "views", "decided_at", "convert_until"),
    *("lifecycle_stage", "loyalty_type"),
    "campaign_version",
)
# a user's segment (issue 12, item 4): read with the facts, from the same join
SEGMENT = (user_segments.c.lifecycle_stage, user_segments.c.loyalty_type)
WITH_SEGMENT = users.outerjoin(user_segments, user_segments.c.user_id == users.c.user_id)
# when a user's hesitation window starts: sign-up, else the first event seen
STARTED = func.coalesce(users.c.signed_up_at, users.c.first_seen_at)


def user_facts_columns(
    start: ColumnElement[Any], end: ColumnElement[Any], now: ColumnElement[Any]
) -> tuple[ColumnElement[int], ...]:
    """Views in ``[start, end]``, distinct products viewed there, purchases up to ``now``.

    The one definition of the facts the rule reads, over ``events`` of the selected users:
    for one user (bound values) and for every user of a sweep (``STARTED`` as the start).
    """
    e = events
    in_window = and_(e.c.type == "view", e.c.ts >= start, e.c.ts <= end)
    return (
        func.count(case((in_window, 1))),
        func.count(case((in_window, e.c.item_id)).distinct()),
        func.count(case((and_(e.c.type == "purchase", e.c.ts <= now), 1))),
    )


def _user_facts(
    user_id: str,
    started_at: datetime,
    counts: Sequence[Any],
    signed_up_at: datetime | None,
    attributes: dict[str, Any] | None,
    segment: Sequence[Any] = (None, None),
) -> UserFacts:
    return UserFacts(
        user_id,
        started_at,
        int(counts[0]),
        int(counts[1]),
        bool(counts[2]),
        signed_up_at=signed_up_at,
        attributes=attributes or {},
        lifecycle_stage=segment[0],
        loyalty_type=segment[1],
    )


def _coupon(decision: DecisionRecord, draft: CouponDraft, now: datetime) -> CouponRecord:
    """The coupon ``draft`` as issued with ``decision`` at ``now``."""
    return CouponRecord(
        code=draft.code,
        campaign_id=decision.campaign_id,
        user_id=decision.user_id,
        attribution_id=decision.attribution_id,
        discount_percent=draft.discount_percent,
        item_ids=draft.item_ids,
        issued_at=now,
        expires_at=draft.expires_at,
        redeemed_at=None,
        order_id=None,
        order_amount=None,
        discount_amount=None,
        discount_kind=draft.discount_kind,
        discount_fixed=draft.discount_fixed,
        terms_currency=draft.terms_currency,
        min_order_amount=draft.min_order_amount,
    )


class _Statements:
    """The hot statements, built once: building a statement costs 3-4 times running it."""

    def __init__(self, base: Repository) -> None:
        d, b, e = offer_decisions, campaign_budgets, events
        user = bindparam("user_id", type_=String())
        now = bindparam("now", type_=UTCDateTime())
        self.started = (
            select(STARTED, users.c.signed_up_at, *SEGMENT)
            .select_from(WITH_SEGMENT)
            .where(users.c.user_id == user)
        )
        self.started_attributes = (
            select(STARTED, users.c.signed_up_at, users.c.attributes, *SEGMENT)
            .select_from(WITH_SEGMENT)
            .where(users.c.user_id == user)
        )
        start, end = bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime())
        self.facts = select(*user_facts_columns(start, end, now)).where(
            e.c.user_id == user, e.c.ts <= now
        )
        # the kind inline, not bound: so the planners may use the partial index of purchases
        purchase = literal("purchase", literal_execute=True)
        self.purchased = (
            select(e.c.id).where(e.c.user_id == user, e.c.type == purchase, e.c.ts <= now).limit(1)
        )
        after = bindparam("after", type_=UTCDateTime())
        self.purchased_after = (
            select(e.c.id)
            .where(e.c.user_id == user, e.c.type == purchase, e.c.ts > after, e.c.ts <= now)
            .limit(1)
        )
        self.decision = select(
            d.c.campaign_id,
            d.c.user_id,
            d.c.decision,
            d.c.attribution_id,
            d.c.views,
            d.c.decided_at,
            d.c.convert_until,
            d.c.campaign_version,
            d.c.occurrence,
        ).where(
            d.c.campaign_id == bindparam("campaign_id"),
            d.c.user_id == user,
            d.c.occurrence == bindparam("occurrence", type_=String()),
        )
        # a recurring campaign's latest final decision for the user, whatever its occurrence
        self.latest = (
            select(*self.decision.selected_columns)
            .where(
                d.c.campaign_id == bindparam("campaign_id"),
                d.c.user_id == user,
                d.c.decision != "budget_exhausted",
            )
            .order_by(d.c.decided_at.desc(), d.c.id.desc())
            .limit(1)
        )
        # the unique index: one decision per user, campaign and occurrence
        keys = [d.c.campaign_id, d.c.user_id, d.c.occurrence]
        self.claim = base.insert(d).on_conflict_do_nothing(index_elements=keys).returning(d.c.id)
        self.misses = base.insert(d).on_conflict_do_nothing(index_elements=keys)
        self.upgrade = (
            update(d)
            .where(
                d.c.campaign_id == bindparam("where_campaign"),
                d.c.user_id == bindparam("where_user"),
                d.c.occurrence == bindparam("where_occurrence"),
                d.c.decision == "budget_exhausted",
            )
            .values({col: bindparam(f"new_{col}") for col in DECISION_VALUES})
            .returning(d.c.id)
        )
        budget_keys = [b.c.campaign_id, b.c.period]
        count_one = base.insert(b)
        self.count_coupon = count_one.on_conflict_do_update(
            index_elements=budget_keys, set_={"issued": b.c.issued + 1}
        ).returning(b.c.issued)
        self.count_capped_coupon = count_one.on_conflict_do_update(
            index_elements=budget_keys,
            set_={"issued": b.c.issued + 1},
            where=b.c.issued < bindparam("cap"),
        ).returning(b.c.issued)
        self.budget = select(b.c.period, b.c.issued).where(
            b.c.campaign_id == bindparam("campaign_id"),
            b.c.period.in_(bindparam("periods", expanding=True)),
        )
        # the segments of a list of users (the lifecycle kinds' facts, issue 12 item 4)
        self.segments_of = select(user_segments.c.user_id, *SEGMENT).where(
            user_segments.c.user_id.in_(bindparam("users", expanding=True))
        )
        # --- the batched write of a sweep (record_batch)
        many: BindParameter[str] = bindparam("users", expanding=True)
        campaign = bindparam("where_campaign", type_=String())
        # each user's last purchase: a claim's purchase_after says which of them refuse it
        self.purchasers = (
            select(e.c.user_id, func.max(e.c.ts))
            .where(e.c.user_id.in_(many), e.c.type == purchase, e.c.ts <= now)
            .group_by(e.c.user_id)
        )
        # (user, occurrence) pairs: a recurring campaign's other occurrences are not touched
        pairs: BindParameter[Any] = bindparam("pairs", expanding=True)
        # the final decisions of many users, every occurrence (the unique index's prefix)
        self.finals = select(d.c.user_id, d.c.occurrence).where(
            d.c.campaign_id == campaign,
            d.c.user_id.in_(many),
            d.c.decision != "budget_exhausted",
        )
        self.claim_many = (
            base.insert(d).on_conflict_do_nothing(index_elements=keys).returning(d.c.user_id)
        )
        self.drop_misses = (
            delete(d)
            .where(
                d.c.campaign_id == campaign,
                tuple_(d.c.user_id, d.c.occurrence).in_(pairs),
                d.c.decision == "budget_exhausted",
            )
            .returning(d.c.user_id)
        )
        self.demote = (
            update(d)
            .where(d.c.campaign_id == campaign, tuple_(d.c.user_id, d.c.occurrence).in_(pairs))
            .values(decision="budget_exhausted")
        )
        # ON CONFLICT DO UPDATE locks the row (PostgreSQL) and returns what it holds
        self.lock_budget = count_one.on_conflict_do_update(
            index_elements=budget_keys, set_={"issued": b.c.issued}
        ).returning(b.c.issued)
        self.add_budget = count_one.on_conflict_do_update(
            index_elements=budget_keys, set_={"issued": b.c.issued + count_one.excluded.issued}
        )
        self.viewed_many = (
            select(e.c.user_id, e.c.item_id)
            .select_from(e.join(users, users.c.user_id == e.c.user_id))
            .where(
                e.c.user_id.in_(many),
                e.c.type == "view",
                e.c.ts >= STARTED,
                e.c.ts <= now,
                e.c.item_id.is_not(None),
            )
            .group_by(e.c.user_id, e.c.item_id)
            .order_by(e.c.user_id, func.count().desc(), func.max(e.c.ts).desc(), e.c.item_id)
        )


class DecisionRepository:
    """Queries of the decisions and budgets, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository, coupons: CouponRepository) -> None:
        self.base = base
        self.engine = base.engine
        self.coupons = coupons  # an issued decision writes its coupon in the same transaction
        self._sql = _Statements(base)
        self._spend = SpendStatements(base)
        self._lifecycle = LifecycleFacts()

    # --- facts the rule reads -------------------------------------------------------------

    def decision_and_facts(
        self,
        campaign_id: str,
        user_id: str,
        window: timedelta,
        now: datetime,
        *,
        attributes: bool = False,
    ) -> tuple[DecisionRecord | None, UserFacts | None]:
        """The user's recorded decision, and the facts only when it is not final (one read).

        ``attributes``: read the user's attributes too (a campaign requires some); otherwise
        the facts carry none, so a rule requiring one refuses rather than grants.
        """
        with self.engine.connect() as conn:
            decision = self._decision(conn, campaign_id, user_id)
            if decision is not None and decision.decision != "budget_exhausted":
                return decision, None
            return decision, self._facts(conn, user_id, window, now, attributes)

    def recorded(
        self, campaign_id: str, user_id: str, occurrence: str = ONCE
    ) -> DecisionRecord | None:
        """The user's recorded decision in the campaign (for ``occurrence``), if any (a read)."""
        with self.engine.connect() as conn:
            return self._decision(conn, campaign_id, user_id, occurrence)

    def latest(self, campaign_id: str, user_id: str) -> DecisionRecord | None:
        """The user's latest final decision in the campaign, of any occurrence (a read)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                self._sql.latest, {"campaign_id": campaign_id, "user_id": user_id}
            ).first()
        return DecisionRecord(*row) if row else None

    # --- the lifecycle kinds' facts (service.offers.repository.lifecycle) -------------------

    def lifecycle_facts(
        self, campaign: Campaign, user_id: str, now: datetime, *, attributes: bool
    ) -> UserFacts:
        """One user's facts for a lifecycle ``campaign`` (orders, cart, attributes) at ``now``.

        A user the shop does not know has no start (the rule answers ``unknown_user``).
        """
        with self.engine.connect() as conn:
            found = self._lifecycle.facts_of(conn, [user_id], campaign, now, attributes=attributes)
            found = self._with_segments(conn, found)
        return found[0] if found else UserFacts(user_id, None, 0, 0, False)

    def lifecycle_candidates(
        self, campaign: Campaign, now: datetime, *, attributes: bool
    ) -> list[UserFacts]:
        """The facts of the users a sweep of a lifecycle ``campaign`` looks at, at ``now``:
        its kind's SQL pre-filter (``lifecycle``), the rule decides on them."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # one big read, in the background
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {SWEEP_READ_TIMEOUT_MS}")
            if campaign.kind in ORDER_KINDS:
                query = order_candidates(campaign, now, conn.dialect.name, attributes=attributes)
                found = [facts_from_row(r, attributes) for r in conn.execute(query)]
            else:
                ids = [str(r[0]) for r in conn.execute(candidate_ids(campaign, now))]
                found = []
                for first in range(0, len(ids), FACTS_BATCH):
                    found += self._lifecycle.facts_of(
                        conn, ids[first : first + FACTS_BATCH], campaign, now, attributes=attributes
                    )
            return self._with_segments(conn, found)

    def _with_segments(self, conn: Connection, found: list[UserFacts]) -> list[UserFacts]:
        """``found`` with each user's segment (issue 12, item 4: audience, exclusion, uplift
        targeting and the segment recorded with the decision), read in batches of ids."""
        segments: dict[str, tuple[str, str]] = {}
        for first in range(0, len(found), FACTS_BATCH):
            ids = [f.user_id for f in found[first : first + FACTS_BATCH]]
            rows = conn.execute(self._sql.segments_of, {"users": ids})
            segments.update({str(r[0]): (str(r[1]), str(r[2])) for r in rows})
        return [
            f
            if f.user_id not in segments
            else dataclasses.replace(
                f,
                lifecycle_stage=segments[f.user_id][0],
                loyalty_type=segments[f.user_id][1],
            )
            for f in found
        ]

    def decided(self, campaign_id: str, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (user, occurrence) pairs of ``pairs`` with a final decision in the campaign."""
        if not pairs:
            return set()
        wanted = set(pairs)
        users = sorted({u for u, _ in wanted})
        with self.engine.connect() as conn:
            rows = conn.execute(self._sql.finals, {"where_campaign": campaign_id, "users": users})
            return {(str(u), str(o)) for u, o in rows} & wanted

    def _facts(
        self, conn: Connection, user_id: str, window: timedelta, now: datetime, attributes: bool
    ) -> UserFacts:
        started = self._sql.started_attributes if attributes else self._sql.started
        user = conn.execute(started, {"user_id": user_id}).first()
        if user is None:
            return UserFacts(user_id, None, 0, 0, False)
        start: datetime = user[0]
        # no `start + window`: a start near the end of the calendar must not overflow
        end = now if now - start <= window else start + window
        row = conn.execute(
            self._sql.facts, {"user_id": user_id, "start": start, "end": end, "now": now}
        ).one()
        attrs = user[2] if attributes else None
        return _user_facts(user_id, start, row, user[1], attrs, segment=user[-2:])

    def candidates(
        self,
        campaign_id: str,
        window: timedelta,
        now: datetime,
        limit: int | None = None,
        *,
        attributes: bool = False,
    ) -> list[UserFacts]:
        """Facts of every user whose window is open at ``now`` and who has no final decision.

        One aggregate query: a user inside the window started at or after ``now - window``,
        so "inside the window" is simply "at or after the start, not after now". The same
        facts as ``decision_and_facts`` (``attributes`` likewise).
        """
        decided = (
            select(offer_decisions.c.id)
            .where(
                offer_decisions.c.campaign_id == campaign_id,
                offer_decisions.c.user_id == users.c.user_id,
                offer_decisions.c.decision != "budget_exhausted",
            )
            .exists()
        )
        start, moment = STARTED, bindparam("now", now, type_=UTCDateTime())
        query = (
            select(
                users.c.user_id,
                start.label("started_at"),
                users.c.signed_up_at,
                # a JSON column cannot be grouped on PostgreSQL; it depends on the key grouped
                users.c.attributes if attributes else null(),
                *user_facts_columns(start, moment, moment),
                *SEGMENT,
            )
            .select_from(WITH_SEGMENT.outerjoin(events, events.c.user_id == users.c.user_id))
            .where(start >= now - window, start <= now, ~decided)
            .group_by(users.c.user_id, start, users.c.signed_up_at, *SEGMENT)
            .order_by(users.c.user_id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # a sweep runs in the background: its one big read may outlast the timeout
                # that keeps requests short (SET LOCAL: this transaction only)
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {SWEEP_READ_TIMEOUT_MS}")
            return [
                _user_facts(str(r[0]), r[1], r[4:], r[2], r[3], segment=r[-2:])
                for r in conn.execute(query)
            ]

    def viewed_items(self, user_id: str, since: datetime, now: datetime) -> list[str]:
        """Products the user viewed in ``[since, now]``, most viewed first, then most recent."""
        query = (
            select(events.c.item_id)
            .where(
                events.c.user_id == user_id,
                events.c.type == "view",
                events.c.ts >= since,
                events.c.ts <= now,
                events.c.item_id.is_not(None),
            )
            .group_by(events.c.item_id)
            .order_by(func.count().desc(), func.max(events.c.ts).desc(), events.c.item_id)
        )
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(query)]

    def viewed_items_many(self, user_ids: Sequence[str], now: datetime) -> dict[str, list[str]]:
        """``viewed_items`` of many users at once, each since the start of their window."""
        out: dict[str, list[str]] = {u: [] for u in user_ids}
        if not user_ids:
            return out
        with self.engine.connect() as conn:
            for user_id, item_id in conn.execute(
                self._sql.viewed_many, {"users": list(user_ids), "now": now}
            ):
                out[str(user_id)].append(str(item_id))
        return out

    # --- decisions ------------------------------------------------------------------------

    def record(
        self,
        campaign_id: str,
        user_id: str,
        kind: FinalKind,
        *,
        views: int,
        now: datetime,
        convert_until: datetime,
        coupon: CouponDraft | None = None,
        caps: Caps | None = None,
        no_purchase: bool = False,
        lifecycle_stage: str | None = None,
        loyalty_type: str | None = None,
        campaign_version: int | None = None,
        occurrence: str = ONCE,
        purchase_after: datetime | None = None,
    ) -> Recorded:
        """Record a final decision (and its coupon) unless one exists; exactly once.

        A ``budget_exhausted`` row may become final here. Caps apply to both sides of the
        holdout, so treated and held-out users come from the same moments: an ``issued``
        decision counts against them, a ``holdout`` one only checks them. When one is reached
        the transaction is rolled back, a ``budget_exhausted`` row is left, and
        ``BudgetExhausted`` is raised. With ``no_purchase``, a purchase by the user up to ``now``
        seen inside the transaction rolls it back and raises ``PurchasedMeanwhile`` (the facts
        the decision was based on went stale while it was being made); ``purchase_after``: only
        a purchase after it does (the last purchase the facts saw: a win-back's last order).
        ``occurrence``: a recurring campaign decides once per user per occurrence.
        ``lifecycle_stage`` and ``loyalty_type``: the user's segment as read with the facts,
        kept with the decision.
        """
        caps = caps or Caps(None, None)
        attribution = uuid.uuid4().hex
        values = {
            "decision": kind,
            "attribution_id": attribution,
            "views": views,
            "decided_at": now,
            "convert_until": convert_until,
            "lifecycle_stage": lifecycle_stage,
            "loyalty_type": loyalty_type,
            "campaign_version": campaign_version,
        }
        claimed: str | None = None
        try:
            with self.base.writing() as conn:
                if not self.base.present_users(conn, [user_id]):
                    raise ErasedMeanwhile(user_id)  # erased since the facts were read
                claimed = self._claim(conn, campaign_id, user_id, occurrence, values)
                if claimed is None:
                    existing = self._decision(conn, campaign_id, user_id, occurrence)
                    assert existing is not None  # the unique index said it is there
                    return Recorded(False, existing, self._coupon_of(conn, existing))
                if no_purchase and self._purchased(conn, user_id, now, purchase_after):
                    raise PurchasedMeanwhile(user_id)
                # the row as written (no read back: a lookup per decision is a plan to go wrong)
                decision = DecisionRecord(
                    campaign_id,
                    user_id,
                    kind,
                    attribution,
                    views,
                    now,
                    convert_until,
                    campaign_version,
                    occurrence,
                )
                stored: CouponRecord | None = None
                if coupon is not None:
                    self._take_budget(conn, campaign_id, caps, now)
                    stored = self._insert_coupon(conn, decision, coupon, now)
                else:
                    self._check_budget(conn, campaign_id, caps, now)
                return Recorded(True, decision, stored)
        except BudgetExhausted:
            if claimed != "upgraded":  # an upgraded row was a miss already: nothing to write
                self.record_misses(
                    campaign_id,
                    [(user_id, views)],
                    now,
                    convert_until,
                    campaign_version,
                    occurrences={user_id: occurrence},
                )
            raise

    def record_misses(
        self,
        campaign_id: str,
        users: Sequence[tuple[str, int]],
        now: datetime,
        convert_until: datetime,
        campaign_version: int | None = None,
        *,
        occurrences: Mapping[str, str] | None = None,
    ) -> None:
        """``budget_exhausted`` rows for (user, views) without a decision yet, in one write.

        ``occurrences``: each user's occurrence in a recurring campaign (default ``ONCE``).
        """
        if not users:
            return
        occurrences = occurrences or {}
        rows = [
            {
                "campaign_id": campaign_id,
                "user_id": user_id,
                "occurrence": occurrences.get(user_id, ONCE),
                "decision": "budget_exhausted",
                "attribution_id": uuid.uuid4().hex,
                "views": views,
                "decided_at": now,
                "convert_until": convert_until,
                "campaign_version": campaign_version,
            }
            for user_id, views in users
        ]
        with self.base.writing() as conn:
            present = self.base.present_users(conn, [user_id for user_id, _ in users])
            rows = [r for r in rows if r["user_id"] in present]  # none for an erased user
            if rows:
                conn.execute(self._sql.misses, rows)

    def record_batch(
        self,
        campaign_id: str,
        claims: Sequence[Claim],
        *,
        now: datetime,
        convert_until: datetime,
        caps: Caps | None = None,
        no_purchase: bool = False,
        campaign_version: int | None = None,
    ) -> BatchRecorded:
        """``record`` for many users in one transaction, with the same guarantees.

        In order: users who bought up to ``now`` are dropped (with ``no_purchase``); every
        other claim is inserted unless a decision is there (the unique index), a budget miss
        being replaced; then the budget rows are locked and read, and the claims are granted
        in the order given while the caps allow, as one ``record`` after the other would;
        the refused rest is left as ``budget_exhausted``. Locks are taken in the order
        ``record`` takes them (decisions, then total, then the day), so a batch and single
        evaluations cannot deadlock.
        """
        caps = caps or Caps(None, None)
        if not claims:
            return BatchRecorded([], [], [], [], None)
        with self.base.writing() as conn:
            present = self.base.present_users(conn, [c.user_id for c in claims])
            gone = [c.user_id for c in claims if c.user_id not in present]
            claims = [c for c in claims if c.user_id in present]
            if not claims:
                return BatchRecorded([], [], [], [], None, gone)
            purchased: set[str] = set()
            if no_purchase:
                found = conn.execute(
                    self._sql.purchasers, {"users": [c.user_id for c in claims], "now": now}
                )
                last = {str(r[0]): r[1] for r in found}
                purchased = {
                    c.user_id
                    for c in claims
                    if c.user_id in last
                    and (c.purchase_after is None or last[c.user_id] > c.purchase_after)
                }
            wanted = [c for c in claims if c.user_id not in purchased]
            occurrence = {c.user_id: c.occurrence for c in wanted}
            rows: dict[str, dict[str, Any]] = {
                c.user_id: {
                    "campaign_id": campaign_id,
                    "user_id": c.user_id,
                    "occurrence": c.occurrence,
                    "decision": c.kind,
                    "attribution_id": uuid.uuid4().hex,
                    "views": c.views,
                    "decided_at": now,
                    "convert_until": convert_until,
                    "lifecycle_stage": c.lifecycle_stage,
                    "loyalty_type": c.loyalty_type,
                    "campaign_version": campaign_version,
                }
                for c in wanted
            }
            inserted = self._claim_many(conn, list(rows.values()))
            conflicting = [u for u in rows if u not in inserted]
            if conflicting:  # a budget miss may still become final: replace it
                dropped = conn.execute(
                    self._sql.drop_misses,
                    {
                        "where_campaign": campaign_id,
                        "pairs": [(u, occurrence[u]) for u in conflicting],
                    },
                )
                again = [rows[str(r[0])] for r in dropped]
                inserted |= self._claim_many(conn, again)
            claimed = [c for c in wanted if c.user_id in inserted]
            granted, refused, exhausted = self._grant(conn, campaign_id, claimed, caps, now)
            if refused:
                conn.execute(
                    self._sql.demote,
                    {
                        "where_campaign": campaign_id,
                        "pairs": [(c.user_id, c.occurrence) for c in refused],
                    },
                )
            made: list[Recorded] = []
            for claim in granted:
                row = rows[claim.user_id]
                decision = DecisionRecord(
                    campaign_id,
                    claim.user_id,
                    claim.kind,
                    row["attribution_id"],
                    claim.views,
                    now,
                    convert_until,
                    campaign_version,
                    claim.occurrence,
                )
                coupon = None if claim.coupon is None else _coupon(decision, claim.coupon, now)
                made.append(Recorded(True, decision, coupon))
            self.coupons.insert_many(conn, [r.coupon for r in made if r.coupon is not None])
            outbox.coupons_issued(self.base, conn, [r.coupon for r in made])  # webhooks
        return BatchRecorded(
            made=made,
            already=[c.user_id for c in wanted if c.user_id not in inserted],
            purchased=[c.user_id for c in claims if c.user_id in purchased],
            missed=[c.user_id for c in refused],
            exhausted=exhausted,
            gone=gone,
        )

    def _claim_many(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the decision rows that have none yet; the users inserted."""
        if not rows:
            return set()
        return {str(r[0]) for r in conn.execute(self._sql.claim_many, rows)}

    def _grant(
        self, conn: Connection, campaign_id: str, claimed: list[Claim], caps: Caps, now: datetime
    ) -> tuple[list[Claim], list[Claim], str | None]:
        """Split ``claimed`` into granted and refused by the caps; count the coupons granted.

        Both sides of the holdout face the caps; only ``issued`` counts against them (as in
        ``record``). Every coupon is counted, capped or not.
        """
        periods = (("total", caps.total), (day_of(now), caps.per_day))
        money = self._spend.exhausted(conn, campaign_id, caps.money, now)
        if money is not None:  # the discount given reached a money cap: nothing is granted
            return [], list(claimed), money
        left: dict[str, int] = {}
        for period, cap in periods:
            if cap is not None:  # locked until this transaction ends, then read
                row = {"campaign_id": campaign_id, "period": period, "issued": 0}
                left[period] = cap - int(conn.execute(self._sql.lock_budget, row).scalar_one())
        granted: list[Claim] = []
        refused: list[Claim] = []
        exhausted: str | None = None
        for claim in claimed:
            full = next((p for p, n in left.items() if n <= 0), None)
            if full is not None:
                exhausted = exhausted or full
                refused.append(claim)
                continue
            granted.append(claim)
            if claim.kind == "issued":
                for period in left:
                    left[period] -= 1
        coupons = sum(1 for c in granted if c.kind == "issued")
        if coupons:
            for period, _ in periods:
                row = {"campaign_id": campaign_id, "period": period, "issued": coupons}
                conn.execute(self._sql.add_budget, row)
        return granted, refused, exhausted

    def _purchased(
        self, conn: Connection, user_id: str, now: datetime, after: datetime | None = None
    ) -> bool:
        if after is not None:
            row = {"user_id": user_id, "now": now, "after": after}
            return conn.execute(self._sql.purchased_after, row).first() is not None
        return (
            conn.execute(self._sql.purchased, {"user_id": user_id, "now": now}).first() is not None
        )

    def _claim(
        self,
        conn: Connection,
        campaign_id: str,
        user_id: str,
        occurrence: str,
        values: dict[str, Any],
    ) -> str | None:
        """``inserted``, ``upgraded`` (a budget miss made final) or None (already decided)."""
        row = {"campaign_id": campaign_id, "user_id": user_id, "occurrence": occurrence, **values}
        if conn.execute(self._sql.claim, row).first() is not None:
            return "inserted"
        # a row is there: only a budget miss may still become final (the WHERE re-checks it)
        where = {
            "where_campaign": campaign_id,
            "where_user": user_id,
            "where_occurrence": occurrence,
        }
        where.update({f"new_{col}": value for col, value in values.items()})
        upgraded = conn.execute(self._sql.upgrade, where).first()
        return "upgraded" if upgraded is not None else None

    def _check_budget(self, conn: Connection, campaign_id: str, caps: Caps, now: datetime) -> None:
        """Raise BudgetExhausted when a cap is reached; counts nothing (a holdout decision)."""
        self._check_money(conn, campaign_id, caps, now)
        limits = {
            p: c for p, c in (("total", caps.total), (day_of(now), caps.per_day)) if c is not None
        }
        if not limits:
            return
        rows = conn.execute(
            self._sql.budget, {"campaign_id": campaign_id, "periods": list(limits)}
        ).all()
        used = {str(period): int(n) for period, n in rows}
        for period, cap in limits.items():
            if used.get(period, 0) >= cap:
                raise BudgetExhausted(period)

    def _take_budget(self, conn: Connection, campaign_id: str, caps: Caps, now: datetime) -> None:
        """Count the coupon against ``total`` and today; refuse it when a cap is reached.

        Every coupon is counted, capped or not, so a cap added later starts from the truth.
        The cap is the WHERE of the upsert: PostgreSQL re-checks it on the locked row after
        waiting for a concurrent writer, and SQLite has one writer at a time.
        A money budget reached refuses it too (``_check_money``), before anything is counted.
        """
        self._check_money(conn, campaign_id, caps, now)
        for period, cap in (("total", caps.total), (day_of(now), caps.per_day)):
            if cap is not None and cap <= 0:
                raise BudgetExhausted(period)
            row = {"campaign_id": campaign_id, "period": period, "issued": 1}
            if cap is None:
                taken = conn.execute(self._sql.count_coupon, row).first()
            else:
                taken = conn.execute(self._sql.count_capped_coupon, {**row, "cap": cap}).first()
            if taken is None:
                raise BudgetExhausted(period)

    def _check_money(self, conn: Connection, campaign_id: str, caps: Caps, now: datetime) -> None:
        """Raise BudgetExhausted(``budget_money_total`` or ``budget_money_day``) once the
        discount given reaches a money cap (issue 12, item 3; ``repository.spend``)."""
        reached = self._spend.exhausted(conn, campaign_id, caps.money, now)
        if reached is not None:
            raise BudgetExhausted(reached)

    def _insert_coupon(
        self, conn: Connection, decision: DecisionRecord, draft: CouponDraft, now: datetime
    ) -> CouponRecord:
        coupon = _coupon(decision, draft, now)
        self.coupons.insert(conn, coupon)
        outbox.coupons_issued(self.base, conn, [coupon])  # the shop's webhook, same transaction
        return coupon

    def _decision(
        self, conn: Connection, campaign_id: str, user_id: str, occurrence: str = ONCE
    ) -> DecisionRecord | None:
        row = conn.execute(
            self._sql.decision,
            {"campaign_id": campaign_id, "user_id": user_id, "occurrence": occurrence},
        ).first()
        return DecisionRecord(*row) if row else None

    def _coupon_of(self, conn: Connection, decision: DecisionRecord) -> CouponRecord | None:
        if decision.decision != "issued":
            return None
        return self.coupons.issued_with(decision.attribution_id, conn)
