"""The loyalty-metrics core on a hand-made set of orders, every figure worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from service.analytics.loyalty import Line, cohorts, loyalty, period_start


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def line(
    user: str, order: str, ts: str, item: str | None, amount: str | None, cur: str = "EUR"
) -> Line:
    return Line(user, order, at(ts), item, None if amount is None else Decimal(amount), cur)


LINES = [
    line("d", "D1", "2023-12-31T23:59:00", "x", None),  # history before since, no price
    line("a", "A1", "2024-01-05T10:00:00", "x", "10.00"),
    line("b", "B1", "2024-01-20T10:00:00", "y", "20.00"),
    line("c", "\x1f1", "2024-02-03T10:00:00", "z", "7.00", "GBP"),  # no order id: alone
    line("a", "A2", "2024-02-11T09:00:00", "y", "3.50"),  # a later line of A2
    line("a", "A2", "2024-02-10T09:00:00", "x", "10.00"),  # A2 dated by this one
    line("c", "\x1f2", "2024-02-25T10:00:00", "x", "1.00", "GBP"),
    line("b", "B2", "2024-03-01T00:00:00", "y", "20.00"),
    line("e", "E1", "2024-03-10T10:00:00", "x", "1.00"),
    line("b", "B3", "2024-04-02T10:00:00", "y", "99.00"),  # after the report's last period
]


def test_monthly_figures_match_the_hand_computation() -> None:
    report = loyalty(
        LINES, "month", since=at("2024-01-01T00:00:00"), until=at("2024-03-15T00:00:00")
    )
    jan, feb, mar = report["periods"]
    assert [p["period"] for p in report["periods"]] == ["2024-01-01", "2024-02-01", "2024-03-01"]
    # January: S = {d} (December), E = {a, b}, both new
    assert (jan["customers_at_start"], jan["new_customers"], jan["customers_at_end"]) == (1, 2, 2)
    assert (jan["retention"], jan["churn"], jan["retained"], jan["reactivated"]) == (0, 1, 0, 0)
    assert (jan["orders"], jan["repeat_orders"], jan["repurchase_rate"]) == (2, 0, 0)
    assert (jan["repeat_customers"], jan["repeat_customer_rate"]) == (0, 0)
    assert jan["purchase_frequency"] == 1
    assert jan["average_order_value"] == {"EUR": "15.0000"}  # (10 + 20) / 2
    assert (jan["multi_product_customers"], jan["single_product_customers"]) == (0, 2)
    assert jan["upsell_rate"] == 0
    # d's order has no price: d has no lifetime value in any currency
    assert jan["lifetime_value"] == {
        "EUR": {"customers": 2, "mean": "15.0000", "median": "15.0000"}
    }
    # February: S = {a, b}, E = {a, c}, c new; orders A2, c's two (both without order id)
    assert (feb["customers_at_start"], feb["new_customers"], feb["customers_at_end"]) == (2, 1, 2)
    assert (feb["retention"], feb["churn"], feb["retained"], feb["reactivated"]) == (0.5, 0.5, 1, 0)
    assert (feb["orders"], feb["repeat_orders"], feb["repurchase_rate"]) == (3, 2, 2 / 3)
    assert (feb["repeat_customers"], feb["repeat_customer_rate"]) == (2, 1)
    assert feb["purchase_frequency"] == 1.5
    assert feb["average_order_value"] == {"EUR": "13.5000", "GBP": "4.0000"}
    assert (feb["multi_product_customers"], feb["single_product_customers"]) == (2, 0)
    assert feb["upsell_rate"] == 1
    assert feb["lifetime_value"] == {
        "EUR": {"customers": 2, "mean": "21.7500", "median": "21.7500"},  # a 23.50, b 20
        "GBP": {"customers": 1, "mean": "8.0000", "median": "8.0000"},
    }
    # March: S = {a, c}, E = {b, e}; b comes back after a gap (reactivated), e is new
    assert (mar["customers_at_start"], mar["new_customers"], mar["customers_at_end"]) == (2, 1, 2)
    assert (mar["retention"], mar["churn"], mar["retained"], mar["reactivated"]) == (0.5, 0.5, 0, 1)
    assert (mar["orders"], mar["repeat_orders"], mar["repurchase_rate"]) == (2, 1, 0.5)
    assert (mar["repeat_customers"], mar["repeat_customer_rate"]) == (1, 0.5)
    assert mar["average_order_value"] == {"EUR": "10.5000"}
    assert mar["upsell_rate"] == 0
    # B3 (April) is not read: e 1, a 23.50, b 40 -> mean 64.50 / 3, median 23.50
    assert mar["lifetime_value"]["EUR"] == {"customers": 3, "mean": "21.5000", "median": "23.5000"}


def test_cohort_matrix_matches_the_hand_computation() -> None:
    matrix = cohorts(LINES, since=at("2024-01-01T00:00:00"), until=at("2024-03-15T00:00:00"))
    assert matrix["months"] == ["2024-01", "2024-02", "2024-03"]
    jan, feb, mar = matrix["cohorts"]
    assert (jan["cohort"], jan["size"], jan["active"], jan["share"]) == (
        "2024-01",
        2,
        [2, 1, 1],
        [1, 0.5, 0.5],
    )
    assert (feb["size"], feb["active"], feb["share"]) == (1, [1, 0], [1, 0])
    assert (mar["size"], mar["share"]) == (1, [1])  # d's cohort (December) is before since


def test_weeks_start_on_monday_and_periods_are_whole() -> None:
    assert period_start(at("2024-01-07T23:59:59"), "week") == at("2024-01-01T00:00:00")
    assert period_start(at("2024-01-08T00:00:00"), "week") == at("2024-01-08T00:00:00")
    report = loyalty(
        LINES, "week", since=at("2024-01-03T00:00:00"), until=at("2024-01-22T00:00:00")
    )
    weeks = [(p["period"], p["customers_at_end"], p["new_customers"]) for p in report["periods"]]
    assert weeks == [
        ("2024-01-01", 1, 1),
        ("2024-01-08", 0, 0),
        ("2024-01-15", 1, 1),
        ("2024-01-22", 0, 0),
    ]
    assert report["periods"][1]["retention"] == 0  # a bought in week 1, not in week 2
    assert report["periods"][3]["churn"] == 1


def test_no_orders_and_no_previous_customers() -> None:
    assert loyalty([], "month") == {"period": "month", "periods": []}
    first = loyalty(LINES[1:3], "month")["periods"][0]
    assert first["customers_at_start"] == 0
    assert first["retention"] is None
    assert first["churn"] is None


@pytest.mark.parametrize("period", ["week", "month"])
def test_naive_times_are_utc(period: str) -> None:
    naive = [Line("a", "1", datetime(2024, 1, 31, 23, 30), "x", Decimal(1), "EUR")]
    report = loyalty(naive, period)  # type: ignore[arg-type]
    assert report["periods"][0]["customers_at_end"] == 1


def test_only_the_period_the_data_stops_in_is_partial() -> None:
    report = loyalty(LINES, "month")
    flags = {p["period"]: p["partial"] for p in report["periods"]}
    # the last order is on 2 April: April is partial, the months before are whole
    assert flags == {
        "2023-12-01": False,
        "2024-01-01": False,
        "2024-02-01": False,
        "2024-03-01": False,
        "2024-04-01": True,
    }
    # with a range, periods count as whole (the orders after it are not read)
    ranged = loyalty(LINES, "month", at("2024-01-01T00:00:00"), at("2024-02-15T00:00:00"))
    assert [p["partial"] for p in ranged["periods"]] == [False, False]
    one = [line("a", "A1", "2024-03-31T23:59:59", "x", "1.00")]  # a second before the end
    assert [p["partial"] for p in loyalty(one, "month")["periods"]] == [True]
