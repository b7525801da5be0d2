"""``recoffer segments``: counts on stdout, one line and exit 2 for bad input."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.tables import segment_runs, user_segments
from training.cli import app

runner = CliRunner()


def _database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = make_engine(url)
    migrate(engine)
    at = datetime(2011, 12, 1, tzinfo=UTC)
    Repository(engine).add_events(
        [
            NewEvent(
                user_id=f"c{n}",
                type="purchase",
                ts=at - timedelta(days=10 * k + n),
                item_id="i",
                order_id=f"o{n}-{k}",
                quantity=1,
                price=Decimal("2.50"),
                currency="GBP",
            )
            for n in range(5)
            for k in range(n + 1)
        ]
    )
    engine.dispose()
    return url


def test_segments_prints_the_counts_as_of_a_moment(tmp_path: Path) -> None:
    url = _database(tmp_path)
    r = runner.invoke(app, ["segments", "--database-url", url, "--as-of", "2011-12-02", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["users"] == 5
    assert doc["customers"] == 5
    assert doc["as_of"].startswith("2011-12-02")
    assert sum(doc["stages"].values()) == 5 == sum(doc["loyalty_types"].values())
    r = runner.invoke(app, ["segments", "--database-url", url])
    assert r.exit_code == 0
    assert "lapsed" in r.stdout
    assert "5 users" in r.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--database-url", "mysql://x/y"], {}, "--database-url"),
        (["--as-of", "yesterday"], {}, "--as-of"),
        (["--every", "3x"], {}, "--every"),
        ([], {"RECOFFER_SEGMENT_MERCENARY_SHARE": "2"}, "RECOFFER_SEGMENT_MERCENARY_SHARE"),
        ([], {"RECOFFER_SEGMENT_LAPSED_FACTOR": "1"}, "RECOFFER_SEGMENT_LAPSED_FACTOR"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    base = ["segments", "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    r = runner.invoke(app, base + args, env=env)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("recoffer: error:")
    assert message in lines[0]


def test_online_retail_customers_segment_with_purchases_only(
    online_retail_path: Path, tmp_path: Path
) -> None:
    # the first 20,000 lines of the log: enough customers, seconds to import
    with gzip.open(online_retail_path, "rt", encoding="latin-1") as src:
        head = [line for _, line in zip(range(20_001), src, strict=False)]
    sample = tmp_path / "online_retail_head.csv"
    sample.write_text("".join(head), encoding="latin-1")
    url = f"sqlite:///{tmp_path / 'or.db'}"
    r = runner.invoke(
        app,
        ["import", "purchases", str(sample), "--format", "online-retail", "--currency", "GBP",
         "--skip-bad-rows", "--database-url", url],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["segments", "--database-url", url, "--as-of", "2011-01-01", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["users"] > 100
    assert doc["customers"] == doc["users"]
    assert doc["loyalty_types"]["mercenary"] == 0  # no coupons in the log
    assert doc["loyalty_types"]["latent"] == 0  # nobody in it browses without buying
    assert sum(doc["stages"].values()) == doc["users"]
    assert doc["stages"]["active"] > 0
    assert doc["stages"]["new"] > 0


def test_the_scheduled_job_runs_the_command_as_a_child(tmp_path: Path) -> None:
    url = _database(tmp_path)
    r = runner.invoke(app, ["segments", "--database-url", url, "--every", "24h", "--max-runs", "1"])
    assert r.exit_code == 0, r.output
    assert "1 run(s), 0 failed" in r.stderr
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(segment_runs)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(user_segments)).scalar_one() == 5
    engine.dispose()
