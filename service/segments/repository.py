"""Every query of segments: the per-user aggregates (in SQL, GROUP BY user), the upsert of rows
in batches, the runs, and the counts.

One query computes every figure of ``rules.Figures`` per user, on SQLite and PostgreSQL:
orders are purchases grouped by ``order_id`` (a purchase without one is an order of its own),
the previous order is the second latest by a window function, money is the exact sum of
``price x quantity`` in ten-thousandths, coupon orders are the distinct orders of the user's
redeemed coupons. A bulk run materialises it once in a temporary table and reads it twice,
streamed: first the customers' numbers for the shop's thresholds, then every row to write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.sql.elements import ColumnElement

from service.activity.repository import Repository
from service.money import CURRENCY_LENGTH, from_units
from service.segments.rules import STAGES, TYPES, Figures, Segment, ShopThresholds
from service.tables import (
    ID_LENGTH,
    UTCDateTime,
    coupons,
    events,
    segment_runs,
    user_segments,
    users,
)

TEMPORARY = "segment_figures"


def _day(conn: Connection, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The UTC day of a timestamp column (SQLite keeps them as ISO text)."""
    if conn.dialect.name == "sqlite":
        return func.substr(column, 1, 10)
    return cast(column, Date)


def figures_query(
    conn: Connection, now: datetime, window: timedelta, user_id: str | None = None
) -> Select[Any]:
    """The aggregate of every user with events at or before ``now`` (or of ``user_id``)."""
    since = now - window
    ev = events.c

    def only(query: Select[Any], column: ColumnElement[Any]) -> Select[Any]:
        return query.where(column == user_id) if user_id is not None else query

    order_key = func.coalesce(ev.order_id, literal("event:") + cast(ev.id, String))
    per_order = only(
        select(
            ev.user_id,
            func.min(ev.ts).label("at"),
            func.sum(ev.price * func.coalesce(ev.quantity, 1)).label("spent"),
            func.min(ev.currency).label("c_low"),
            func.max(ev.currency).label("c_high"),
        )
        .where(ev.type == "purchase", ev.ts <= now)
        .group_by(ev.user_id, order_key),
        ev.user_id,
    ).cte("per_order")
    ranked = select(
        per_order.c.user_id,
        per_order.c.at,
        per_order.c.spent,
        per_order.c.c_low,
        per_order.c.c_high,
        func.row_number()
        .over(partition_by=per_order.c.user_id, order_by=per_order.c.at.desc())
        .label("rn"),
    ).cte("ranked")
    per_user_orders = (
        select(
            ranked.c.user_id,
            func.count().label("orders"),
            func.min(ranked.c.at).label("first_at"),
            func.max(ranked.c.at).label("last_at"),
            func.max(case((ranked.c.rn == 2, ranked.c.at))).label("previous_at"),
            func.sum(ranked.c.spent).label("spent"),
            func.min(ranked.c.c_low).label("c_low"),
            func.max(ranked.c.c_high).label("c_high"),
        )
        .group_by(ranked.c.user_id)
        .cte("per_user_orders")
    )
    recent = ev.ts >= since
    engagement = only(
        select(
            ev.user_id,
            func.sum(case((and_(ev.type == "view", recent), 1), else_=0)).label("views"),
            func.count(func.distinct(case((recent, _day(conn, ev.ts))))).label("active_days"),
        )
        .where(ev.ts <= now)
        .group_by(ev.user_id),
        ev.user_id,
    ).cte("engagement")
    cp = coupons.c
    coupon_orders = only(
        select(cp.user_id, func.count(func.distinct(cp.order_id)).label("coupon_orders"))
        .where(cp.user_id.is_not(None), cp.order_id.is_not(None), cp.redeemed_at <= now)
        .group_by(cp.user_id),
        cp.user_id,
    ).cte("coupon_orders")
    o, c = per_user_orders.c, coupon_orders.c
    return (
        select(
            engagement.c.user_id,
            func.coalesce(o.orders, 0).label("orders"),
            func.coalesce(c.coupon_orders, 0).label("coupon_orders"),
            o.first_at,
            o.last_at,
            o.previous_at,
            o.spent,
            o.c_low,
            o.c_high,
            engagement.c.views,
            engagement.c.active_days,
        )
        .select_from(engagement)
        .outerjoin(per_user_orders, o.user_id == engagement.c.user_id)
        .outerjoin(coupon_orders, c.user_id == engagement.c.user_id)
    )


