"""``recoffer report`` on Online Retail against figures pandas computes here, independently.

The pandas side reads the raw file and applies the cleaning rules of ``recoffer import``
(a customer id, no cancellation, positive quantity and price, product codes only, a line
stored once), then counts customers, retention and the first cohort with its own group-bys;
it never calls ``service.analytics``.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli import app as cli
from training.data.formats import NON_PRODUCT_CODES, NON_PRODUCT_PREFIX


@pytest.fixture(scope="module")
def report(online_retail_path: Path) -> dict[str, Any]:
    args = ["report", "--data", str(online_retail_path), "--format", "online-retail"]
    result = CliRunner().invoke(cli, [*args, "--currency", "GBP", "--json"])
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


@pytest.fixture(scope="module")
def lines(online_retail_path: Path) -> pd.DataFrame:
    raw = pd.read_csv(online_retail_path, dtype={"InvoiceNo": str, "StockCode": str})
    kept = raw[
        raw["CustomerID"].notna()
        & ~raw["InvoiceNo"].str.startswith("C")
        & (raw["Quantity"] > 0)
        & (raw["UnitPrice"] > 0)
        & ~raw["StockCode"].isin(NON_PRODUCT_CODES)
        & ~raw["StockCode"].str.startswith(NON_PRODUCT_PREFIX)
    ]
    key = ["CustomerID", "StockCode", "InvoiceDate", "InvoiceNo", "Quantity", "UnitPrice"]
    kept = kept.drop_duplicates(subset=key).copy()
    kept["at"] = pd.to_datetime(kept["InvoiceDate"])
    return kept


def test_customers_retention_and_first_cohort(report: dict[str, Any], lines: pd.DataFrame) -> None:
    orders = lines.groupby(["CustomerID", "InvoiceNo"], as_index=False)["at"].min()
    orders["month"] = orders["at"].dt.to_period("M")
    buyers = orders.groupby("month")["CustomerID"].apply(set)
    first = orders.groupby("CustomerID")["month"].min()
    periods = {p["period"][:7]: p for p in report["loyalty"]["periods"]}
    assert list(periods) == [str(m) for m in buyers.index]
    for month, customers in buyers.items():
        assert periods[str(month)]["customers_at_end"] == len(customers)
    january, december = pd.Period("2011-01", "M"), pd.Period("2010-12", "M")
    new = sum(1 for c in buyers[january] if first[c] == january)
    expected = (len(buyers[january]) - new) / len(buyers[december])
    assert periods["2011-01"]["retention"] == pytest.approx(expected, rel=1e-12)
    assert periods["2011-01"]["new_customers"] == new
    cohort = set(first[first == december].index)
    first_row = report["cohorts"]["cohorts"][0]
    assert first_row["cohort"] == "2010-12"
    assert first_row["size"] == len(cohort)
    month_1 = len(cohort & buyers[january]) / len(cohort)
    assert first_row["share"][1] == pytest.approx(month_1, rel=1e-12)


def test_average_order_value_of_a_month_is_exact(
    report: dict[str, Any], lines: pd.DataFrame
) -> None:
    march = lines[lines["at"].dt.to_period("M") == pd.Period("2011-03", "M")]
    total = sum(
        (Decimal(repr(p)) * q for p, q in zip(march["UnitPrice"], march["Quantity"], strict=True)),
        Decimal(0),
    )
    orders = march.groupby(["CustomerID", "InvoiceNo"]).ngroups
    expected = (total / orders).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
    periods = {p["period"][:7]: p for p in report["loyalty"]["periods"]}
    assert periods["2011-03"]["average_order_value"] == {"GBP": str(expected)}


def _units(lines: pd.DataFrame) -> pd.Series:
    """Each line's price x quantity in ten-thousandths, exactly (the price as the file has it)."""
    return pd.Series(
        [
            int(Decimal(repr(p)).scaleb(4)) * int(q)
            for p, q in zip(lines["UnitPrice"], lines["Quantity"], strict=True)
        ],
        index=lines.index,
    )


