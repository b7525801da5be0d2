"""The table of predicted lifetime values (``service.analytics.value``): the write that replaces
a run, and the summary the API reads with SQL against the one the command computes in memory.
No model here: the rows are made up (the fitted ones: tests/training/test_clv.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from service.analytics.value import (
    CustomerValue,
    Run,
    quantile,
    read_summary,
    summarize,
    write,
)
from service.db import make_engine, migrate
from service.tables import customer_value


def _value(user: str, amount: str) -> CustomerValue:
    return CustomerValue(user, 1.5, 0.9, Decimal("10.00"), Decimal(amount))


def test_a_write_replaces_the_run_and_skips_users_without_a_row(database_url: str) -> None:
    from service.activity.repository import Repository

    engine = make_engine(database_url)
    try:
        migrate(engine)
        repo = Repository(engine)
        for user in ("a", "b", "c"):
            repo.upsert_user(user)
        at = datetime(2024, 1, 1, tzinfo=UTC)
        run = Run("EUR", 90, at, at)
        assert write(engine, [_value("a", "1.00"), _value("b", "2.00")], run) == 2
        # "gone" has no users row (never stored, or erased since the run read its orders)
        assert write(engine, [_value("c", "3.00"), _value("gone", "4.00")], run) == 1
        with engine.connect() as conn:
            rows = conn.execute(select(customer_value.c.user_id, customer_value.c.predicted_value))
            assert [tuple(r) for r in rows] == [("c", Decimal("3.0000"))]
    finally:
        engine.dispose()


def test_the_stored_summary_is_the_one_computed_in_memory(database_url: str) -> None:
    from service.activity.repository import Repository

    amounts = ("5.00", "1.25", "5.00", "0.00", "12.34", "5.00", "7.77")
    values = [
        CustomerValue(f"user-{n}", round(0.1 * n + 1 / 3, 6), 0.5, Decimal("2.50"), Decimal(a))
        for n, a in enumerate(amounts)
    ]
    values.append(CustomerValue("User-9", 0.25, 0.5, Decimal("2.50"), Decimal("5.00")))
    engine = make_engine(database_url)
    try:
        migrate(engine)
        assert read_summary(engine, 3) == summarize([], None, 3)
        repo = Repository(engine)
        for v in values:
            repo.upsert_user(v.user_id)
        at = datetime(2024, 1, 1, 12, 30, tzinfo=UTC)
        run = Run("EUR", 30, at, at)
        write(engine, values, run)
        # ties at 5.00 go by user id, by code point (User-9 first); the quantiles of the eight
        # values fall between ranks
        assert read_summary(engine, 4) == summarize(values, run, 4)
    finally:
        engine.dispose()


def test_the_summary_quantiles_are_exact() -> None:
    values = [Decimal(v) for v in ("1.00", "2.00", "3.00", "10.00")]
    assert quantile(values, Decimal("0.5")) == Decimal("2.5")  # (n - 1) p = 1.5
    assert quantile(values, Decimal("0.9")) == Decimal("7.9")  # 3 + (10 - 3) x 0.7
    assert quantile(values, Decimal("0.99")) == Decimal("9.79")
    assert quantile(values[:1], Decimal("0.25")) == Decimal("1.00")
    rows = [_value(u, v) for u, v in zip("abcd", ("1.00", "2.00", "3.00", "10.00"), strict=True)]
    summary = summarize(rows, Run("EUR", 90, datetime.now(UTC), datetime.now(UTC)), 2)
    assert summary["total"] == "16.00"
    assert summary["mean"] == "4.00"
    assert summary["quantiles"]["p50"] == "2.50"
    assert [t["user_id"] for t in summary["top"]] == ["d", "c"]
    empty = summarize([], None, 10)
    assert (empty["customers"], empty["total"], empty["top"]) == (0, None, [])
