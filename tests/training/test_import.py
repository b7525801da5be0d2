"""``recoffer import``: past purchases, events and the catalogue into the service's database,
idempotent, bad rows named by line; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from service.db import make_engine
from service.tables import events, items, users
from training.cli import app
from training.data.database import load_database_purchases
from training.data.formats import load_purchases
from training.data.imports import _natural_key, import_file
from training.synthetic.shop import SyntheticShop, write_shop

runner = CliRunner()
FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]

PURCHASES = """user_id,item_id,timestamp,quantity,price,currency,order_id,name
u1,i1,2024-01-01 10:00:00,3,2.55,GBP,o1,Mug
u1,i2,2024-01-01 10:00:00,,0.1,GBP,o1,Plate
u2,i1,2024-01-02 11:00:00,12,2.55,GBP,o2,Mug
u2,i1,2024-01-02 11:00:00,12,2.55,GBP,o2,Mug
"""
RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom
C536367,22633,HAND WARMER UNION JACK,-6,2010-12-01 08:30:00,1.85,13047.0,United Kingdom
536368,POST,POSTAGE,1,2010-12-01 08:34:00,18.00,13047.0,France
536369,22960,JAM MAKING SET,2,2010-12-01 08:35:00,0.00,13047.0,United Kingdom
536370,22960,JAM MAKING SET,24,2010-12-01 08:45:00,4.25,12583.0,France
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(url: str, table: Any) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table))]
    finally:
        engine.dispose()


def _run(*args: str) -> Any:
    return runner.invoke(app, ["import", *args])


def test_purchases_are_stored_exactly_once_however_often_imported(
    tmp_path: Path, database_url: str
) -> None:
    path = _write(tmp_path / "p.csv", PURCHASES)
    first = _run("purchases", str(path), "--database-url", database_url, "--json")
    assert first.exit_code == 0, first.stderr
    report = json.loads(first.stdout)
    # the repeated line is the same purchase: stored once
    assert (report["written"], report["already_there"], report["items_added"]) == (3, 1, 2)
    again = json.loads(
        _run("purchases", str(path), "--database-url", database_url, "--json").stdout
    )
    assert (again["written"], again["already_there"]) == (0, 4)
    stored = sorted(_rows(database_url, events), key=lambda r: (r["user_id"], r["item_id"]))
    assert [(r["user_id"], r["item_id"], r["quantity"]) for r in stored] == [
        ("u1", "i1", 3),
        ("u1", "i2", 1),
        ("u2", "i1", 12),
    ]
    assert [r["price"] for r in stored] == [Decimal("2.55"), Decimal("0.1"), Decimal("2.55")]
    assert {r["currency"] for r in stored} == {"GBP"}
    assert {r["type"] for r in stored} == {"purchase"}
    assert {r["order_id"] for r in stored} == {"o1", "o2"}
    assert {r["user_id"] for r in _rows(database_url, users)} == {"u1", "u2"}
    catalogue = {r["item_id"]: r["name"] for r in _rows(database_url, items)}
    assert catalogue == {"i1": "Mug", "i2": "Plate"}
    # the trainer reads them back with their quantities
    frame = load_database_purchases(database_url)
    assert sorted(frame["quantity"].tolist()) == [1.0, 3.0, 12.0]


def test_an_online_retail_file_imports_what_the_trainer_keeps(tmp_path: Path) -> None:
    path = _write(tmp_path / "retail.csv", RETAIL)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = _run(
        "purchases", str(path), "--format", "online-retail", "--currency", "GBP",
        "--database-url", url, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == {
        "missing_customer": 1,
        "cancellation": 1,
        "missing_item": 0,
        "missing_timestamp": 0,
        "non_positive_quantity": 0,
        "non_positive_price": 1,
        "non_product_code": 1,
    }
    from_file = load_purchases(path, "online-retail").frame
    from_database = load_database_purchases(url)
    key = ["user_id", "item_id", "order_id", "quantity", "price"]
    assert sorted(map(tuple, from_database[key].to_numpy().tolist())) == sorted(
        map(tuple, from_file[key].to_numpy().tolist())
    )
    names = {r["item_id"]: r["name"] for r in _rows(url, items)}
    assert names["85123A"] == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_bad_rows_are_named_by_line_and_refuse_the_file_unless_skipped(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.csv",
        "user_id,item_id,timestamp,price,currency\n"
        "u1,i1,2024-01-01,1.50,EUR\n"
        "u 2,i1,2024-01-01,1.50,EUR\n"  # line 3: a blank inside an id
        "u3,i1,2099-01-01,1.50,EUR\n"  # line 4: the future
        "u4,i1,2024-01-01,1.00001,EUR\n"  # line 5: not exact to four decimals
        "u5,i1,2024-01-01,1.50,euro\n"  # line 6: no ISO 4217 code
        "u6,i1,2024-01-01,1.50,\n"  # line 7: a price without currency
        "u7,i2,2024-01-02,2.00,EUR\n",
    )
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    refused = _run("purchases", str(path), "--database-url", url)
    assert refused.exit_code == 2
    [line] = refused.stderr.strip().splitlines()
    assert "5 bad rows" in line
    for number in (3, 4, 5, 6):
        assert f"line {number}:" in line
    assert "--skip-bad-rows" in line
    assert not (tmp_path / "db.sqlite").exists() or _rows(url, events) == []
    skipped = _run("purchases", str(path), "--database-url", url, "--skip-bad-rows", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    report = json.loads(skipped.stdout)
    assert report["written"] == 2
    assert [b["line"] for b in report["bad"]] == ["line 3", "line 4", "line 5", "line 6", "line 7"]
    assert "future" in report["bad"][1]["reason"]
    assert {r["user_id"] for r in _rows(url, events)} == {"u1", "u7"}


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (PURCHASES, ["--format", "nope"], "unknown format"),
        ("user_id,timestamp\nu1,2024-01-01\n", [], "'item_id' not found"),
        ("user_id,item_id,timestamp,price\nu1,i1,2024-01-01,2.5\n", [], "--currency"),
        ("user_id,item_id,timestamp\nu1,i1,yesterday\n", [], "date-time"),
        (PURCHASES, ["--currency", "pounds"], "--currency"),
        (PURCHASES, ["--columns", "shop=x"], "unknown role"),
    ],
)
def test_unusable_input_is_one_line_and_exit_2(
    tmp_path: Path, text: str, args: list[str], message: str
) -> None:
    path = _write(tmp_path / "p.csv", text)
    result = _run("purchases", str(path), "--database-url", f"sqlite:///{tmp_path / 'd.db'}", *args)
    assert result.exit_code == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    missing = _run("events", str(tmp_path / "none.csv"))
    assert missing.exit_code == 2
    assert "file not found" in missing.stderr
    assert _run("orders", str(path)).exit_code == 2


def test_events_keep_their_own_keys_and_types(tmp_path: Path, database_url: str) -> None:
    path = _write(
        tmp_path / "e.csv",
        "user_id,type,item_id,timestamp,client_event_id,quantity\n"
        "u1,sign_up,,2024-01-01 09:00:00,e1,\n"
        "u1,view,i1,2024-01-01 09:01:00,e2,\n"
        "u1,purchase,i1,2024-01-01 09:05:00,e3,2\n"
        "u1,wishlist,i1,2024-01-01 09:06:00,e4,\n"  # line 5: no such type
        "u1,view,,2024-01-01 09:07:00,e5,\n"  # line 6: a view needs an item
        "u1,view,i2,2024-01-01 09:08:00,e6,3\n",  # line 7: quantity on a view
    )
    result = _run("events", str(path), "--database-url", database_url, "--skip-bad-rows", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [b["line"] for b in report["bad"]] == ["line 5", "line 6", "line 7"]
    stored = {r["client_event_id"]: r for r in _rows(database_url, events)}
    assert set(stored) == {"e1", "e2", "e3"}
    assert stored["e3"]["quantity"] == 2
    assert stored["e2"]["quantity"] is None
    [user] = _rows(database_url, users)
    assert user["signed_up_at"] == datetime(2024, 1, 1, 9, tzinfo=UTC)
    again = json.loads(
        _run(
            "events", str(path), "--database-url", database_url, "--skip-bad-rows", "--json"
        ).stdout
    )
    assert (again["written"], again["already_there"]) == (0, 3)


def test_an_event_log_with_money_columns_imports_its_views_too(
    tmp_path: Path, database_url: str
) -> None:
    path = _write(
        tmp_path / "e.csv",
        "user_id,type,item_id,timestamp,order_id,quantity,price,currency,client_event_id\n"
        "u1,sign_up,,2024-01-01 09:00:00,,,,,e1\n"
        "u1,view,i1,2024-01-01 09:01:00,,,,,e2\n"
        "u1,purchase,i1,2024-01-01 09:05:00,o1,2,2.55,GBP,e3\n"
        "u1,view,i2,2024-01-01 09:06:00,,, ,,e4\n",  # a blank cell is an empty one
    )
    result = _run("events", str(path), "--database-url", database_url, "--json")
    assert result.exit_code == 0, result.stderr
    stored = {r["client_event_id"]: r for r in _rows(database_url, events)}
    assert set(stored) == {"e1", "e2", "e3", "e4"}
    assert (stored["e3"]["price"], stored["e3"]["currency"]) == (Decimal("2.55"), "GBP")
    assert stored["e2"]["price"] is None


def test_the_catalogue_imports_exact_prices_attributes_and_replaces_on_rerun(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "items.parquet"
    frame = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "name": ["Mug", "Plate", "Bowl"],
            "price": ["2.55", "10", None],
            "in_stock": ["yes", "false", "maybe"],  # row 3: not a boolean
            "colour": ["red", None, "blue"],
        }
    )
    frame.to_parquet(path)
    refused = _run("items", str(path), "--database-url", database_url, "--currency", "EUR")
    assert refused.exit_code == 2
    assert "row 3: in_stock 'maybe'" in refused.stderr
    frame.loc[2, "in_stock"] = "true"
    frame.to_parquet(path)
    for _ in range(2):  # a re-run replaces, never duplicates
        result = _run("items", str(path), "--database-url", database_url, "--currency", "EUR")
        assert result.exit_code == 0, result.stderr
    stored = {r["item_id"]: r for r in _rows(database_url, items)}
    assert set(stored) == {"i1", "i2", "i3"}
    assert (stored["i1"]["price"], stored["i1"]["currency"]) == (Decimal("2.55"), "EUR")
    assert (stored["i3"]["price"], stored["i3"]["currency"]) == (None, None)
    assert [stored[i]["in_stock"] for i in ("i1", "i2", "i3")] == [True, False, True]
    assert stored["i1"]["attributes"] == {"colour": "red"}
    assert stored["i2"]["attributes"] is None


def test_after_an_import_the_nightly_training_finds_data(
    tmp_path: Path, tiny_shop: SyntheticShop
) -> None:
    files = write_shop(tiny_shop, tmp_path / "shop")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    empty = runner.invoke(
        app, ["train", "--database-url", url, "--model-dir", str(tmp_path / "m"), *FAST]
    )
    assert empty.exit_code == 2  # what the CronJob's first run meets today
    imported = _run(
        "purchases", str(files["purchases"]), "--currency", "EUR", "--database-url", url, "--json"
    )
    assert imported.exit_code == 0, imported.stderr
    assert json.loads(imported.stdout)["written"] == len(tiny_shop.purchases)
    trained = runner.invoke(
        app, ["train", "--database-url", url, "--model-dir", str(tmp_path / "m"), *FAST, "--json"]
    )
    assert trained.exit_code == 0, trained.stderr
    assert json.loads(trained.stdout)["promoted"] is True


def test_the_natural_key_depends_on_every_field_of_the_row(tmp_path: Path) -> None:
    base = ("u1", "purchase", "i1", "2024-01-01T10:00:00.000000", "o1", 3, Decimal("2.55"), "GBP")
    keys = {_natural_key(base)}
    for position in range(len(base)):
        changed = list(base)
        changed[position] = "x"
        keys.add(_natural_key(tuple(changed)))
    assert len(keys) == len(base) + 1
    assert all(len(k) <= 128 for k in keys)
    # the key the import stores is this one
    path = _write(tmp_path / "p.csv", PURCHASES)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    import_file("purchases", path, url)
    stored = {r["client_event_id"] for r in _rows(url, events)}
    expected = _natural_key(
        ("u1", "purchase", "i1", "2024-01-01T10:00:00.000000", "o1", 3, Decimal("2.55"), "GBP")
    )
    assert expected in stored


def test_an_import_never_brings_an_erased_user_back(tmp_path: Path, database_url: str) -> None:
    from service.activity.repository import Repository
    from service.privacy.repository import PrivacyRepository

    path = _write(tmp_path / "p.csv", PURCHASES)
    assert _run("purchases", str(path), "--database-url", database_url).exit_code == 0
    engine = make_engine(database_url)
    try:
        PrivacyRepository(Repository(engine)).erase("u1", datetime.now(UTC))
    finally:
        engine.dispose()
    assert {r["user_id"] for r in _rows(database_url, events)} == {"u2"}
    again = _run("purchases", str(path), "--database-url", database_url, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["skipped"]["erased_users"] == 2  # u1's two lines
    assert {r["user_id"] for r in _rows(database_url, events)} == {"u2"}


def test_an_import_reads_semicolons_and_day_first_dates_like_train(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    text = "user_id;item_id;timestamp\nu1;i1;01/06/2024 10:00\nu2;i2;02/06/2024 11:00\n"
    path = _write(tmp_path / "p.csv", text)
    refused = _run("purchases", str(path), "--database-url", url)
    assert refused.exit_code == 2  # only ambiguous dates: the order must be said
    assert "timestamp" in refused.stderr
    done = _run("purchases", str(path), "--database-url", url, "--dayfirst", "--delimiter", ";")
    assert done.exit_code == 0, done.stderr
    stamps = sorted(r["ts"] for r in _rows(url, events))
    assert [(t.month, t.day) for t in stamps] == [(6, 1), (6, 2)]  # June, not January


def test_ids_at_the_edges_of_the_alphabet(tmp_path: Path) -> None:
    """Plain ids pass without the per-value validator; every other one still gets its reason."""
    from training.data.imports import prepare

    good = [".a", "...", "a" * 128, "a@b:c-d_e.f", "..x"]
    bad = {".": "path step", "..": "path step", "b" * 129: "at most 128", "a/b": "'/'"}
    rows = "".join(f"{u},i1,2024-01-01\n" for u in [*good, *bad])
    path = _write(tmp_path / "ids.csv", "user_id,item_id,timestamp\n" + rows)
    prepared = prepare("purchases", path, skip_bad=True)
    assert [e.user_id for e in prepared.events] == good
    reasons = [b.reason for b in prepared.report.bad]
    assert len(reasons) == len(bad)
    for reason, expected in zip(reasons, bad.values(), strict=True):
        assert expected in reason, reasons
