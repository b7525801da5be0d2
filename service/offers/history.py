"""A campaign's results over time: its stats as they stood at the end of each UTC day.

Every figure is cumulative, from the campaign's first day to the day shown, so the last day's
is the campaign's total now, the figure ``Reports.stats`` (``GET /v1/campaigns/{id}/stats``)
answers: decisions, coupons redeemed (standing) and expired, discount given, conversion of the
treated and held-out users with their intervals, the uplift with its interval, and the
incremental revenue per currency. The counts come per day from ``HistoryRepository.daily``;
the intervals are those of the stats (``offers.stats``, ``offers.revenue``), computed on each
day's cumulative counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from service.offers.repository.history import HistoryRepository
from service.offers.revenue import CurrencyRevenue, revenue_by_currency
from service.offers.stats import Interval, uplift, wilson

MAX_DAYS = 366  # days shown at most (the latest); the figures still count every earlier day


@dataclass(frozen=True)
class DayResults:
    """The campaign's results at the end of one UTC day, cumulative."""

    day: str  # YYYY-MM-DD
    decided: dict[str, int]  # issued, holdout, not_targeted, budget_exhausted
    redeemed: int
    expired: int
    spent: dict[str, Decimal]  # discount given, by currency (the money budget)
    converted: dict[str, int]  # treated, holdout
    conversion: dict[str, Interval | None]
    uplift: Interval | None
    revenue: dict[str, CurrencyRevenue]
    unpriced_purchases: int


@dataclass(frozen=True)
class CampaignHistory:
    campaign_id: str
    at: datetime
    days: list[DayResults]
    first_day: str | None  # the campaign's first day with a result (maybe before ``days``)

    @property
    def currencies(self) -> list[str]:
        found = {c for d in self.days for c in (*d.spent, *d.revenue)}
        return sorted(found)


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for key, n in part.items():
        total[key] = total.get(key, 0) + n


def _add_money(total: dict[str, Decimal], part: dict[str, Decimal]) -> None:
    for key, amount in part.items():
        total[key] = total.get(key, Decimal(0)) + amount


class History:
    """Campaign results over time, from the database."""

    def __init__(self, repository: HistoryRepository, clock: Callable[[], datetime]) -> None:
        self.repository = repository
        self.clock = clock

    def results(self, campaign_id: str, *, max_days: int = MAX_DAYS) -> CampaignHistory:
        """Every day from the campaign's first result to today (at most ``max_days``, the
        latest), each with its cumulative figures (the module docstring)."""
        now = self.clock()
        counts = self.repository.daily(campaign_id, now)
        seen = counts.days()
        if not seen:
            return CampaignHistory(campaign_id, now, [], None)
        today = now.astimezone(UTC).date()
        start = min(date.fromisoformat(seen[0]), today)
        every = [(start + timedelta(days=n)).isoformat() for n in range((today - start).days + 1)]
        shown = set(every[-max_days:])
        revenue_by_day: dict[str, list[tuple[int, str, str, Decimal]]] = {}
        for decision_id, side, currency, day, amount in counts.revenue:
            revenue_by_day.setdefault(day, []).append((decision_id, side, currency, amount))
        decided: dict[str, int] = {}
        converted: dict[str, int] = {}
        redeemed = expired = unpriced = 0
        spent: dict[str, Decimal] = {}
        discount: dict[str, Decimal] = {}
        per_user: dict[tuple[int, str, str], Decimal] = {}  # (decision, side, currency)
        days = []
        for day in every:
            _add(decided, counts.decided.get(day, {}))
            _add(converted, counts.converted.get(day, {}))
            redeemed += counts.redeemed.get(day, 0)
            expired += counts.expired.get(day, 0)
            unpriced += counts.unpriced.get(day, 0)
            _add_money(spent, counts.spent.get(day, {}))
            _add_money(discount, counts.discount.get(day, {}))
            for decision_id, side, currency, amount in revenue_by_day.get(day, []):
                key = (decision_id, side, currency)
                per_user[key] = per_user.get(key, Decimal(0)) + amount
            if day not in shown:
                continue
            issued, holdout = decided.get("issued", 0), decided.get("holdout", 0)
            converted_t = min(issued, converted.get("issued", 0))
            converted_h = min(holdout, converted.get("holdout", 0))
            rows = [(side, currency, amount) for (_, side, currency), amount in per_user.items()]
            days.append(
                DayResults(
                    day=day,
                    decided=dict(decided),
                    redeemed=redeemed,
                    expired=expired,
                    spent=dict(spent),
                    converted={"treated": converted_t, "holdout": converted_h},
                    conversion={
                        "treated": wilson(converted_t, issued),
                        "holdout": wilson(converted_h, holdout),
                    },
                    uplift=uplift(converted_t, issued, converted_h, holdout),
                    revenue=revenue_by_currency(rows, issued, holdout, dict(discount)),
                    unpriced_purchases=unpriced,
                )
            )
        return CampaignHistory(campaign_id, now, days, every[0])
