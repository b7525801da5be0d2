"""Queries of the coupons table: look a coupon up, redeem it exactly once, release it.

A coupon is redeemed by an UPDATE whose WHERE holds "not redeemed, not expired, this user"
(shared/RELIABILITY.md): of any number of concurrent calls exactly one changes the row, on
SQLite and on PostgreSQL alike. Coupons are inserted by the decision write
(``repository.decisions``), inside its transaction, through ``insert``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Float, String, bindparam, select, update
from sqlalchemy.engine import Row

from service.activity.repository import Repository
from service.tables import UTCDateTime, coupons


@dataclass(frozen=True)
class CouponRecord:
    code: str
    campaign_id: str
    user_id: str
    attribution_id: str
    discount_percent: float
    item_ids: list[str] | None
    issued_at: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    order_id: str | None
    order_amount: float | None
    discount_amount: float | None


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
        amount = bindparam("amount", type_=Float())
        self.redeem = (
            update(c)
            .where(
                c.c.code == bindparam("where_code"),
                c.c.user_id == bindparam("where_user"),
                c.c.redeemed_at.is_(None),
                c.c.expires_at > now,
            )
            .values(
                redeemed_at=now,
                order_id=bindparam("order"),
                order_amount=amount,
                # NULL when no amount was sent: NULL times anything is NULL
                discount_amount=amount * c.c.discount_percent / 100.0,
            )
            .returning(*c.c)
        )


class CouponRepository:
    """Queries of the coupons table, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        self._sql = _Statements()

    def coupon(self, code: str) -> CouponRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._sql.by_code, {"code": code}).first()
        return coupon_of_row(row) if row else None

    def active(self, user_id: str, now: datetime) -> list[CouponRecord]:
        """Unredeemed, unexpired coupons of a user, the soonest to expire first."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._sql.active, {"user_id": user_id, "now": now})
            return [coupon_of_row(r) for r in rows]

    def redeem(
        self,
        code: str,
        user_id: str,
        order_id: str,
        order_amount: float | None,
        now: datetime,
    ) -> CouponRecord | None:
        """Mark the coupon used by ``order_id``; None when it is not this user's usable coupon.

        The WHERE is the guard: of any number of concurrent calls exactly one changes the row.
        """
        params = {
            "where_code": code,
            "where_user": user_id,
            "now": now,
            "order": order_id,
            "amount": order_amount,
        }
        with self.base.writing() as conn:
            row = conn.execute(self._sql.redeem, params).first()
        return coupon_of_row(row) if row else None

    def release(self, code: str, user_id: str, order_id: str, now: datetime) -> CouponRecord | None:
        """Put a use back (the order was cancelled) while the coupon is still valid."""
        query = (
            update(coupons)
            .where(
                coupons.c.code == code,
                coupons.c.user_id == user_id,
                coupons.c.order_id == order_id,
                coupons.c.redeemed_at.is_not(None),
                coupons.c.expires_at > now,
            )
            .values(redeemed_at=None, order_id=None, order_amount=None, discount_amount=None)
            .returning(*coupons.c)
        )
        with self.base.writing() as conn:
            row = conn.execute(query).first()
        return coupon_of_row(row) if row else None

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
