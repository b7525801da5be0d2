"""The columnar loyalty metrics (``service.analytics.columns``, what ``recoffer report --data``
uses) give the reference core's figures to the last digit: on the demo shop's purchases, on
the hand-made orders of the API test, and on random orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.analytics import columns
from service.analytics import loyalty as reference
from service.analytics.loyalty import Line, Period
from training.data.imports import purchase_columns
from training.report import file_lines, report_figures

BASE = datetime(2023, 12, 25, tzinfo=UTC)

lines_strategy = st.lists(
    st.builds(
        Line,
        user_id=st.sampled_from(["a", "b", "c", "d", "e"]),
        order_key=st.sampled_from(["1", "2", "3", "\x1f4", "\x1f5"]),
        ts=st.integers(0, 200 * 24 * 60).map(lambda m: BASE + timedelta(minutes=m)),
        item_id=st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
        amount=st.one_of(st.none(), st.integers(1, 10**6).map(lambda u: Decimal(u).scaleb(-4))),
        currency=st.one_of(st.none(), st.sampled_from(["EUR", "GBP"])),
    ),
    max_size=40,
)
moments = st.one_of(st.none(), st.integers(-30, 230).map(lambda d: BASE + timedelta(days=d)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines_strategy,
    chosen=st.sampled_from(["week", "month"]),
    since=moments,
    until=moments,
)
def test_random_orders_give_the_reference_figures(
    lines: list[Line], chosen: Period, since: datetime | None, until: datetime | None
) -> None:
    if since is not None and until is not None and until < since:
        since, until = until, since
    frame = columns.frame_of(lines)
    assert columns.loyalty(frame, chosen, since, until) == reference.loyalty(
        lines, chosen, since, until
    )
    assert columns.cohorts(frame, since, until) == reference.cohorts(lines, since, until)


@pytest.fixture(scope="module")
def demo_purchases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synthetic.shop import generate_shop, write_shop
    from training.synthetic.spec import spec_for

    shop = generate_shop(spec_for("demo"))
    return write_shop(shop, tmp_path_factory.mktemp("demo"))["purchases"]


@pytest.mark.parametrize("chosen", ["week", "month"])
def test_the_demo_shop_gives_the_reference_figures(demo_purchases: Path, chosen: Period) -> None:
    path = demo_purchases
    lines = file_lines(path, currency="EUR")
    assert len(purchase_columns(path, currency="EUR")) == len(lines)  # the same lines kept
    fast = report_figures(path, period=chosen, currency="EUR")
    assert fast["loyalty"]["periods"], "a report with figures"
    assert fast == report_figures(path, period=chosen, currency="EUR", reference=True)
    assert fast["cohorts"] == reference.cohorts(lines)


def test_the_benchmark_file_gives_the_same_figures_on_both_paths(tmp_path: Path) -> None:
    from benchmarks.loyalty import generate

    path = tmp_path / "shop.parquet"
    counts = generate(path, customers=300, orders=3_000, seed=5)
    assert counts["orders"] == 3_000
    fast = report_figures(path)
    assert sum(p["orders"] for p in fast["loyalty"]["periods"]) == 3_000
    assert fast["cohorts"]["cohorts"][0]["size"] > 0
    assert fast == report_figures(path, reference=True)


def test_the_benchmark_database_gives_the_file_figures(tmp_path: Path) -> None:
    from benchmarks.loyalty import generate, seed
    from service.analytics.service import Analytics
    from service.db import make_engine

    path = tmp_path / "shop.parquet"
    generate(path, customers=200, orders=1_000, seed=7)
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    seed(path, url)
    engine = make_engine(url)
    try:
        analytics = Analytics(engine)
        stored = {
            "loyalty": analytics.loyalty("month", None, None),
            "cohorts": analytics.cohorts(None, None),
        }
    finally:
        engine.dispose()
    assert stored == report_figures(path)
