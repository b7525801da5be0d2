"""Campaign results for marketing, and the offer gauges of the metrics endpoint.

Reach, coupons, budget, conversion of treated and held-out users with the uplift and its
interval, and the discount given; read-only over ``OfferRepository.reports``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from service.money import QUANTUM
from service.offers.audience import AXES
from service.offers.campaigns import Campaign, find_campaign
from service.offers.discounts import money_caps
from service.offers.kinds import COUPON_STATES, RECORDED
from service.offers.repository import OfferRepository
from service.offers.repository.reports import NO_CURRENCY, UnpricedRedemption
from service.offers.revenue import CurrencyRevenue, revenue_by_currency
from service.offers.stats import Interval, uplift, wilson
from service.offers.targeting import SegmentRow, segment_rows

if TYPE_CHECKING:
    from service.metrics import Metrics


@dataclass(frozen=True)
class CampaignStats:
    campaign_id: str
    at: datetime
    eligible: int
    decisions: dict[str, int]
    coupons: dict[str, int]
    budget: dict[str, int | None]
    conversion: dict[str, Interval | None]
    converted: dict[str, int]
    open_windows: int
    uplift: Interval | None
    discount_cost: dict[str, Decimal]  # exact, by currency, from the trail
    discount_cost_estimated: Decimal  # from catalogue prices; not part of discount_cost
    unpriced_orders: int = 0
    # per segment of both axes, as recorded with each decision (issue 12, item 4)
    segments: list[SegmentRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # money (issue 12, item 3): revenue per user and the incremental revenue, by currency
    revenue: dict[str, CurrencyRevenue] = field(default_factory=dict)
    unpriced_purchases: int = 0  # in the conversion windows, without a price: not in revenue
    budget_money: MoneyBudget | None = None
    discount_given: dict[str, dict[str, Decimal]] = field(default_factory=dict)


@dataclass(frozen=True)
class MoneyBudget:
    """A money budget and the discount given against it, in its currency."""

    currency: str
    max_total: Decimal | None
    spent_total: Decimal
    left_total: Decimal | None
    max_per_day: Decimal | None
    spent_today: Decimal
    left_today: Decimal | None


def money_left(cap: Decimal | None, spent: Decimal) -> Decimal | None:
    """Discount still allowed under ``cap`` after ``spent``; None without a cap."""
    return None if cap is None else max(Decimal(0), cap - spent).quantize(QUANTUM)


def money_budget(campaign: Campaign, spent: dict[str, dict[str, Decimal]]) -> MoneyBudget | None:
    """``campaign``'s money budget against ``spent`` (``ReportRepository.spent``)."""
    caps = money_caps(campaign)
    if caps is None:
        return None
    total = spent["total"].get(caps.currency, Decimal(0)).quantize(QUANTUM)
    today = spent["today"].get(caps.currency, Decimal(0)).quantize(QUANTUM)
    return MoneyBudget(
        currency=caps.currency,
        max_total=caps.total,
        spent_total=total,
        left_total=money_left(caps.total, total),
        max_per_day=caps.per_day,
        spent_today=today,
        left_today=money_left(caps.per_day, today),
    )


def budget_left(cap: int | None, used: int) -> int | None:
    """Coupons still allowed under ``cap`` after ``used``; None without a cap."""
    return None if cap is None else max(0, cap - used)