def _money(units: int, count: int = 1) -> str:
    exact = Decimal(units).scaleb(-4) / count
    return str(exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN))


def test_every_monthly_figure_and_the_whole_cohort_matrix(
    report: dict[str, Any], lines: pd.DataFrame
) -> None:
    """All figures of every month, by group-bys of this test's own (README's definitions)."""
    lines = lines.assign(units=_units(lines))
    orders = lines.groupby(["CustomerID", "InvoiceNo"], as_index=False).agg(
        at=("at", "min"), units=("units", "sum")
    )
    orders["month"] = orders["at"].dt.to_period("M")
    orders = orders.sort_values(["at", "CustomerID", "InvoiceNo"])
    orders["rank"] = orders.groupby("CustomerID").cumcount()  # 0: the customer's first order
    first = orders.groupby("CustomerID")["month"].min()
    lines = lines.merge(
        orders[["CustomerID", "InvoiceNo", "month"]], on=["CustomerID", "InvoiceNo"]
    )
    months = pd.period_range(orders["month"].min(), orders["month"].max(), freq="M")
    periods = report["loyalty"]["periods"]
    assert [p["period"][:7] for p in periods] == [str(m) for m in months]
    buyers: dict[pd.Period, set[Any]] = {m: set() for m in months}
    for month, group in orders.groupby("month"):
        buyers[month] = set(group["CustomerID"])
    for month, p in zip(months, periods, strict=True):
        mine = orders[orders["month"] == month]
        upto = orders[orders["month"] <= month]
        customers, before = buyers[month], buyers.get(month - 1, set())
        new = {c for c in customers if first[c] == month}
        returning = len(customers) - len(new)
        retention = returning / len(before) if before else None
        assert p["customers_at_start"] == len(before)
        assert p["customers_at_end"] == len(customers)
        assert p["new_customers"] == len(new)
        assert p["retained"] == len(customers & before)
        assert p["reactivated"] == returning - len(customers & before)
        assert p["retention"] == retention
        assert p["churn"] == (None if retention is None else 1 - retention)
        assert p["orders"] == len(mine)
        repeat = int((mine["rank"] > 0).sum())
        assert p["repeat_orders"] == repeat
        assert p["repurchase_rate"] == repeat / len(mine)
        counts = upto.groupby("CustomerID").size()
        repeaters = sum(1 for c in customers if counts[c] >= 2)
        assert p["repeat_customers"] == repeaters
        assert p["repeat_customer_rate"] == repeaters / len(customers)
        assert p["purchase_frequency"] == len(mine) / len(customers)
        products = lines[lines["month"] == month].groupby("CustomerID")["StockCode"].nunique()
        multi, single = int((products > 1).sum()), int((products == 1).sum())
        assert (p["multi_product_customers"], p["single_product_customers"]) == (multi, single)
        assert p["upsell_rate"] == multi / (multi + single)
        assert p["average_order_value"] == {"GBP": _money(int(mine["units"].sum()), len(mine))}
        totals = upto.groupby("CustomerID")["units"].sum().sort_values().tolist()
        half = len(totals) // 2
        middle = totals[half] * 2 if len(totals) % 2 else totals[half - 1] + totals[half]
        assert p["lifetime_value"] == {
            "GBP": {
                "customers": len(totals),
                "mean": _money(sum(totals), len(totals)),
                "median": _money(middle, 2),
            }
        }
    matrix = report["cohorts"]
    assert matrix["months"] == [str(m) for m in months]
    for n, (month, row) in enumerate(zip(months, matrix["cohorts"], strict=True)):
        cohort = set(first[first == month].index)
        assert row["cohort"] == str(month)
        assert row["size"] == len(cohort)
        active = [len(cohort & buyers[later]) for later in months[n:]]
        assert row["active"] == active
        assert row["share"] == [a / len(cohort) if cohort else None for a in active]
