"""Queries of the coupons table and its trail: look a coupon up, redeem it exactly once,
release it a bounded number of times.

A coupon is redeemed by an UPDATE whose WHERE holds "not redeemed, not expired, this user"
(shared/RELIABILITY.md), and released by one whose WHERE holds "redeemed by this order, fewer
releases than allowed": of any number of concurrent calls exactly one changes the row, on
SQLite and on PostgreSQL alike. The same transaction appends the use to ``coupon_ledger``,
whose unique (code, redemption, action) makes a second row for one use impossible as well.
Coupons are inserted by the decision write (``repository.decisions``), inside its
transaction, through ``insert``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from sqlalchemy import Connection, Integer, String, bindparam, or_, select, update
from sqlalchemy.engine import Row

from service.activity.repository import Repository
from service.delivery import outbox
from service.money import QUANTUM, AmountColumn
from service.offers.repository.spend import SpendStatements
from service.tables import UTCDateTime, coupon_ledger, coupons


@dataclass(frozen=True)
class CouponRecord:
    code: str
    campaign_id: str
    user_id: str | None  # None once the user was erased (the coupon stays for accounting)
    attribution_id: str
    discount_percent: float
    item_ids: list[str] | None
    issued_at: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    order_id: str | None
    order_amount: Decimal | None
    discount_amount: Decimal | None
    currency: str | None = None
    releases: int = 0
    # the terms (issue 12, item 3): fixed when issued; before 0010 percent, no minimum
    discount_kind: str = "percent"
    discount_fixed: Decimal | None = None
    terms_currency: str | None = None
    min_order_amount: Decimal | None = None


@dataclass(frozen=True)
class Use:
    """What the shop says about one redemption or release, as the trail keeps it."""

    order_id: str
    actor: str  # the API key's role and fingerprint (never the key)
    order_amount: Decimal | None = None
    currency: str | None = None
    # the whole order, which the minimum order is checked on (default: order_amount)
    order_total: Decimal | None = None

    @property
    def checked_total(self) -> Decimal | None:
        return self.order_amount if self.order_total is None else self.order_total


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the append-only trail ``coupon_ledger``."""

    id: int
    code: str
    campaign_id: str
    user_id: str | None
    action: Literal["redeem", "release"]
    redemption: int
    order_id: str
    order_amount: Decimal | None
    discount_amount: Decimal | None
    currency: str | None
    actor: str
    at: datetime


def discount_of(order_amount: Decimal | None, percent: float) -> Decimal | None:
    """``percent`` of ``order_amount``, to the stored precision; None without an amount."""
    if order_amount is None:
        return None
    exact = order_amount * Decimal(str(percent)) / 100
    return exact.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def discount_given(coupon: CouponRecord, eligible: Decimal | None) -> Decimal | None:
    """What ``coupon`` takes off ``eligible``: its percent of it, or its fixed amount capped
    at it; None without an amount."""
    if eligible is None:
        return None
    if coupon.discount_kind == "fixed" and coupon.discount_fixed is not None:
        return min(coupon.discount_fixed, eligible).quantize(QUANTUM)
    return discount_of(eligible, coupon.discount_percent)


def coupon_of_row(row: Row[Any]) -> CouponRecord:
    """A row of ``coupons`` (every column) as a record."""
    mapping = row._mapping
    return CouponRecord(**{k: mapping[k] for k in coupons.c.keys()})  # noqa: SIM118


class _Statements:
    """The hot statements, built once: building a statement costs 3-4 times running it."""

    def __init__(self) -> None:
        c = coupons
        now = bindparam("now", type_=UTCDateTime())
        self.insert = c.insert()
        self.by_code = select(c).where(c.c.code == bindparam("code"))
        self.by_attribution = select(c).where(c.c.attribution_id == bindparam("attribution"))
        self.active = (
            select(c)
            .where(
                c.c.user_id == bindparam("user_id", type_=String()),
                c.c.expires_at > now,
                c.c.redeemed_at.is_(None),
            )
            .order_by(c.c.expires_at, c.c.code)
        )
        self.redeem = (
            update(c)
            .where(
                c.c.code == bindparam("where_code"),
                c.c.user_id == bindparam("where_user"),
                c.c.redeemed_at.is_(None),
                c.c.expires_at > now,
                # the terms (issue 12, item 3): the coupon's currency and minimum order
                or_(
                    c.c.terms_currency.is_(None),
                    c.c.terms_currency == bindparam("where_currency", type_=String()),
                ),
                or_(
                    c.c.min_order_amount.is_(None),
                    c.c.min_order_amount <= bindparam("where_total", type_=AmountColumn()),
                ),
            )
            .values(
                redeemed_at=now,
                order_id=bindparam("order"),
                order_amount=bindparam("amount", type_=AmountColumn()),
                currency=bindparam("currency", type_=String()),
                discount_amount=None,  # set below from the row's terms, exactly
            )
            .returning(*c.c)
        )
        self.set_discount = (
            update(c)
            .where(c.c.code == bindparam("where_code"))
            .values(discount_amount=bindparam("discount", type_=AmountColumn()))
        )
        self.release = (
            update(c)
            .where(
                c.c.code == bindparam("where_code"),
                c.c.user_id == bindparam("where_user"),
                c.c.order_id == bindparam("where_order"),
                c.c.redeemed_at.is_not(None),
                c.c.expires_at > now,
                c.c.releases < bindparam("max_releases", type_=Integer()),
            )
            .values(
                redeemed_at=None,
                order_id=None,
                order_amount=None,
                discount_amount=None,
                currency=None,
                releases=c.c.releases + 1,
            )
            .returning(*c.c)
        )
        t = coupon_ledger
        self.append = t.insert()
        self.redemption = select(t).where(
            t.c.code == bindparam("code"),
            t.c.redemption == bindparam("redemption"),
            t.c.action == "redeem",
        )
        self.trail = select(t).where(t.c.code == bindparam("code")).order_by(t.c.id)