def _figures(row: Any) -> Figures:
    """A row of ``figures_query`` (or of the temporary table) as ``Figures``."""
    one_currency = row.c_low is not None and row.c_low == row.c_high
    spent = row.spent
    return Figures(
        user_id=row.user_id,
        orders=int(row.orders or 0),
        coupon_orders=int(row.coupon_orders or 0),
        first_order_at=_moment(row.first_at),
        last_order_at=_moment(row.last_at),
        previous_order_at=_moment(row.previous_at),
        monetary=from_units(int(spent)) if spent is not None and one_currency else None,
        currency=row.c_low if one_currency else None,
        views=int(row.views or 0),
        active_days=int(row.active_days or 0),
    )


def _moment(value: Any) -> datetime | None:
    """A timestamp from an aggregate: SQLite may return the stored text, PostgreSQL a datetime."""
    if value is None:
        return None
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _row(s: Segment) -> dict[str, Any]:
    f = s.figures
    return {
        "user_id": f.user_id,
        "orders": f.orders,
        "coupon_orders": min(f.coupon_orders, f.orders),
        "first_order_at": f.first_order_at,
        "last_order_at": f.last_order_at,
        "monetary": f.monetary,
        "currency": f.currency,
        "views": f.views,
        "active_days": f.active_days,
        "r_score": s.r_score,
        "f_score": s.f_score,
        "m_score": s.m_score,
        "lifecycle_stage": s.lifecycle_stage,
        "loyalty_type": s.loyalty_type,
        "computed_at": s.computed_at,
    }


