"""What a shop's files really hold: ids outside the service's alphabet, day-first dates,
semicolons, and timestamps in the future (training/data/)."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from service.errors import DataError
from training.cli import app
from training.data.files import ReadOptions, sniff_delimiter
from training.data.formats import load_purchases
from training.synthetic.shop import SyntheticShop

FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]
HEADER = "user_id,item_id,timestamp"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_an_id_the_service_would_refuse_is_refused_naming_column_and_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        "user_id,item_id,timestamp\nu1,i1,2026-01-01\nu2,SKU/42,2026-01-02\nu3,i1,2026-01-03\n",
    )
    with pytest.raises(DataError) as caught:
        load_purchases(path)
    message = str(caught.value)
    assert "'item_id'" in message
    assert "data row 2" in message
    assert "'/'" in message
    assert "\n" not in message


def test_the_trainer_exits_2_on_an_id_outside_the_alphabet(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "user_id,item_id,timestamp\nu 1,i1,2026-01-01\n")
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "' '" in result.stderr
    assert not (tmp_path / "versions").exists() or not any((tmp_path / "versions").iterdir())


def purchases_at(tmp_path: Path, dates: list[str], options: ReadOptions | None = None) -> list[str]:
    rows = [f"u{n},i{n % 3},{date}" for n, date in enumerate(dates)]
    path = write(tmp_path / "p.csv", "\n".join([HEADER, *rows]) + "\n")
    frame = load_purchases(path, options=options or ReadOptions()).frame
    return [str(t) for t in frame.sort_values("user_id")["timestamp"]]


def refusal(tmp_path: Path, dates: list[str], options: ReadOptions | None = None) -> str:
    with pytest.raises(DataError) as caught:
        purchases_at(tmp_path, dates, options)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- day and month ------------------------------------------------------------------------


def test_a_day_first_column_is_read_day_first_when_one_row_shows_it(tmp_path: Path) -> None:
    # today 01/06/2026 became 6 January
    read = purchases_at(tmp_path, ["01/06/2026 10:00", "13/06/2026 11:30", "02/06/2026"])
    assert read == ["2026-06-01 10:00:00", "2026-06-13 11:30:00", "2026-06-02 00:00:00"]


def test_a_month_first_column_is_read_month_first_when_one_row_shows_it(tmp_path: Path) -> None:
    read = purchases_at(tmp_path, ["01/06/2026", "12/13/2026", "2.3.26"])
    assert read == ["2026-01-06 00:00:00", "2026-12-13 00:00:00", "2026-02-03 00:00:00"]


def test_the_uci_csv_layout_of_online_retail_is_read_month_first(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    rows = [
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,UK",
        "536366,71053,WHITE METAL LANTERN,6,12/13/2010 10:05,3.39,17850,UK",
        "536367,22633,HAND WARMER UNION JACK,6,1/2/2011 9:00,1.85,13047,UK",
    ]
    path = write(tmp_path / "retail.csv", "\n".join([header, *rows]) + "\n")
    frame = load_purchases(path, "online-retail").frame
    assert [str(t) for t in frame["timestamp"]] == [
        "2010-12-01 08:26:00",
        "2010-12-13 10:05:00",
        "2011-01-02 09:00:00",
    ]


def test_a_column_mixing_both_orders_is_refused_naming_two_rows(tmp_path: Path) -> None:
    message = refusal(tmp_path, ["01/06/2026", "13/06/2026", "06/14/2026"])
    assert "'timestamp'" in message
    assert "data row 2 '13/06/2026'" in message
    assert "data row 3 '06/14/2026'" in message
    assert "--dayfirst" in message


def test_a_column_of_only_ambiguous_dates_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, ["01/06/2026", "05/05/2026", "03/04/2026"])
    assert "data row 1 '01/06/2026'" in message
    assert "data row 3 '03/04/2026'" in message


@pytest.mark.parametrize(
    ("options", "first", "second"),
    [
        (ReadOptions(dayfirst=True), "2026-06-01 00:00:00", "2026-04-03 00:00:00"),
        (ReadOptions(dayfirst=False), "2026-01-06 00:00:00", "2026-03-04 00:00:00"),
        (ReadOptions(date_format="%d/%m/%Y"), "2026-06-01 00:00:00", "2026-04-03 00:00:00"),
    ],
)
def test_ambiguous_dates_read_in_the_order_given(
    tmp_path: Path, options: ReadOptions, first: str, second: str
) -> None:
    assert purchases_at(tmp_path, ["01/06/2026", "03/04/2026"], options) == [first, second]


def test_a_date_impossible_in_the_order_given_is_a_bad_cell(tmp_path: Path) -> None:
    message = refusal(tmp_path, ["01/06/2026", "06/13/2026"], ReadOptions(dayfirst=True))
    assert "data row 2: '06/13/2026'" in message


def test_the_date_format_must_match_every_cell(tmp_path: Path) -> None:
    options = ReadOptions(date_format="%d.%m.%Y %H:%M")
    assert purchases_at(tmp_path, ["01.06.2026 14:05"], options) == ["2026-06-01 14:05:00"]
    message = refusal(tmp_path, ["01.06.2026 14:05", "2026-06-02"], options)
    assert "'%d.%m.%Y %H:%M'" in message
    assert "data row 2: '2026-06-02'" in message


def test_iso_dates_are_read_as_before_whatever_the_order(tmp_path: Path) -> None:
    dates = ["2026-06-01 10:00:00", "2026-01-06 10:00:00"]
    for options in (ReadOptions(), ReadOptions(dayfirst=True), ReadOptions(dayfirst=False)):
        assert purchases_at(tmp_path, dates, options) == [
            "2026-06-01 10:00:00",
            "2026-01-06 10:00:00",
        ]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"delimiter": ";;"}, "--delimiter"),
        ({"delimiter": "\n"}, "--delimiter"),
        ({"date_format": "dd/mm/yyyy"}, "strftime"),
        ({"date_format": "%d/%m/%Y", "dayfirst": True}, "--date-format"),
    ],
)
def test_options_that_cannot_be_used_are_refused(given: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        ReadOptions(**given)  # type: ignore[arg-type]


def test_timestamps_in_the_future_are_counted_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime(2026, 6, 10, 12, 0)
    dates = ["2026-06-01", "2026-06-11 03:00", "2026-07-01", "2027-01-01", "2026-06-11 01:00"]
    with caplog.at_level(logging.WARNING, logger="training.data.cells"):
        purchases_at(tmp_path, dates, ReadOptions(now=now))
    [warning] = [r.getMessage() for r in caplog.records if "future" in r.getMessage()]
    assert "3 timestamps in column 'timestamp'" in warning  # 01:00 is within 14 hours
    assert "2027-01-01 00:00:00, at data row 4" in warning


def test_no_warning_when_nothing_is_in_the_future(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.data.cells"):
        purchases_at(tmp_path, ["2026-06-01"], ReadOptions(now=datetime(2026, 6, 10)))
    assert not [r for r in caplog.records if "future" in r.getMessage()]


# --- delimiters ---------------------------------------------------------------------------


PURCHASES = [
    ("u1", "i1", "2026-06-01 10:00:00", "HEART; WHITE, LARGE"),
    ("u2", "i2", "2026-06-02 11:00:00", "LANTERN"),
    ("u1", "i3", "2026-06-03 12:00:00", "MUG | TEA"),
]


def separated(path: Path, delimiter: str) -> Path:
    lines = [delimiter.join(["user_id", "item_id", "timestamp", "name"])]
    lines += [delimiter.join([*row[:3], f'"{row[3]}"']) for row in PURCHASES]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["p.csv", "p.csv.gz"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_sniffed(tmp_path: Path, delimiter: str, name: str) -> None:
    path = separated(tmp_path / name, delimiter)
    assert sniff_delimiter(path) == delimiter
    purchases = load_purchases(path)
    assert list(purchases.frame["item_id"]) == ["i1", "i2", "i3"]
    assert set(purchases.items["name"]) == {row[3] for row in PURCHASES}


@pytest.mark.parametrize(("delimiter", "given"), [(";", ";"), ("\t", "tab"), ("\t", "\\t")])
def test_the_delimiter_given_is_used(tmp_path: Path, delimiter: str, given: str) -> None:
    path = separated(tmp_path / "p.csv", delimiter)
    purchases = load_purchases(path, options=ReadOptions(delimiter=given))
    assert list(purchases.frame["user_id"]) == ["u1", "u2", "u1"]


def test_a_wrong_delimiter_names_the_missing_columns(tmp_path: Path) -> None:
    path = separated(tmp_path / "p.csv", ";")
    with pytest.raises(DataError, match="not found"):
        load_purchases(path, options=ReadOptions(delimiter=","))


def test_a_one_column_file_is_read_as_comma_separated(tmp_path: Path) -> None:
    path = write(tmp_path / "one.csv", "user_id\nu1\nu2\n")
    assert sniff_delimiter(path) == ","


# --- the command line ---------------------------------------------------------------------


def test_train_reads_a_semicolon_day_first_export_like_the_iso_file(
    tmp_path: Path, tiny_shop: SyntheticShop
) -> None:
    frame = tiny_shop.purchases.loc[:, ["user_id", "item_id", "timestamp"]]
    iso = tmp_path / "iso.csv"
    frame.to_csv(iso, index=False)
    export = tmp_path / "export.csv"
    stamps = pd.to_datetime(frame["timestamp"])
    frame.assign(timestamp=stamps.dt.strftime("%d/%m/%Y %H:%M:%S")).to_csv(
        export, index=False, sep=";"
    )
    documents: list[dict[str, object]] = []
    for data, extra in ((iso, []), (export, ["--dayfirst"]), (export, [])):
        models = tmp_path / f"models-{len(documents)}"
        result = CliRunner().invoke(
            app,
            ["train", "--data", str(data), "--model-dir", str(models), "--json", *FAST, *extra],
        )
        assert result.exit_code == 0, result.stderr
        documents.append(json.loads(result.stdout)["cleaning"])
    for document in documents[1:]:
        assert {k: v for k, v in document.items() if k != "source"} == {
            k: v for k, v in documents[0].items() if k != "source"
        }
    scored = []
    for data, extra in ((iso, []), (export, ["--delimiter", ";", "--dayfirst"])):
        models = tmp_path / "models-0"
        result = CliRunner().invoke(
            app, ["evaluate", "--model-dir", str(models), "--data", str(data), "--json", *extra]
        )
        assert result.exit_code == 0, result.stderr
        scored.append(json.loads(result.stdout)["metrics"])
    assert scored[0] == scored[1]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--dayfirst", "--date-format", "%d/%m/%Y"], "--date-format"),
        (["--delimiter", "ab"], "--delimiter"),
        ([], "mixes day-first and month-first"),
    ],
)
def test_train_exits_2_with_one_line(tmp_path: Path, args: list[str], named: str) -> None:
    path = write(tmp_path / "p.csv", f"{HEADER}\nu1,i1,13/06/2026\nu2,i2,06/14/2026\n")
    result = CliRunner().invoke(
        app, ["train", "--data", str(path), "--model-dir", str(tmp_path / "m"), *args]
    )
    assert result.exit_code == 2
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
