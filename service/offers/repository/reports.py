"""Queries the reports read: a campaign's counts, order lines, budget used, coupons by state.

Reads only; nothing here takes part in a decision or a redemption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select

from service.activity.repository import Repository
from service.offers.repository.coupons import CouponRecord, coupon_of_row
from service.offers.repository.decisions import day_of
from service.tables import campaign_budgets, coupons, events, items, offer_decisions


@dataclass(frozen=True)
class CampaignCounts:
    decisions: Counter[str]
    coupons_active: int
    coupons_redeemed: int
    coupons_expired: int
    converted: Counter[str]  # users with a purchase inside their conversion window, by decision
    open_windows: Counter[str]  # users whose conversion window has not closed yet
    discount_known: float  # discount given on redeemed coupons whose order amount was sent
    redeemed_unpriced: list[CouponRecord]  # redeemed without an order amount


class ReportRepository:
    """Read-only queries of the offer tables for stats and gauges, on the shared engine."""

    def __init__(self, base: Repository) -> None:
        self.engine = base.engine

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
            bought = (
                select(e.c.id)
                .where(
                    e.c.user_id == d.c.user_id,
                    e.c.type == "purchase",
                    e.c.ts > d.c.decided_at,
                    e.c.ts <= d.c.convert_until,
                    e.c.ts <= now,
                )
                .exists()
            )
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
            row = conn.execute(
                select(
                    func.count(case((c.c.redeemed_at.is_not(None), 1))),
                    func.count(case((and_(c.c.redeemed_at.is_(None), c.c.expires_at <= now), 1))),
                    func.count(case((and_(c.c.redeemed_at.is_(None), c.c.expires_at > now), 1))),
                    func.coalesce(func.sum(c.c.discount_amount), 0.0),
                ).where(c.c.campaign_id == campaign_id)
            ).one()
            unpriced = [
                coupon_of_row(r)
                for r in conn.execute(
                    select(c).where(
                        c.c.campaign_id == campaign_id,
                        c.c.redeemed_at.is_not(None),
                        c.c.order_amount.is_(None),
                    )
                )
            ]
        return CampaignCounts(
            decisions=decisions,
            coupons_active=int(row[2]),
            coupons_redeemed=int(row[0]),
            coupons_expired=int(row[1]),
            converted=converted,
            open_windows=open_windows,
            discount_known=float(row[3]),
            redeemed_unpriced=unpriced,
        )

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
