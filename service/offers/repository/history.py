"""A campaign's results day by day (the console's charts): the counts of ``ReportRepository``
grouped by UTC day in SQL, on SQLite and PostgreSQL alike.

Each count is grouped by the day its event happened, so that summing the days up to a day
gives what the stats would have counted at that day's end, and summing them all gives exactly
what ``ReportRepository.counts`` / ``revenue`` / ``spent`` count now:

* decisions by the day decided (``decided_at``);
* conversions by the day of the decision's first purchase inside its conversion window;
* standing redemptions (not released) and their discount by the day redeemed;
* coupons expired unused by the day they expired (``expires_at``, up to now);
* the discount given (``campaign_spend``, the money budget) by the day it was given;
* each decided user's revenue in the window by decision, currency and day of purchase.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, func, select, type_coerce

from service.activity.repository import Repository
from service.money import from_units
from service.offers.repository.reports import converted_within, standing_redemptions
from service.offers.repository.spend import TOTAL
from service.tables import campaign_spend, coupon_ledger, coupons, events, offer_decisions

# the two sides whose conversion and revenue are compared
SIDES = ("issued", "holdout")


def utc_day(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """A time column's UTC day, ``YYYY-MM-DD`` (SQLite stores UTC text already)."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD", type_=String())
    return func.substr(column, 1, 10, type_=String())


@dataclass
class DailyCounts:
    """A campaign's counts per UTC day (``YYYY-MM-DD``); days without one are absent."""

    decided: dict[str, dict[str, int]] = field(default_factory=dict)  # day -> decision -> n
    converted: dict[str, dict[str, int]] = field(default_factory=dict)  # day -> side -> n
    redeemed: dict[str, int] = field(default_factory=dict)  # standing redemptions
    discount: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # day -> currency
    expired: dict[str, int] = field(default_factory=dict)
    spent: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # day -> currency
    # (decision id, side, currency, day, amount): one decided user's revenue bought that day
    revenue: list[tuple[int, str, str, str, Decimal]] = field(default_factory=list)
    unpriced: dict[str, int] = field(default_factory=dict)  # purchases without a price

    def days(self) -> list[str]:
        """Every day with a count, in order."""
        found: set[str] = set()
        for table in (self.decided, self.converted, self.redeemed, self.expired, self.spent):
            found.update(table)
        found.update(day for _, _, _, day, _ in self.revenue)
        found.update(self.unpriced)
        return sorted(found)


class HistoryRepository:
    """Read-only, grouped queries of one campaign's results by day, in one snapshot."""

    def __init__(self, base: Repository) -> None:
        self.engine = base.engine

    def daily(self, campaign_id: str, now: datetime) -> DailyCounts:
        """The campaign's counts per UTC day up to ``now`` (see the module docstring)."""
        d, e, c = offer_decisions, events, coupons
        out = DailyCounts()
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            dialect = conn.dialect.name
            decided_day = utc_day(d.c.decided_at, dialect)
            for day, kind, n in conn.execute(
                select(decided_day, d.c.decision, func.count())
                .where(d.c.campaign_id == campaign_id)
                .group_by(decided_day, d.c.decision)
            ):
                out.decided.setdefault(str(day), {})[str(kind)] = int(n)

            window = converted_within(now)
            first = (
                select(d.c.decision.label("side"), func.min(e.c.ts).label("first_at"))
                .select_from(d.join(e, window))
                .where(d.c.campaign_id == campaign_id, d.c.decision.in_(SIDES))
                .group_by(d.c.id, d.c.decision)
                .subquery()
            )
            first_day = utc_day(first.c.first_at, dialect)
            for day, side, n in conn.execute(
                select(first_day, first.c.side, func.count()).group_by(first_day, first.c.side)
            ):
                out.converted.setdefault(str(day), {})[str(side)] = int(n)

            r = coupon_ledger.alias("r")
            redeemed_day = utc_day(r.c.at, dialect)
            for day, currency, n, total in conn.execute(
                select(redeemed_day, r.c.currency, func.count(), func.sum(r.c.discount_amount))
                .where(standing_redemptions(r, campaign_id))
                .group_by(redeemed_day, r.c.currency)
            ):
                key = str(day)
                out.redeemed[key] = out.redeemed.get(key, 0) + int(n)
                if total is not None and currency is not None:
                    amounts = out.discount.setdefault(key, {})
                    amounts[str(currency)] = amounts.get(str(currency), Decimal(0)) + total

            expired_day = utc_day(c.c.expires_at, dialect)
            for day, n in conn.execute(
                select(expired_day, func.count())
                .where(
                    c.c.campaign_id == campaign_id,
                    c.c.redeemed_at.is_(None),
                    c.c.expires_at <= now,
                )
                .group_by(expired_day)
            ):
                out.expired[str(day)] = int(n)

            s = campaign_spend
            for day, currency, units in conn.execute(
                select(s.c.period, s.c.currency, type_coerce(s.c.spent, BigInteger)).where(
                    s.c.campaign_id == campaign_id, s.c.period != TOTAL
                )
            ):
                out.spent.setdefault(str(day), {})[str(currency)] = from_units(int(units))

            units_of = type_coerce(e.c.price, BigInteger) * func.coalesce(e.c.quantity, 1)
            bought_day = utc_day(e.c.ts, dialect)
            unpriced: dict[str, int] = defaultdict(int)
            for decision_id, side, currency, day, total, n in conn.execute(
                select(
                    d.c.id, d.c.decision, e.c.currency, bought_day, func.sum(units_of), func.count()
                )
                .select_from(d.join(e, window))
                .where(d.c.campaign_id == campaign_id, d.c.decision.in_(SIDES))
                .group_by(d.c.id, d.c.decision, e.c.currency, bought_day)
            ):
                if currency is None or total is None:
                    unpriced[str(day)] += int(n)
                else:
                    out.revenue.append(
                        (
                            int(decision_id),
                            str(side),
                            str(currency),
                            str(day),
                            from_units(int(total)),
                        )
                    )
            out.unpriced = dict(unpriced)
        return out

    def summary(self) -> dict[str, dict[str, int]]:
        """Every campaign's decisions by kind, in one grouped read (the campaigns' list)."""
        d = offer_decisions
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for campaign_id, kind, n in conn.execute(
                select(d.c.campaign_id, d.c.decision, func.count()).group_by(
                    d.c.campaign_id, d.c.decision
                )
            ):
                out.setdefault(str(campaign_id), {})[str(kind)] = int(n)
        return out
