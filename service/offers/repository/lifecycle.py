"""The facts the lifecycle kinds read (issue 12, item 2), for one user and for a sweep.

Orders are the distinct ``order_id`` of a user's purchase events up to now; a purchase sent
without one counts as an order of its own. From them: how many, the first and the last one's
time, and how many fall within a frequent-buyer campaign's ``within_days``. The open cart is
the add-to-cart events after the last purchase: its first and last time and its products,
the latest added first. Attributes are read from the user's row (the birthday).

A sweep does not read every user's facts: each kind first picks its candidates in SQL with a
condition the rule implies: win-back, at least ``min_orders`` orders, the last one older than
the customer's own lapse threshold, and that lapse not decided yet; frequent buyer,
``min_orders`` recent orders; anniversary, a first order in a month the window touches and at
least about a year ago (``order_candidates``: one aggregate over the purchases that returns the
facts too); birthday, users with the attribute; abandoned cart, a last add-to-cart between
``cart_max_age_hours`` and ``cart_idle_hours`` ago (``candidate_ids``, then ``facts_of``, which
reads the facts the same way for one user or a batch). The pure rule (``occasions``) decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    null,
    select,
)

from service.offers.campaigns import Campaign
from service.offers.rules import UserFacts
from service.tables import UTCDateTime, events, offer_decisions, users

# a purchase without an order id is an order of its own: keyed by its event id (the prefix is
# a control character, which no shop's order id carries)
ORDER_KEY: ColumnElement[Any] = func.coalesce(
    events.c.order_id, literal("\x1f", String()).concat(cast(events.c.id, String()))
)
# the kind inline, not bound: so the planners may use the partial index of purchases
PURCHASE = literal("purchase", literal_execute=True)
ADD_TO_CART = literal("add_to_cart", literal_execute=True)
STARTED = func.coalesce(users.c.signed_up_at, users.c.first_seen_at)


@dataclass(frozen=True)
class Orders:
    orders: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    recent_orders: int


NO_ORDERS = Orders(0, None, None, 0)


def recent_since(campaign: Campaign, now: datetime) -> datetime:
    """The start of the window a frequent-buyer campaign counts its orders in."""
    return now - timedelta(days=campaign.within_days)


def order_columns(since: ColumnElement[Any]) -> tuple[ColumnElement[Any], ...]:
    """Orders, first and last order time, orders at or after ``since``: over purchase events."""
    e = events
    return (
        func.count(ORDER_KEY.distinct()),
        func.min(e.c.ts),
        func.max(e.c.ts),
        func.count(case((e.c.ts >= since, ORDER_KEY)).distinct()),
    )


def _orders(row: Sequence[Any]) -> Orders:
    return Orders(int(row[0]), row[1], row[2], int(row[3]))


def _month(column: ColumnElement[Any], dialect: str) -> ColumnElement[int]:
    """The UTC month (1-12) of a time column (SQLite stores UTC already)."""
    if dialect == "postgresql":
        return cast(func.extract("month", func.timezone("UTC", column)), Integer())
    return cast(func.strftime("%m", column), Integer())


def _seconds(column: ColumnElement[Any], dialect: str) -> ColumnElement[float]:
    """A time column as seconds since the epoch (SQLite stores UTC already)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", column), Float())
    return (func.julianday(column) - 2440587.5) * 86400.0


