"""Queries the reports read: a campaign's counts, order lines, budget used, coupons by state.

Redemptions, releases and the discount given are counted from the coupons' trail
(``coupon_ledger``): a redemption stands unless a release of the same coupon carries its
number. Reads only; nothing here takes part in a decision or a redemption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ColumnElement, FromClause, and_, case, func, select, type_coerce

from service.activity.repository import Repository
from service.money import from_units
from service.offers.repository.decisions import day_of
from service.offers.repository.spend import SpendStatements
from service.tables import (
    campaign_budgets,
    coupon_ledger,
    coupons,
    events,
    items,
    offer_decisions,
)

NO_CURRENCY = "XXX"  # ISO 4217's code for "no currency": amounts recorded before currencies
UNKNOWN_SEGMENT = "unknown"  # a decision recorded without a segment (service.offers.audience)
SEGMENT_SIDES = ("issued", "holdout", "not_targeted")  # the final decisions, sliced by segment
VERDICTS_READ_TIMEOUT_MS = 600_000  # uplift targeting's read, out of the requests' way


def standing_redemptions(r: FromClause, campaign_id: str) -> ColumnElement[bool]:
    """The redemptions of ``campaign_id`` in ``r`` (an alias of ``coupon_ledger``) that no
    later release took back: what counts as redeemed in the stats and the daily history."""
    x = coupon_ledger.alias("x")
    released = (
        select(x.c.id)
        .where(x.c.code == r.c.code, x.c.redemption == r.c.redemption, x.c.action == "release")
        .exists()
    )
    return and_(r.c.campaign_id == campaign_id, r.c.action == "redeem", ~released)


def converted_within(now: datetime) -> ColumnElement[bool]:
    """The join of a decision (``offer_decisions``) to the purchases (``events``) that convert
    it: its user's, after the decision, within its conversion window, and not after ``now``.
    Shared by the stats, the segment verdicts, the revenue and the daily history."""
    d, e = offer_decisions, events
    return and_(
        e.c.user_id == d.c.user_id,
        e.c.type == "purchase",
        e.c.ts > d.c.decided_at,
        e.c.ts <= d.c.convert_until,
        e.c.ts <= now,
    )


@dataclass(frozen=True)
class UnpricedRedemption:
    """A standing redemption sent without an order amount (its discount is estimated)."""

    user_id: str | None  # None once the user is erased
    order_id: str
    item_ids: list[str] | None
    discount_percent: float


@dataclass(frozen=True)
class CampaignCounts:
    decisions: Counter[str]
    coupons_active: int
    coupons_redeemed: int  # standing redemptions, from the trail
    coupons_expired: int
    converted: Counter[str]  # users with a purchase inside their conversion window, by decision
    open_windows: Counter[str]  # users whose conversion window has not closed yet
    discount_known: dict[str, Decimal]  # by currency, on standing redemptions with an amount
    redeemed_unpriced: list[UnpricedRedemption]  # standing, without an order amount
    redemptions: int = 0  # every redemption in the trail, released ones included
    releases: int = 0


class ReportRepository:
    """Read-only queries of the offer tables for stats and gauges, on the shared engine."""

    def __init__(self, base: Repository) -> None:
        self.engine = base.engine
        self._spend = SpendStatements(base)

    def counts(self, campaign_id: str, now: datetime) -> CampaignCounts:
        """Everything the campaign's stats are computed from, in a handful of queries.

        One snapshot for all of them (REPEATABLE READ on PostgreSQL; a read transaction is one
        on SQLite in WAL mode), so the counts agree with each other.
        """
        d, c, e = offer_decisions, coupons, events
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            decisions = Counter(
                {
                    str(kind): int(n)
                    for kind, n in conn.execute(
                        select(d.c.decision, func.count())
                        .where(d.c.campaign_id == campaign_id)
                        .group_by(d.c.decision)
                    )
                }
            )
            open_windows = Counter(
                {
                    str(kind): int(n)
                    for kind, n in conn.execute(
                        select(d.c.decision, func.count())
                        .where(d.c.campaign_id == campaign_id, d.c.convert_until > now)
                        .group_by(d.c.decision)
                    )
                }
            )
            bought = select(e.c.id).where(converted_within(now)).exists()
            converted = Counter(
                {
                    str(kind): int(n)
                    for kind, n in conn.execute(
                        select(d.c.decision, func.count())
                        .where(d.c.campaign_id == campaign_id, bought)
                        .group_by(d.c.decision)
                    )
                }
            )
            active, expired = conn.execute(
                select(
                    func.count(case((and_(c.c.redeemed_at.is_(None), c.c.expires_at > now), 1))),
                    func.count(case((and_(c.c.redeemed_at.is_(None), c.c.expires_at <= now), 1))),
                ).where(c.c.campaign_id == campaign_id)
            ).one()
            r = coupon_ledger.alias("r")
            redemptions, releases = conn.execute(
                select(
                    func.count(case((r.c.action == "redeem", 1))),
                    func.count(case((r.c.action == "release", 1))),
                ).where(r.c.campaign_id == campaign_id)
            ).one()
            standing = standing_redemptions(r, campaign_id)
            standing_count = 0
            discount: dict[str, Decimal] = {}
            for currency, n, total in conn.execute(
                select(r.c.currency, func.count(), func.sum(r.c.discount_amount))
                .where(standing)
                .group_by(r.c.currency)
            ):
                standing_count += int(n)
                if total is not None:
                    key = str(currency or NO_CURRENCY)
                    discount[key] = discount.get(key, Decimal(0)) + total
            unpriced = [
                UnpricedRedemption(user, str(order), item_ids, float(percent))
                for user, order, item_ids, percent in conn.execute(
                    select(r.c.user_id, r.c.order_id, c.c.item_ids, c.c.discount_percent)
                    .select_from(r.join(c, c.c.code == r.c.code))
                    .where(standing, r.c.order_amount.is_(None))
                    .order_by(r.c.id)
                )
            ]
        return CampaignCounts(
            decisions=decisions,
            coupons_active=int(active),
            coupons_redeemed=standing_count,
            coupons_expired=int(expired),
            converted=converted,
            open_windows=open_windows,
            discount_known=discount,
            redeemed_unpriced=unpriced,
            redemptions=int(redemptions),
            releases=int(releases),
        )

    # --- per-segment counts (issue 12, item 4) ----------------------------------------------

    def segment_counts(
        self, campaign_id: str, now: datetime, *, long: bool = False
    ) -> dict[str, dict[tuple[str, str], tuple[int, int]]]:
        """Per axis (``lifecycle_stage``, ``loyalty_type``): (segment at decision time,
        decision) -> (users, converted), final decisions only; one grouped read.

        The segment is the one recorded with the decision (``unknown``: the user had no
        segment row then), so a user whose segment changed since, maybe because of the
        coupon, stays where they were measured. Conversions as ``counts`` counts them.
        ``long``: the read of uplift targeting's verdicts, once per period and out of the
        requests' way, may outlast the timeout that keeps requests short (PostgreSQL).
        """
        d, e = offer_decisions, events
        stage = func.coalesce(d.c.lifecycle_stage, UNKNOWN_SEGMENT)
        loyalty = func.coalesce(d.c.loyalty_type, UNKNOWN_SEGMENT)
        bought = select(e.c.id).where(converted_within(now)).exists()
        query = (
            select(stage, loyalty, d.c.decision, func.count(), func.count(case((bought, 1))))
            .where(d.c.campaign_id == campaign_id, d.c.decision.in_(SEGMENT_SIDES))
            .group_by(stage, loyalty, d.c.decision)
        )
        out: dict[str, dict[tuple[str, str], tuple[int, int]]] = {
            "lifecycle_stage": {},
            "loyalty_type": {},
        }
        with self.engine.connect() as conn:
            if long and conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {VERDICTS_READ_TIMEOUT_MS}")
            rows = conn.execute(query).all()
        for s, t, kind, n, c in rows:
            for axis, segment in (("lifecycle_stage", str(s)), ("loyalty_type", str(t))):
                key = (segment, str(kind))
                users, converted = out[axis].get(key, (0, 0))
                out[axis][key] = (users + int(n), converted + int(c))
        return out

    def order_lines(self, user_id: str, order_id: str) -> list[tuple[str, float | None]]:
        """(item, catalogue price) of the purchase events of one order."""
        query = (
            select(events.c.item_id, items.c.price)
            .select_from(events.outerjoin(items, items.c.item_id == events.c.item_id))
            .where(
                events.c.user_id == user_id,
                events.c.order_id == order_id,
                events.c.type == "purchase",
            )
        )
        with self.engine.connect() as conn:
            return [(str(i), None if p is None else float(p)) for i, p in conn.execute(query)]

    def budget_used(self, campaign_id: str, now: datetime) -> dict[str, int]:
        """Coupons counted against the caps: ``total`` and today's."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(campaign_budgets.c.period, campaign_budgets.c.issued).where(
                    campaign_budgets.c.campaign_id == campaign_id,
                    campaign_budgets.c.period.in_(["total", day_of(now)]),
                )
            )
            used = {str(p): int(n) for p, n in rows}
        return {"total": used.get("total", 0), "today": used.get(day_of(now), 0)}

    def coupon_states(self, now: datetime) -> dict[tuple[str, str], int]:
        """(campaign, active|redeemed|expired) -> coupons, for the metrics."""
        state = case(
            (coupons.c.redeemed_at.is_not(None), "redeemed"),
            (coupons.c.expires_at <= now, "expired"),
            else_="active",
        )
        query = select(coupons.c.campaign_id, state, func.count()).group_by(
            coupons.c.campaign_id, state
        )
        with self.engine.connect() as conn:
            return {(str(c), str(s)): int(n) for c, s, n in conn.execute(query)}

    # --- money (issue 12, item 3) ---------------------------------------------------------

    def revenue(
        self, campaign_id: str, now: datetime
    ) -> tuple[list[tuple[str, str, Decimal]], int]:
        """Each decided user's revenue in each currency inside the decision's conversion window
        (``price x quantity`` of purchase events), as (``issued`` | ``holdout``, currency,
        amount), users without a purchase left out; and the purchases without a price there.

        One row per decision rather than per user: a recurring campaign decides a user once
        per occurrence, and each occurrence has its own window.
        """
        d, e = offer_decisions, events
        units = type_coerce(e.c.price, BigInteger) * func.coalesce(e.c.quantity, 1)
        window = converted_within(now)
        query = (
            select(d.c.id, d.c.decision, e.c.currency, func.sum(units), func.count())
            .select_from(d.join(e, window))
            .where(d.c.campaign_id == campaign_id, d.c.decision.in_(["issued", "holdout"]))
            .group_by(d.c.id, d.c.decision, e.c.currency)
        )
        rows: list[tuple[str, str, Decimal]] = []
        unpriced = 0
        with self.engine.connect() as conn:
            for _, decision, currency, total, n in conn.execute(query):
                if currency is None or total is None:
                    unpriced += int(n)
                else:
                    rows.append((str(decision), str(currency), from_units(int(total))))
        return rows, unpriced

    def spent(self, campaign_id: str, now: datetime) -> dict[str, dict[str, Decimal]]:
        """Discount given, ``{"total" | "today": {currency: amount}}`` (``repository.spend``)."""
        with self.engine.connect() as conn:
            return self._spend.spent(conn, campaign_id, now)
