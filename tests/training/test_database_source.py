"""Training on the purchases the service ingested, alone or with a purchase file."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.errors import DataError
from training.cli import app
from training.data.database import combine_purchases, load_database_purchases
from training.data.formats import load_purchases
from training.synthetic.shop import SyntheticShop, write_shop

FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]
runner = CliRunner()


def _seed(url: str, frame: pd.DataFrame, *, with_catalogue: pd.DataFrame | None = None) -> None:
    engine = make_engine(url)
    migrate(engine)
    repo = Repository(engine)
    if with_catalogue is not None:
        for row in with_catalogue.itertuples(index=False):
            repo.upsert_item(str(row.item_id), name=str(row.name), category=str(row.category))
    batch = [
        NewEvent(
            user_id=str(r.user_id),
            type="purchase",
            ts=pd.Timestamp(r.timestamp).tz_localize(UTC).to_pydatetime(),
            item_id=str(r.item_id),
            order_id=str(r.order_id),
        )
        for r in frame.itertuples(index=False)
    ]
    for start in range(0, len(batch), 2000):
        repo.add_events(batch[start : start + 2000])
    # events that are not purchases are not training input
    repo.add_events([NewEvent("viewer", "view", batch[0].ts, item_id="i00001")])
    engine.dispose()


@pytest.fixture(scope="module")
def shop_files(
    tmp_path_factory: pytest.TempPathFactory, tiny_shop: SyntheticShop
) -> dict[str, Path]:
    return write_shop(tiny_shop, tmp_path_factory.mktemp("shop"))


def test_a_model_trains_on_the_database_alone(tmp_path: Path, tiny_shop: SyntheticShop) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    _seed(url, tiny_shop.purchases, with_catalogue=tiny_shop.items)
    frame = load_database_purchases(url)
    assert len(frame) == len(tiny_shop.purchases)
    assert frame["category"].notna().all()
    result = runner.invoke(
        app, ["train", "--database-url", url, "--model-dir", str(tmp_path / "m"), *FAST, "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["promoted"] is True


def test_file_and_database_combine_and_shared_purchases_count_once(
    tmp_path: Path, tiny_shop: SyntheticShop, shop_files: dict[str, Path]
) -> None:
    purchases = tiny_shop.purchases
    cut = purchases["timestamp"].quantile(0.8)
    older, newer = purchases[purchases["timestamp"] <= cut], purchases[purchases["timestamp"] > cut]
    url = f"sqlite:///{tmp_path / 'events.db'}"
    # the database holds the newer purchases and, once more, a slice of the older ones
    _seed(url, pd.concat([older.tail(50), newer]))
    from_file = load_purchases(shop_files["purchases"])
    combined = combine_purchases(
        load_purchases(shop_files["purchases"]).__class__(
            from_file.frame[from_file.frame["timestamp"] <= cut].reset_index(drop=True),
            from_file.items,
            from_file.report,
        ),
        load_database_purchases(url),
        "both",
    )
    assert len(combined.frame) == len(purchases)
    assert combined.report.dropped["in_file_and_database"] == 50


def test_train_needs_a_source_and_a_reachable_database(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--model-dir", str(tmp_path), *FAST])
    assert result.exit_code == 2
    assert "--data" in result.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner.invoke(app, ["train", "--database-url", empty, "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot read purchases" in result.stderr
    migrate(make_engine(empty))
    result = runner.invoke(app, ["train", "--database-url", empty, "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no purchase events yet" in result.stderr
    with pytest.raises(DataError):
        combine_purchases(None, None, "nothing")