class SegmentRepository:
    """Segment rows, runs and counts, on the service's database."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    @property
    def engine(self) -> Any:
        return self.repository.engine

    # --- one user ------------------------------------------------------------------------

    def figures_of(self, user_id: str, now: datetime, window: timedelta) -> Figures | None:
        """One user's figures, None when they have no event up to ``now``."""
        with self.engine.connect() as conn:
            row = conn.execute(figures_query(conn, now, window, user_id)).first()
        return _figures(row) if row is not None else None

    def is_known(self, user_id: str) -> bool:
        """Whether the user was registered (``PUT /v1/users/{id}``), events or not."""
        with self.engine.connect() as conn:
            found = conn.execute(select(users.c.user_id).where(users.c.user_id == user_id)).first()
        return found is not None

    def row_of(self, user_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(user_segments).where(user_segments.c.user_id == user_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    # --- writes --------------------------------------------------------------------------

    def save(self, rows: Sequence[Segment]) -> None:
        """Upsert ``rows`` in one transaction; a row never replaces one computed later.

        The WHERE carries it: a bulk run that began before a user's own refresh cannot put
        the older figures back, whichever commits last.
        """
        if not rows:
            return
        insert = self.repository.insert(user_segments)
        values = [_row(s) for s in rows]
        excluded = insert.excluded
        statement = insert.on_conflict_do_update(
            index_elements=[user_segments.c.user_id],
            set_={name: excluded[name] for name in values[0] if name != "user_id"},
            where=user_segments.c.computed_at <= excluded.computed_at,
        )
        with self.repository.writing() as conn:
            # none for a user erased since the run read the events
            present = self.repository.present_users(conn, [v["user_id"] for v in values])
            values = [v for v in values if v["user_id"] in present]
            if values:
                conn.execute(statement, values)

    def add_run(self, values: dict[str, Any]) -> None:
        with self.repository.writing() as conn:
            conn.execute(segment_runs.insert().values(**values))

    # --- bulk ----------------------------------------------------------------------------

    def stream(
        self, now: datetime, window: timedelta, chunk: int
    ) -> Iterator[tuple[str, Iterator[Figures]]]:
        """Materialise every user's figures, then yield the two streams of a bulk run.

        Yields ``("customers", ...)``: the figures of users with an order (for the shop's
        thresholds), then ``("users", ...)``: every user's, ordered by id. Both read one
        temporary table on one connection, ``chunk`` rows at a time; nothing else is kept.
        """
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET statement_timeout = 0"))  # this session only
            scratch = _scratch()
            scratch.drop(conn, checkfirst=True)
            scratch.create(conn)
            query = figures_query(conn, now, window)
            conn.execute(scratch.insert().from_select([c.name for c in scratch.c], query))
            conn.commit()
            try:
                yield (
                    "customers",
                    self._read(conn, select(scratch).where(scratch.c.orders > 0), chunk),
                )
                yield "users", self._read(conn, select(scratch).order_by(scratch.c.user_id), chunk)
            finally:
                conn.rollback()
                scratch.drop(conn, checkfirst=True)
                if conn.dialect.name == "postgresql":
                    conn.execute(text("RESET statement_timeout"))
                conn.commit()

    def _read(self, conn: Connection, query: Select[Any], chunk: int) -> Iterator[Figures]:
        result = conn.execute(query, execution_options={"stream_results": True, "yield_per": chunk})
        try:
            for row in result:
                yield _figures(row)
        finally:
            result.close()

    # --- runs and counts -----------------------------------------------------------------

    def latest_run(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(segment_runs).order_by(segment_runs.c.id.desc()).limit(1)
            ).first()
        return dict(row._mapping) if row is not None else None

    def runs(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` bulk runs' moment and counts, the oldest first (the console's
        segment sizes over time)."""
        r = segment_runs.c
        query = (
            select(r.as_of, r.users, r.customers, r.typical_interval_days, r.counts, r.seconds)
            .order_by(r.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        return rows[::-1]

    def latest_thresholds(self) -> tuple[ShopThresholds, datetime] | None:
        run = self.latest_run()
        if run is None:
            return None
        return ShopThresholds.from_json(run["thresholds"]), run["as_of"]

    def counts(self) -> tuple[dict[str, dict[str, int]], datetime | None, datetime | None]:
        """Users per stage x type, and the oldest and newest ``computed_at`` of the rows."""
        us = user_segments.c
        matrix: dict[str, dict[str, int]] = {stage: dict.fromkeys(TYPES, 0) for stage in STAGES}
        with self.engine.connect() as conn:
            for stage, kind, n in conn.execute(
                select(us.lifecycle_stage, us.loyalty_type, func.count()).group_by(
                    us.lifecycle_stage, us.loyalty_type
                )
            ):
                matrix[stage][kind] = int(n)
            oldest, newest = conn.execute(
                select(func.min(us.computed_at), func.max(us.computed_at))
            ).one()
        return matrix, _moment(oldest), _moment(newest)


def _scratch() -> Table:
    """The temporary table a bulk run aggregates into (one per connection, dropped after)."""
    return Table(
        TEMPORARY,
        MetaData(),
        Column("user_id", String(ID_LENGTH)),
        Column("orders", Integer()),
        Column("coupon_orders", Integer()),
        Column("first_at", UTCDateTime()),
        Column("last_at", UTCDateTime()),
        Column("previous_at", UTCDateTime()),
        Column("spent", BigInteger()),
        Column("c_low", String(CURRENCY_LENGTH)),
        Column("c_high", String(CURRENCY_LENGTH)),
        Column("views", Integer()),
        Column("active_days", Integer()),
        prefixes=["TEMPORARY"],
    )