def _day(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """A time column's UTC day, ``YYYY-MM-DD`` (as ``date.isoformat``)."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD", type_=String())
    return func.date(column, type_=String())


# the SQL pre-filter of a win-back sweep lets through customers this close to their lapse, so
# that the float arithmetic of two databases never leaves out one the rule would take
_SLACK_SECONDS = 3600.0


def _months(campaign: Campaign, now: datetime) -> list[int]:
    """The months of the dates whose yearly window (days_before, days_after) holds today."""
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=campaign.days_after)
    span = campaign.days_before + campaign.days_after
    return sorted({(first + timedelta(days=n)).month for n in range(span + 1)})


ORDER_KINDS = frozenset(("win_back", "frequent_buyer", "purchase_anniversary"))


def candidate_ids(campaign: Campaign, now: datetime) -> Select[Any]:
    """The users a sweep of a birthday or abandoned-cart ``campaign`` reads the facts of."""
    e = events
    moment = bindparam("now", now, type_=UTCDateTime())
    if campaign.kind == "birthday":
        return (
            select(users.c.user_id)
            .where(users.c.attributes[campaign.birthday_attribute].as_string().is_not(None))
            .order_by(users.c.user_id)
        )
    if campaign.kind == "abandoned_cart":
        oldest = now - timedelta(hours=campaign.cart_max_age_hours)
        newest = now - timedelta(hours=campaign.cart_idle_hours)
        return (
            select(e.c.user_id)
            .where(e.c.type == ADD_TO_CART, e.c.ts <= moment, e.c.ts >= oldest)
            .group_by(e.c.user_id)
            .having(func.max(e.c.ts) <= newest)
            .order_by(e.c.user_id)
        )
    raise ValueError(f"not a kind whose candidates are read by id: {campaign.kind}")


def order_candidates(
    campaign: Campaign, now: datetime, dialect: str, *, attributes: bool
) -> Select[Any]:
    """A sweep's candidates of an order-based kind (``ORDER_KINDS``) with their facts: one
    aggregate over the purchases, the kind's condition in its HAVING, joined to the users.

    Columns: user id, start, signed_up_at, attributes (or null), then ``order_columns``.
    """
    e, kind = events, campaign.kind
    moment = bindparam("now", now, type_=UTCDateTime())
    columns = order_columns(bindparam("since", recent_since(campaign, now), type_=UTCDateTime()))
    _, first, _, recent = columns
    query = (
        select(
            users.c.user_id,
            STARTED,
            users.c.signed_up_at,
            # a JSON column cannot be grouped on PostgreSQL; it depends on the key grouped
            users.c.attributes if attributes else null(),
            *columns,
        )
        .select_from(users.join(e, e.c.user_id == users.c.user_id))
        .where(e.c.type == PURCHASE, e.c.ts <= moment)
        .group_by(users.c.user_id)
        .order_by(users.c.user_id)
    )
    if kind == "win_back":
        return _win_back(campaign, query, columns, now, dialect)
    if kind == "frequent_buyer":
        return query.having(recent >= campaign.min_orders)
    if kind == "purchase_anniversary":
        # the first anniversary's window opens days_before ahead of a year after the order
        a_year_ago = now - timedelta(days=365 - campaign.days_before - 2)
        return query.having(first <= a_year_ago, _month(first, dialect).in_(_months(campaign, now)))
    raise ValueError(f"not an order-based kind: {kind}")


def _win_back(
    campaign: Campaign,
    query: Select[Any],
    columns: tuple[ColumnElement[Any], ...],
    now: datetime,
    dialect: str,
) -> Select[Any]:
    """The win-back candidates: ``min_orders`` orders, gone longer than their own lapse (the
    rule's threshold in SQL, less a little slack), and not decided for this lapse yet.

    The lapse (the occurrence ``lapse:<day of the last order>``) is computed in SQL too, so a
    daily run reads only the customers who lapsed since the last one; the engine still skips
    any (user, occurrence) it finds decided.
    """
    orders, first, last, _ = columns
    gone = now.timestamp() - _seconds(last, dialect)
    day = 86400.0
    fallback = campaign.lapse_days * day
    factor = campaign.lapse_rhythm_factor
    own: ColumnElement[Any] = literal(fallback)
    if factor is not None:
        span = _seconds(last, dialect) - _seconds(first, dialect)
        own = case(
            (and_(orders >= 2, span > 0), factor * span / (orders - 1)), else_=literal(fallback)
        )
    query = query.having(
        orders >= campaign.min_orders,
        last < now - timedelta(days=campaign.min_lapse_days),
        gone > own - _SLACK_SECONDS,
    )
    if campaign.max_lapse_days is not None:
        query = query.having(last >= now - timedelta(days=campaign.max_lapse_days))
    lapse = literal("lapse:", String()).concat(_day(last, dialect)).label("occurrence")
    found = query.add_columns(lapse).order_by(None).subquery()
    d = offer_decisions
    decided = (
        select(d.c.id)
        .where(
            d.c.campaign_id == campaign.campaign_id,
            d.c.user_id == found.c.user_id,
            d.c.occurrence == found.c.occurrence,
            d.c.decision != "budget_exhausted",
        )
        .exists()
    )
    wanted = [c for c in found.c if c.name != "occurrence"]
    return select(*wanted).where(~decided).order_by(found.c.user_id)


def facts_from_row(row: Sequence[Any], attributes: bool) -> UserFacts:
    """``UserFacts`` of a row of ``order_candidates``."""
    made = _orders(row[4:])
    return UserFacts(
        str(row[0]),
        row[1],
        0,
        0,
        made.orders > 0,
        signed_up_at=row[2],
        attributes=(row[3] or {}) if attributes else {},
        orders=made.orders,
        first_order_at=made.first_order_at,
        last_order_at=made.last_order_at,
        recent_orders=made.recent_orders,
    )


class LifecycleFacts:
    """Reads ``UserFacts`` with the lifecycle fields for a list of users, three queries."""

    def __init__(self) -> None:
        e = events
        many: BindParameter[str] = bindparam("users", expanding=True)
        now = bindparam("now", type_=UTCDateTime())
        since = bindparam("since", type_=UTCDateTime())
        self.people = select(
            users.c.user_id, STARTED, users.c.signed_up_at, users.c.attributes
        ).where(users.c.user_id.in_(many))
        self.people_plain = select(users.c.user_id, STARTED, users.c.signed_up_at).where(
            users.c.user_id.in_(many)
        )
        self.orders = (
            select(e.c.user_id, *order_columns(since))
            .where(e.c.user_id.in_(many), e.c.type == PURCHASE, e.c.ts <= now)
            .group_by(e.c.user_id)
        )
        self.carts = (
            select(e.c.user_id, e.c.item_id, e.c.ts)
            .where(
                e.c.user_id.in_(many),
                e.c.type == ADD_TO_CART,
                e.c.ts <= now,
                e.c.item_id.is_not(None),
            )
            .order_by(e.c.user_id, e.c.ts)
        )

    def facts_of(
        self,
        conn: Connection,
        user_ids: Sequence[str],
        campaign: Campaign,
        now: datetime,
        *,
        attributes: bool,
    ) -> list[UserFacts]:
        """The facts of ``user_ids`` known to the shop (in that order) at ``now``.

        ``attributes``: read them (a birthday campaign, or one requiring attributes); else
        the facts carry none. The cart is read for an abandoned-cart campaign only.
        """
        if not user_ids:
            return []
        ids = list(user_ids)
        query = self.people if attributes else self.people_plain
        people = {str(r[0]): r for r in conn.execute(query, {"users": ids})}
        orders = {
            str(r[0]): _orders(r[1:])
            for r in conn.execute(
                self.orders, {"users": ids, "now": now, "since": recent_since(campaign, now)}
            )
        }
        carts: dict[str, list[tuple[str, datetime]]] = {}
        if campaign.kind == "abandoned_cart":
            for user_id, item_id, ts in conn.execute(self.carts, {"users": ids, "now": now}):
                carts.setdefault(str(user_id), []).append((str(item_id), ts))
        out = []
        for user_id in ids:
            person = people.get(user_id)
            if person is None:
                continue
            made = orders.get(user_id, NO_ORDERS)
            last = made.last_order_at
            cart = [(i, ts) for i, ts in carts.get(user_id, ()) if last is None or ts > last]
            out.append(
                UserFacts(
                    user_id,
                    person[1],
                    0,
                    0,
                    made.orders > 0,
                    signed_up_at=person[2],
                    attributes=(person[3] or {}) if attributes else {},
                    orders=made.orders,
                    first_order_at=made.first_order_at,
                    last_order_at=last,
                    recent_orders=made.recent_orders,
                    cart_started_at=cart[0][1] if cart else None,
                    cart_last_at=cart[-1][1] if cart else None,
                    cart_items=_latest_first(cart),
                )
            )
        return out


def _latest_first(cart: list[tuple[str, datetime]]) -> tuple[str, ...]:
    """The cart's distinct products, the latest added first."""
    seen: dict[str, None] = {}
    for item_id, _ in reversed(cart):
        seen.setdefault(item_id, None)
    return tuple(seen)
