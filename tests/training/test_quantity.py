"""Quantities weigh purchases (issue 11, item 10): read from files and from the service's
database, and each order's units change the matrix ALS is fitted on, logarithmically."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from training.data.database import load_database_purchases
from training.data.formats import load_purchases
from training.encode import encode
from training.models import ModelParams, als_weights, build_history, fit_stage, purchase_strength

REFERENCE = pd.Timestamp("2024-01-10")


def _frame(quantities: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["x", "x", "x", "y"],
            "order_id": ["o1", "o1", "o2", "o3"],  # two lines of x in o1: their units add up
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-05", "2024-01-09"]),
            "quantity": quantities,
        }
    )


def test_each_order_weighs_one_plus_w_log_of_its_units() -> None:
    coded, _ = encode(_frame([4, 8, 1, 1]))
    users, items, counts, _ = build_history(coded, REFERENCE)
    strength = purchase_strength(coded, users, items, 0.5)
    # a: o1 holds 12 units of x (4 + 8), o2 one; b: one unit of y
    assert strength[0, 0] == pytest.approx(1 + 0.5 * math.log(12) + 1)
    assert strength[1, 1] == pytest.approx(1.0)
    assert np.array_equal(strength.indices, counts.indices)
    assert np.array_equal(strength.indptr, counts.indptr)
    # weight 0: exactly the distinct-order counts
    assert np.array_equal(purchase_strength(coded, users, items, 0.0).toarray(), counts.toarray())


def test_quantity_changes_the_matrix_als_is_fitted_on() -> None:
    params = ModelParams(
        factors=4, iterations=2, threads=1, weighting="confidence", quantity_weight=0.5
    )
    stages = {}
    for units in (1, 12):
        coded, ids = encode(_frame([units, units, 1, 1]))
        stages[units] = fit_stage(coded, REFERENCE, params, ids, with_ease=False)
    single, dozen = stages[1], stages[12]
    assert np.array_equal(single.counts.toarray(), dozen.counts.toarray())  # orders: the same
    assert single.strength is not None
    assert dozen.strength is not None
    assert dozen.strength[0, 0] > single.strength[0, 0]
    heavy = als_weights(dozen.strength, dozen.age_days, params)
    light = als_weights(single.strength, single.age_days, params)
    assert heavy[0, 0] > light[0, 0]
    assert heavy[1, 1] == pytest.approx(light[1, 1])
    # quantity_weight 0 (the default) is the old behaviour: ALS sees distinct orders only
    coded, ids = encode(_frame([12, 12, 1, 1]))
    flat = fit_stage(coded, REFERENCE, ModelParams(factors=4, iterations=2, threads=1), ids)
    assert flat.strength is flat.counts


def test_quantity_weight_is_bounded_and_old_manifests_read_without_it() -> None:
    with pytest.raises(ValueError, match="quantity_weight"):
        ModelParams(quantity_weight=-1)
    assert ModelParams.from_dict({"factors": 8}).quantity_weight == 0.0
    assert ModelParams.from_dict(ModelParams().to_dict()) == ModelParams()


def test_a_file_quantity_column_reaches_the_trainer(tmp_path: Path) -> None:
    path = tmp_path / "purchases.csv"
    path.write_text(
        "user_id,item_id,timestamp,quantity,order_id\n"
        "a,x,2024-01-01,12,o1\n"
        "a,y,2024-01-02,,o2\n"  # empty: unknown, one unit
        "b,x,2024-01-03,1,o3\n"
    )
    coded, ids = encode(load_purchases(path).frame)
    by_item = dict(zip(ids.items[coded["item"]], coded["quantity"], strict=True))
    assert sorted(coded["quantity"].tolist()) == [1.0, 1.0, 12.0]
    assert by_item["y"] == 1.0


def test_the_database_source_reads_quantity_and_the_lines_price(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = make_engine(url)
    migrate(engine)
    repo = Repository(engine)
    repo.upsert_item("x", price=Decimal("9.99"), currency="EUR")
    repo.upsert_item("y", price=Decimal("5.00"), currency="EUR")
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    repo.add_events(
        [
            NewEvent(
                "a",
                "purchase",
                ts,
                item_id="x",
                order_id="o1",
                quantity=12,
                price=Decimal("8.50"),
                currency="EUR",
            ),
            NewEvent("a", "purchase", ts, item_id="y", order_id="o1"),
            NewEvent("b", "purchase", ts, item_id="z"),
        ]
    )
    engine.dispose()
    frame = load_database_purchases(url).set_index("item_id")
    assert frame.loc["x", "quantity"] == 12.0
    assert frame.loc["x", "price"] == pytest.approx(8.5)  # the line's own price
    assert frame.loc["y", "quantity"] == 1.0
    assert frame.loc["y", "price"] == pytest.approx(5.0)  # the catalogue's
    assert np.isnan(frame.loc["z", "price"])
    coded, _ = encode(frame.reset_index())
    assert sorted(coded["quantity"].tolist()) == [1.0, 1.0, 12.0]
