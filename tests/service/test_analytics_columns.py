"""The API's way to the loyalty figures (``columns.read_columns`` straight from the database,
then the columnar engine) gives the reference core's figures (``read_lines`` into ``Line``
objects, then ``loyalty.loyalty`` / ``loyalty.cohorts``) to the last digit: on random purchases
stored in SQLite (lines without an order id, a price, a quantity, a currency or an item, two
currencies, segment filters, report ranges), on one stored set in PostgreSQL, and on the demo
shop."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert

from service.analytics import columns
from service.analytics import loyalty as reference
from service.analytics.loyalty import Period, report_end
from service.analytics.orders import read_lines
from service.analytics.service import Analytics
from service.db import make_engine, migrate
from service.tables import events, user_segments

BASE = datetime(2023, 12, 25, tzinfo=UTC)
USERS = ["a", "b", "c", "d", "e"]
SEGMENT_OF = {"a": ("new", "habitual"), "b": ("lapsed", "habitual"), "c": ("new", "committed")}

purchase = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(USERS),
        "order_id": st.one_of(st.none(), st.sampled_from(["1", "2", "3"])),
        # whole seconds and microseconds, on both sides of period boundaries
        "ts": st.integers(0, 200 * 24 * 3600 * 1_000_000).map(
            lambda us: BASE + timedelta(microseconds=us)
        ),
        "item_id": st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
        "price": st.one_of(st.none(), st.integers(0, 10**8).map(lambda u: Decimal(u).scaleb(-4))),
        "quantity": st.one_of(st.none(), st.integers(1, 50)),
        "currency": st.one_of(st.none(), st.sampled_from(["EUR", "GBP"])),
    }
)
moments = st.one_of(st.none(), st.integers(-30, 230).map(lambda d: BASE + timedelta(days=d)))


def store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """``rows`` as the only purchase events, with the users of ``SEGMENT_OF`` segmented."""
    with engine.begin() as conn:
        conn.execute(delete(events))
        conn.execute(delete(user_segments))
        if rows:
            conn.execute(
                insert(events),
                [{**r, "type": "purchase", "received_at": BASE} for r in rows],
            )
        for user, (stage, kind) in SEGMENT_OF.items():
            conn.execute(
                insert(user_segments).values(
                    user_id=user,
                    orders=0,
                    coupon_orders=0,
                    views=0,
                    active_days=0,
                    lifecycle_stage=stage,
                    loyalty_type=kind,
                    computed_at=BASE,
                )
            )


def assert_same_figures(
    engine: Engine,
    period: Period,
    since: datetime | None,
    until: datetime | None,
    segment: str | None,
) -> dict[str, Any]:
    analytics = Analytics(engine)
    end = report_end(period, until)
    expected = reference.loyalty(read_lines(engine, end, segment), period, since, until)
    assert analytics.loyalty(period, since, until, segment) == expected
    month_end = report_end("month", until)
    expected_cohorts = reference.cohorts(read_lines(engine, month_end, segment), since, until)
    assert analytics.cohorts(since, until, segment) == expected_cohorts
    return expected


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'recoffer.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(purchase, max_size=30),
    period=st.sampled_from(["week", "month"]),
    since=moments,
    until=moments,
    segment=st.sampled_from([None, "new", "habitual", "committed", "at_risk"]),
)
def test_random_stored_purchases_give_the_reference_figures(
    sqlite_engine: Engine,
    rows: list[dict[str, Any]],
    period: Period,
    since: datetime | None,
    until: datetime | None,
    segment: str | None,
) -> None:
    if since is not None and until is not None and until < since:
        since, until = until, since
    store(sqlite_engine, rows)
    assert_same_figures(sqlite_engine, period, since, until, segment)


HAND_MADE = [
    {"user_id": "a", "order_id": "1", "ts": BASE, "item_id": "x", "price": Decimal("10.0001")},
    {"user_id": "a", "order_id": "1", "ts": BASE + timedelta(days=40), "item_id": "y"},
    {"user_id": "a", "ts": BASE + timedelta(days=41, microseconds=7), "price": Decimal("0.5")},
    {"user_id": "b", "order_id": "1", "ts": BASE + timedelta(days=9), "quantity": 3},
    {"user_id": "b", "ts": BASE + timedelta(days=70), "item_id": "x", "price": Decimal("3")},
    {"user_id": "c", "order_id": "9", "ts": BASE + timedelta(days=71), "currency": "GBP"},
    {"user_id": "e", "order_id": "2", "ts": BASE + timedelta(days=100), "price": Decimal("1")},
]


def test_postgresql_gives_the_reference_figures(fresh_postgres: str) -> None:
    engine = make_engine(fresh_postgres)
    try:
        migrate(engine)
        rows = [
            {"order_id": None, "item_id": None, "price": None, "quantity": None, "currency": None}
            | r
            for r in HAND_MADE
        ]
        for r in rows:
            if r["price"] is not None:
                r["currency"] = r["currency"] or "EUR"
                r["quantity"] = r["quantity"] or 2
        store(engine, rows)
        for segment in (None, "habitual", "lapsed"):
            figures = assert_same_figures(engine, "month", None, None, segment)
            assert figures["periods"], "a report with figures"
        assert_same_figures(engine, "week", BASE + timedelta(days=30), None, None)
    finally:
        engine.dispose()


def test_amounts_beyond_62_bits_still_give_the_reference_figures(sqlite_engine: Engine) -> None:
    big = Decimal("90000000000000")  # the largest storable price is below 1e14
    row = {"user_id": "a", "order_id": "1", "ts": BASE, "item_id": "x", "currency": "EUR"}
    store(sqlite_engine, [row | {"price": big, "quantity": 1_000_000}])  # 9e23 ten-thousandths
    with pytest.raises(OverflowError):
        columns.read_columns(sqlite_engine)
    figures = assert_same_figures(sqlite_engine, "month", None, None, None)
    assert figures["periods"][0]["average_order_value"] == {"EUR": "90000000000000000000.0000"}


def test_times_in_any_year_give_the_reference_figures(sqlite_engine: Engine) -> None:
    far = [datetime(1, 1, 3, tzinfo=UTC), datetime(2300, 5, 1, 12, 0, 0, 1, tzinfo=UTC)]
    row = {"user_id": "a", "item_id": "x", "price": Decimal("2"), "currency": "EUR"}
    store(sqlite_engine, [row | {"ts": ts, "order_id": str(n)} for n, ts in enumerate(far)])
    assert columns.read_columns(sqlite_engine)["ts"].tolist() == [
        pd.Timestamp(t.replace(tzinfo=None)) for t in far
    ]
    since, until = datetime(2300, 1, 1, tzinfo=UTC), datetime(2300, 6, 1, tzinfo=UTC)
    figures = assert_same_figures(sqlite_engine, "month", since, until, None)
    assert figures["periods"][4]["customers_at_end"] == 1  # May 2300, after year 1
    assert figures["periods"][4]["repeat_orders"] == 1


def test_the_demo_shop_in_the_database_gives_the_reference_figures(tmp_path: Path) -> None:
    from training.data.imports import import_file
    from training.synthetic.shop import generate_shop, write_shop
    from training.synthetic.spec import spec_for

    path = write_shop(generate_shop(spec_for("demo")), tmp_path)["purchases"]
    url = f"sqlite:///{tmp_path / 'recoffer.db'}"
    import_file("purchases", path, url, currency="EUR")
    engine = make_engine(url)
    try:
        frame = columns.read_columns(engine)
        assert len(frame) > 100_000
        lines = list(read_lines(engine))
        assert len(frame) == len(lines)
        assert columns.loyalty(frame, "month") == reference.loyalty(lines, "month")
        assert columns.loyalty(frame, "week") == reference.loyalty(lines, "week")
        assert columns.cohorts(frame) == reference.cohorts(lines)
    finally:
        engine.dispose()