class CouponRepository:
    """Queries of the coupons table, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        self._sql = _Statements()
        self._spend = SpendStatements(base)

    def coupon(self, code: str) -> CouponRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._sql.by_code, {"code": code}).first()
        return coupon_of_row(row) if row else None

    def active(self, user_id: str, now: datetime) -> list[CouponRecord]:
        """Unredeemed, unexpired coupons of a user, the soonest to expire first."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._sql.active, {"user_id": user_id, "now": now})
            return [coupon_of_row(r) for r in rows]

    def redeem(self, code: str, user_id: str, use: Use, now: datetime) -> CouponRecord | None:
        """Mark the coupon used by ``use.order_id`` and append the redemption to the trail;
        None when it is not this user's usable coupon, or the order does not meet its terms
        (its currency, its minimum order). The discount is computed here from the coupon's
        terms and ``use.order_amount``, and added to the campaign's spend in the same
        transaction (``repository.spend``).

        The WHERE is the guard: of any number of concurrent calls exactly one changes the row.
        """
        params = {
            "where_code": code,
            "where_user": user_id,
            "now": now,
            "order": use.order_id,
            "amount": use.order_amount,
            "currency": use.currency,
            "where_currency": use.currency,
            "where_total": use.checked_total,
        }
        with self.base.writing() as conn:
            row = conn.execute(self._sql.redeem, params).first()
            if row is None:
                return None
            used = coupon_of_row(row)
            discount = discount_given(used, used.order_amount)
            if discount is not None:
                conn.execute(self._sql.set_discount, {"where_code": code, "discount": discount})
                used = dataclasses.replace(used, discount_amount=discount)
                if used.currency is not None:  # the money budgets count what was given
                    self._spend.add_spend(conn, used.campaign_id, now, used.currency, discount)
            # the n-th redemption follows n - 1 releases
            self._append(conn, used, "redeem", used.releases + 1, use, now)
            outbox.coupon_redeemed(self.base, conn, used)  # the shop's webhook, same transaction
        return used

    def release(
        self, code: str, user_id: str, use: Use, now: datetime, *, max_releases: int
    ) -> CouponRecord | None:
        """Put a use back (the order was cancelled) while the coupon is valid and has been
        released fewer than ``max_releases`` times; appends the release to the trail.

        None when nothing changed: not this user's, not redeemed by this order, expired, or
        released as often as allowed.
        """
        params = {
            "where_code": code,
            "where_user": user_id,
            "where_order": use.order_id,
            "now": now,
            "max_releases": max_releases,
        }
        with self.base.writing() as conn:
            row = conn.execute(self._sql.release, params).first()
            if row is None:
                return None
            released = coupon_of_row(row)
            number = released.releases  # the redemption undone: releases before it, plus one
            redeemed = conn.execute(
                self._sql.redemption, {"code": code, "redemption": number}
            ).first()
            # the release repeats the money of the redemption it undoes
            undone = dataclasses.replace(
                released,
                order_amount=None if redeemed is None else redeemed.order_amount,
                discount_amount=None if redeemed is None else redeemed.discount_amount,
                currency=None if redeemed is None else redeemed.currency,
            )
            self._append(conn, undone, "release", number, use, now)
            if redeemed is not None and redeemed.discount_amount and redeemed.currency:
                # given back: off the total and the day it was given on
                self._spend.add_spend(
                    conn,
                    released.campaign_id,
                    redeemed.at,
                    redeemed.currency,
                    -redeemed.discount_amount,
                )
        return released

    def trail(self, code: str) -> list[LedgerEntry]:
        """Every redemption and release of the coupon, the oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._sql.trail, {"code": code})
            return [LedgerEntry(**r._mapping) for r in rows]

    def _append(
        self,
        conn: Connection,
        coupon: CouponRecord,
        action: Literal["redeem", "release"],
        redemption: int,
        use: Use,
        now: datetime,
    ) -> None:
        conn.execute(
            self._sql.append,
            {
                "code": coupon.code,
                "campaign_id": coupon.campaign_id,
                "user_id": coupon.user_id,
                "action": action,
                "redemption": redemption,
                "order_id": use.order_id,
                "order_amount": coupon.order_amount,
                "discount_amount": coupon.discount_amount,
                "currency": coupon.currency,
                "actor": use.actor,
                "at": now,
            },
        )

    def issued_with(
        self, attribution_id: str, conn: Connection | None = None
    ) -> CouponRecord | None:
        """The coupon issued with the decision ``attribution_id`` (on ``conn`` when given)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.issued_with(attribution_id, own)
        row = conn.execute(self._sql.by_attribution, {"attribution": attribution_id}).first()
        return coupon_of_row(row) if row else None

    def insert(self, conn: Connection, coupon: CouponRecord) -> None:
        """Store a new coupon inside the decision write's transaction ``conn``."""
        conn.execute(self._sql.insert, dataclasses.asdict(coupon))

    def insert_many(self, conn: Connection, batch: list[CouponRecord]) -> None:
        """Store new coupons inside a batched decision write's transaction ``conn`` (one
        statement for the batch: a campaign sweep issues thousands)."""
        if batch:  # not dataclasses.asdict: its deep copies cost more than the INSERT
            fields = [f.name for f in dataclasses.fields(CouponRecord)]
            conn.execute(self._sql.insert, [{f: getattr(c, f) for f in fields} for c in batch])