class Reports:
    """Campaign stats and offer gauges for one service process."""

    def __init__(
        self,
        campaigns: Mapping[str, Campaign],
        repository: OfferRepository,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.campaigns = dict(campaigns)
        self.repository = repository.reports
        self.clock = clock
        self.metrics = metrics

    def stats(self, campaign_id: str) -> CampaignStats:
        """Reach, coupons, budget, conversion of treated and holdout users, and the uplift."""
        campaign = find_campaign(self.campaigns, campaign_id)
        now = self.clock()
        counts = self.repository.counts(campaign_id, now)
        issued = counts.decisions.get("issued", 0)
        holdout = counts.decisions.get("holdout", 0)
        converted_t = min(issued, counts.converted.get("issued", 0))
        converted_h = min(holdout, counts.converted.get("holdout", 0))
        estimated, unpriced = self._estimated_discount(counts.redeemed_unpriced)
        used = self.repository.budget_used(campaign_id, now)
        notes = []
        # per segment (issue 12, item 4)
        by_axis = self.repository.segment_counts(campaign_id, now)
        segments = segment_rows(campaign, {axis: by_axis[axis] for axis in AXES})
        if campaign.uplift_targeting:
            notes.append(
                "uplift targeting treats some segments less, so the treated users over-represent "
                "the targeted ones: compare treated and holdout per segment"
            )
        open_windows = counts.open_windows.get("issued", 0) + counts.open_windows.get("holdout", 0)
        if open_windows:
            notes.append(
                f"{open_windows} decided users are still inside their conversion window; "
                "their conversions so far are counted"
            )
        # money (issue 12, item 3)
        per_user, unpriced_purchases = self.repository.revenue(campaign_id, now)
        known_cost = {k: v for k, v in counts.discount_known.items() if k != NO_CURRENCY}
        revenue = revenue_by_currency(per_user, issued, holdout, known_cost)
        spent = self.repository.spent(campaign_id, now)
        if unpriced_purchases:
            notes.append(
                f"{unpriced_purchases} purchases in the conversion windows have no price; "
                "they are not in the revenue"
            )
        return CampaignStats(
            revenue=revenue,
            unpriced_purchases=unpriced_purchases,
            budget_money=money_budget(campaign, spent),
            discount_given=spent,
            campaign_id=campaign_id,
            at=now,
            eligible=sum(counts.decisions.values()),
            decisions={k: counts.decisions.get(k, 0) for k in RECORDED},
            coupons={
                "issued": issued,
                "active": counts.coupons_active,
                "redeemed": counts.coupons_redeemed,
                "expired": counts.coupons_expired,
                "redemptions": counts.redemptions,
                "releases": counts.releases,
            },
            budget={
                "max_total": campaign.max_total,
                "used_total": used["total"],
                "left_total": budget_left(campaign.max_total, used["total"]),
                "max_per_day": campaign.max_per_day,
                "used_today": used["today"],
                "left_today": budget_left(campaign.max_per_day, used["today"]),
            },
            conversion={
                "treated": wilson(converted_t, issued),
                "holdout": wilson(converted_h, holdout),
            },
            converted={"treated": converted_t, "holdout": converted_h},
            open_windows=open_windows,
            uplift=uplift(converted_t, issued, converted_h, holdout),
            segments=segments,
            discount_cost=dict(sorted(counts.discount_known.items())),
            discount_cost_estimated=estimated,
            unpriced_orders=unpriced,
            notes=notes,
        )

    def refresh_gauges(self) -> None:
        """Coupons by state and budget left, from the database (every worker sees the same).

        Nothing to do without metrics.
        """
        metrics = self.metrics
        if metrics is None:
            return
        now = self.clock()
        counts = self.repository.coupon_states(now)
        for campaign_id in self.campaigns:
            for state in COUPON_STATES:
                metrics.coupons.labels(campaign_id, state).set(counts.get((campaign_id, state), 0))
        for campaign in self.campaigns.values():
            # when the total budget must last until (the budget-burn alert); 0: no end
            until = campaign.active_until
            ends = 0.0 if until is None else until.timestamp()
            metrics.campaign_active_until.labels(campaign.campaign_id).set(ends)
            if campaign.max_total is None and campaign.max_per_day is None:
                continue
            used = self.repository.budget_used(campaign.campaign_id, now)
            for period, cap in (("total", campaign.max_total), ("today", campaign.max_per_day)):
                left = budget_left(cap, used[period])
                if left is not None:
                    metrics.budget_left.labels(campaign.campaign_id, period).set(left)
        self._refresh_money_gauges(metrics, now)

    def _refresh_money_gauges(self, metrics: Metrics, now: datetime) -> None:
        """The discount given and the money budget left (issue 12, item 3)."""
        for campaign in self.campaigns.values():
            spent = self.repository.spent(campaign.campaign_id, now)
            # today reads 0 in a currency given in before, not yesterday's figure
            currencies = set(spent["total"]) | set(spent["today"])
            for period, amounts in spent.items():
                for currency in currencies:
                    amount = amounts.get(currency, Decimal(0))
                    metrics.discount_given.labels(campaign.campaign_id, period, currency).set(
                        float(amount)
                    )
            budget = money_budget(campaign, spent)
            if budget is None:
                continue
            for period, left in (("total", budget.left_total), ("today", budget.left_today)):
                if left is not None:
                    metrics.budget_money_left.labels(
                        campaign.campaign_id, period, budget.currency
                    ).set(float(left))

    def _estimated_discount(self, redeemed: Sequence[UnpricedRedemption]) -> tuple[Decimal, int]:
        """Discount on orders redeemed without an amount, from catalogue prices of their lines.

        An estimate (the catalogue's prices now, in its currency); orders it cannot price,
        and those of erased users, are counted as unpriced.
        """
        total, unpriced = Decimal(0), 0
        for use in redeemed:
            if use.user_id is None:
                unpriced += 1
                continue
            lines = self.repository.order_lines(use.user_id, use.order_id)
            allowed = set(use.item_ids) if use.item_ids else None
            prices = [p for item, p in lines if allowed is None or item in allowed]
            if not prices or any(p is None for p in prices):
                unpriced += 1
            percent = Decimal(str(use.discount_percent))
            total += sum((Decimal(str(p)) for p in prices if p is not None), Decimal(0)) * percent
        return (total / 100).quantize(QUANTUM), unpriced
