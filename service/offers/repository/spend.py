"""The discount actually given, per campaign, period and currency, and the money budgets.

A redemption adds its discount to ``campaign_spend`` (``total`` and the UTC day of the
redemption, in its currency) in the transaction that marks the coupon used; the release that
undoes it takes the same amount back from the same rows, in the release's transaction. The
upsert adds to what the row holds (``spent = spent + :delta``), so concurrent redemptions never
lose one another's amount, on SQLite (one writer at a time) and on PostgreSQL (the conflicting
row is locked and re-read) alike; the total row is written before the day's, by every writer,
so two redemptions cannot deadlock.

A money budget decides whether a *new* coupon is issued: the decision write reads the spend
rows of the campaign's currency in its own transaction and refuses the coupon once a cap is
reached (``budget_money_total``, ``budget_money_day``). A coupon already out is a promise to a
customer and is honoured at redemption; issuing does not reserve its worst case. So the
discount given can pass a cap by at most the coupons outstanding when it was reached (with a
fixed discount, at most their number times the amount; ``max_total`` bounds that number).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Connection, bindparam, select, type_coerce

from service.activity.repository import Repository
from service.money import from_units
from service.tables import campaign_spend

TOTAL = "total"


@dataclass(frozen=True)
class MoneyCaps:
    """A campaign's money budget: discount given at most per UTC day and in total."""

    currency: str
    per_day: Decimal | None
    total: Decimal | None


def day_key(moment: datetime) -> str:
    """The UTC day of ``moment``, ``YYYY-MM-DD``: the day ``decisions.day_of`` names too."""
    return moment.astimezone(UTC).date().isoformat()


class SpendStatements:
    """The statements of ``campaign_spend``, built once, run on a caller's transaction."""

    def __init__(self, base: Repository) -> None:
        s = campaign_spend
        insert = base.insert(s)
        self.add = insert.on_conflict_do_update(
            index_elements=[s.c.campaign_id, s.c.period, s.c.currency],
            set_={"spent": s.c.spent + insert.excluded.spent},
        )
        self.read = select(s.c.period, s.c.currency, type_coerce(s.c.spent, BigInteger)).where(
            s.c.campaign_id == bindparam("campaign_id"),
            s.c.period.in_(bindparam("periods", expanding=True)),
        )

    def add_spend(
        self,
        conn: Connection,
        campaign_id: str,
        at: datetime,
        currency: str,
        amount: Decimal,
    ) -> None:
        """Add ``amount`` (negative: take it back) to the campaign's total and ``at``'s day."""
        for period in (TOTAL, day_key(at)):  # total first, by every writer: no deadlock
            conn.execute(
                self.add,
                {
                    "campaign_id": campaign_id,
                    "period": period,
                    "currency": currency,
                    "spent": amount,
                },
            )

    def spent(
        self, conn: Connection, campaign_id: str, now: datetime
    ) -> dict[str, dict[str, Decimal]]:
        """Discount given, ``{"total" | "today": {currency: amount}}``."""
        today = day_key(now)
        out: dict[str, dict[str, Decimal]] = {TOTAL: {}, "today": {}}
        rows = conn.execute(self.read, {"campaign_id": campaign_id, "periods": [TOTAL, today]})
        for period, currency, units in rows:
            key = TOTAL if period == TOTAL else "today"
            out[key][str(currency)] = from_units(int(units))
        return out

    def exhausted(
        self, conn: Connection, campaign_id: str, caps: MoneyCaps | None, now: datetime
    ) -> str | None:
        """``budget_money_total`` or ``budget_money_day`` when that cap is reached, else None."""
        if caps is None or (caps.total is None and caps.per_day is None):
            return None
        spent = self.spent(conn, campaign_id, now)
        for name, period, cap in (("total", TOTAL, caps.total), ("day", "today", caps.per_day)):
            if cap is not None and spent[period].get(caps.currency, Decimal(0)) >= cap:
                return f"budget_money_{name}"
        return None
