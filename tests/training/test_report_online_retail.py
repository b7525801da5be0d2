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
