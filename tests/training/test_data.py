"""Reading and cleaning purchase histories: training/data/."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import DataError
from training.data.formats import (
    COLUMNS,
    FORMATS,
    GENERIC_RULES,
    ONLINE_RETAIL_RULES,
    ColumnMapping,
    Purchases,
    duplicated_rows,
    load_purchases,
    purchases_from_frame,
)

# Online Retail layout; the comment after each line says which rule drops it.
SMALL_RETAIL_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",  # kept  # noqa: E501
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # kept
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # dup
    "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom",  # no customer
    "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom",  # duplicate
    "C536367,22633,HAND WARMER UNION JACK,-6,2010-12-01 08:30:00,1.85,,United Kingdom",  # no cust.
    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527.0,United Kingdom",  # cancellation
    "536380,22961,JAM MAKING SET PRINTED,-3,2010-12-01 09:45:00,1.45,14527.0,United Kingdom",  # qty
    "536381,22139,RETROSPOT TEA SET CERAMIC 11 PC,0,2010-12-01 09:50:00,4.95,14527.0,Norway",  # qty
    "536382,22961,JAM MAKING SET PRINTED,2,2010-12-01 10:00:00,0.00,13047.0,EIRE",  # price
    "536383,POST,POSTAGE,1,2010-12-01 10:05:00,18.00,12583.0,France",  # non-product
    '536383,gift_0001_10,"Dotcomgiftshop Gift Voucher £10.00",1,2010-12-01 10:05:00,8.50,12583.0,France',  # non-product  # noqa: E501
    "536384,m,Manual,1,2010-12-01 10:06:00,2.00,12583.0,France",  # non-product
    '536386,00123,"ZERO PADDED, WITH COMMA",1,2010-12-03 11:00:00,1.00,13047.0,EIRE',  # kept
    "536385,22961,JAM MAKING SET PRINTED ,4,2010-12-02 10:00:00,1.65,12583.0,France",  # kept
    "536387,22961,JAM MAKING SET WITH JARS,12,2010-12-03 12:00:00,1.25,12583.0,France",  # kept
]
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"

GENERIC_CSV = """cust,sku,when,amount,extra
00123,A-1,2011-01-01 10:00:00,2.50,x
17850.0,00042,2011-01-02 09:00:00,1.00,y
,A-1,2011-01-01 11:00:00,2.50,z
00123,,2011-01-01 12:00:00,2.50,z
00123,A-1,,2.50,z
00123,B-2,2011-01-03 08:00:00,0,z
00123,A-1,2011-01-01 10:00:00,2.50,other
17850,00042,2011-01-02 09:00:00,1.00,q
00123,B-2,2011-01-03 08:00:00,,z
"""
GENERIC_MAPPING = "user=cust,item=sku,timestamp=when,price=amount"
TRUNCATED_GZIP = gzip.compress(
    ("user_id,item_id,timestamp\n" + "u,i,2011-01-01\n" * 5000).encode()
)[:-10]


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def retail_file(tmp_path: Path, rows: list[str] = SMALL_RETAIL_ROWS, name: str = "r.csv") -> Path:
    return write(tmp_path / name, "\n".join([RETAIL_HEADER, *rows]) + "\n")


def data_error(*args: object, **kwargs: object) -> str:
    """Call load_purchases, expect DataError, return its (one-line) message."""
    with pytest.raises(DataError) as caught:
        load_purchases(*args, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the Online Retail format -------------------------------------------------------------


def test_online_retail_rules_count_each_dropped_row_once_in_order(tmp_path: Path) -> None:
    report = load_purchases(retail_file(tmp_path), "online-retail").report

    assert report.rows_read == 16
    assert report.dropped == {
        "duplicate": 2,
        "missing_customer": 2,
        "cancellation": 1,
        "non_positive_quantity": 2,
        "non_positive_price": 1,
        "non_product_code": 3,
    }
    assert tuple(report.dropped) == ONLINE_RETAIL_RULES
    assert report.rows_kept == 5
    assert report.users == 3
    assert report.items == 4
    assert report.start == pd.Timestamp("2010-12-01 08:26:00")
    assert report.end == pd.Timestamp("2010-12-03 12:00:00")


def test_online_retail_frame_is_normalised_and_sorted_by_time(tmp_path: Path) -> None:
    frame = load_purchases(retail_file(tmp_path), "online-retail").frame

    assert COLUMNS == ("user_id", "item_id", "timestamp", "quantity", "price", "order_id")
    assert tuple(frame.columns) == COLUMNS
    assert frame["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert frame["quantity"].dtype == np.float64
    assert frame["price"].dtype == np.float64
    assert frame["user_id"].tolist() == ["17850", "17850", "12583", "13047", "12583"]
    assert frame["item_id"].tolist() == ["85123A", "71053", "22961", "00123", "22961"]
    assert frame["order_id"].tolist() == ["536365", "536365", "536385", "536386", "536387"]
    assert frame["quantity"].tolist() == [6.0, 6.0, 4.0, 1.0, 12.0]
    assert frame["timestamp"].is_monotonic_increasing
    assert frame.index.tolist() == list(range(5))


def test_online_retail_items_carry_most_frequent_name_and_median_price(tmp_path: Path) -> None:
    items = load_purchases(retail_file(tmp_path), "online-retail").items

    assert list(items.columns) == ["item_id", "name", "category", "price"]
    by_id = items.set_index("item_id")
    assert sorted(by_id.index) == ["00123", "22961", "71053", "85123A"]
    # Two names once each: the first one seen wins; trailing blanks are stripped.
    assert by_id.loc["22961", "name"] == "JAM MAKING SET PRINTED"
    assert by_id.loc["22961", "price"] == pytest.approx(1.45)
    assert by_id.loc["00123", "name"] == "ZERO PADDED, WITH COMMA"
    assert items["category"].isna().all()


def test_online_retail_refuses_a_column_mapping(tmp_path: Path) -> None:
    message = data_error(retail_file(tmp_path), "online-retail", ColumnMapping())
    assert "online-retail" in message


def test_online_retail_names_a_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "InvoiceNo,StockCode\n1,2\n")
    message = data_error(path, "online-retail")
    missing = ["CustomerID", "InvoiceDate", "Quantity", "UnitPrice", "Description"]
    assert f"columns {', '.join(map(repr, missing))} not found" in message
    assert "columns present: 'InvoiceNo', 'StockCode'" in message
    assert str(path) in message


def test_online_retail_refuses_a_kept_line_without_stock_code(tmp_path: Path) -> None:
    rows = [*SMALL_RETAIL_ROWS, "536390,,NOTHING,1,2010-12-04 10:00:00,1.00,12583.0,France"]
    message = data_error(retail_file(tmp_path, rows), "online-retail")
    assert "'StockCode'" in message
    assert "data row 17" in message


def test_online_retail_reads_latin_1_files_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "latin.csv"
    # The voucher line holds a pound sign, which is not UTF-8 in Latin-1.
    path.write_bytes("\n".join([RETAIL_HEADER, *SMALL_RETAIL_ROWS]).encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="training.data.files"):
        purchases = load_purchases(path, "online-retail")
    assert purchases.report.rows_kept == 5
    assert "not valid UTF-8" in caplog.text


def test_online_retail_reads_gzip_and_parquet_the_same(tmp_path: Path) -> None:
    plain = load_purchases(retail_file(tmp_path), "online-retail")
    packed = load_purchases(retail_file(tmp_path, name="r.csv.gz"), "online-retail")
    raw = pd.read_csv(retail_file(tmp_path), dtype=str, keep_default_na=False)
    raw.to_parquet(tmp_path / "r.parquet", index=False)
    table = load_purchases(tmp_path / "r.parquet", "online-retail")

    for other in (packed, table):
        pd.testing.assert_frame_equal(other.frame, plain.frame)
        assert other.report.dropped == plain.report.dropped


# --- the generic format -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["g.csv", "g.csv.gz", "g.parquet"])
def test_generic_mapping_cleans_and_keeps_id_strings(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "g.csv", GENERIC_CSV)
    if name.endswith(".gz"):
        path = write(tmp_path / name, GENERIC_CSV)
    elif name.endswith(".parquet"):
        path = tmp_path / name
        pd.read_csv(tmp_path / "g.csv", dtype=str, keep_default_na=False).to_parquet(path)

    purchases = load_purchases(path, columns=ColumnMapping.parse(GENERIC_MAPPING))

    report = purchases.report
    assert report.rows_read == 9
    assert report.dropped == {
        "missing_user": 1,
        "missing_item": 1,
        "missing_timestamp": 1,
        "non_positive_quantity": 0,
        "non_positive_price": 1,
        # "17850.0" and "17850" are the same user once read as ids.
        "duplicate": 2,
    }
    assert tuple(report.dropped) == GENERIC_RULES
    assert (report.rows_kept, report.users, report.items) == (3, 2, 3)
    frame = purchases.frame
    assert frame["user_id"].tolist() == ["00123", "17850", "00123"]
    assert frame["item_id"].tolist() == ["A-1", "00042", "B-2"]
    assert frame["quantity"].tolist() == [1.0, 1.0, 1.0]
    assert frame["price"].tolist()[:2] == [2.5, 1.0]
    assert np.isnan(frame["price"].iloc[2])
    assert frame["order_id"].tolist() == [
        "00123@2011-01-01T10:00:00",
        "17850@2011-01-02T09:00:00",
        "00123@2011-01-03T08:00:00",
    ]


def test_generic_default_mapping_reads_normalised_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        "user_id,item_id,timestamp\nu1,i1,2011-01-01T10:00:00+01:00\nu1,i2,2011-01-01T10:00:00Z\n",
    )
    frame = load_purchases(path).frame
    # Timezone-aware values are converted to UTC, then made naive.
    assert frame["timestamp"].tolist() == [
        pd.Timestamp("2011-01-01 09:00:00"),
        pd.Timestamp("2011-01-01 10:00:00"),
    ]
    assert frame["timestamp"].dt.tz is None


def test_generic_quantity_rule_applies_only_when_mapped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv",
        "u,i,t,q,o\na,x,2011-01-01,2,o1\na,y,2011-01-01,0,o1\nb,x,2011-01-02,-1,o2\nb,z,2011-01-02,,o2\n",
    )
    with_quantity = load_purchases(
        path, columns=ColumnMapping.parse("user=u,item=i,timestamp=t,quantity=q,order=o")
    )
    assert with_quantity.report.dropped["non_positive_quantity"] == 2
    # An empty quantity cell means "unknown": 1.0.
    assert with_quantity.frame["quantity"].tolist() == [2.0, 1.0]
    assert with_quantity.frame["order_id"].tolist() == ["o1", "o2"]
    without = load_purchases(path, columns=ColumnMapping(user="u", item="i", timestamp="t"))
    assert without.report.dropped["non_positive_quantity"] == 0
    assert without.report.rows_kept == 4


def test_parquet_numeric_ids_become_strings_without_decimals(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [17850.0, np.nan, 12583.0],
            "item_id": [10002, 20003, 10002],
            "timestamp": pd.to_datetime(
                ["2011-01-01 10:00", "2011-01-01 11:00", "2011-01-01 12:00"]
            ).tz_localize("Europe/London"),
        }
    )
    frame.to_parquet(tmp_path / "n.parquet")

    purchases = load_purchases(tmp_path / "n.parquet")

    assert purchases.report.dropped["missing_user"] == 1
    assert purchases.frame["user_id"].tolist() == ["17850", "12583"]
    assert purchases.frame["item_id"].tolist() == ["10002", "10002"]
    assert purchases.frame["timestamp"].dtype == np.dtype("datetime64[ns]")


# --- errors -------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert data_error(path) == f"file not found: {path}"


def test_unsupported_extension_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", "{}")
    message = data_error(path)
    assert "unsupported file type" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.csv.gz", b"this is not gzip data"),
        ("cut.csv.gz", TRUNCATED_GZIP),
        ("bad.parquet", b"PAR1 certainly not parquet PAR1"),
        ("empty.csv", b""),
    ],
)
def test_unreadable_files_raise_data_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    message = data_error(path)
    assert message.startswith(f"cannot read {path}")


def test_missing_generic_column_lists_the_columns_present(tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", GENERIC_CSV)
    message = data_error(path)
    assert "'user_id'" in message
    assert "columns present: 'cust', 'sku', 'when', 'amount', 'extra'" in message


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday",  # mixed/ISO parsing path
        "2011-02-30 10:00:00",  # explicit-format path: the layout matches, the date does not exist
    ],
)
def test_unparseable_timestamp_names_column_row_and_value(tmp_path: Path, bad: str) -> None:
    path = write(
        tmp_path / "t.csv",
        f"u,i,t\na,x,2011-01-01 10:00:00\nb,y,\nc,z,{bad}\nd,w,2011-01-02 10:00:00\n",
    )
    message = data_error(path, columns=ColumnMapping(user="u", item="i", timestamp="t"))
    assert "column 't'" in message
    assert "data row 3" in message
    assert repr(bad) in message
    assert str(path) in message


def test_unparseable_number_names_column_row_and_value(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", "u,i,t,p\na,x,2011-01-01,1.5\nb,y,2011-01-01,abc\n")
    message = data_error(path, columns=ColumnMapping.parse("user=u,item=i,timestamp=t,price=p"))
    assert "column 'p'" in message
    assert "data row 2" in message
    assert "'abc'" in message


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    message = data_error(write(tmp_path / "g.csv", GENERIC_CSV), "excel")
    assert "'excel'" in message
    assert all(fmt in message for fmt in FORMATS)


def test_nothing_left_after_cleaning_gives_the_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\n,x,2011-01-01\n,y,2011-01-02\n")
    message = data_error(path)
    assert message.startswith(f"no purchases left after cleaning {path}: 2 rows read")
    assert "missing_user=2" in message


def test_header_only_file_leaves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "user_id,item_id,timestamp\n")
    assert "no purchases left after cleaning" in data_error(path)


# --- column mapping -----------------------------------------------------------------------


def test_column_mapping_parse_reads_roles_and_keeps_defaults() -> None:
    mapping = ColumnMapping.parse(
        "user=CustomerID, item=StockCode,timestamp=InvoiceDate,price=UnitPrice"
    )
    assert mapping == ColumnMapping(
        user="CustomerID", item="StockCode", timestamp="InvoiceDate", price="UnitPrice"
    )
    assert ColumnMapping.parse("order=InvoiceNo").user == "user_id"


@pytest.mark.parametrize(
    "text",
    ["", "user", "user=", "=CustomerID", "colour=red", "user=a,user=b", "user=a,item=a"],
)
def test_column_mapping_parse_refuses_malformed_text(text: str) -> None:
    with pytest.raises(DataError) as caught:
        ColumnMapping.parse(text)
    assert "column mapping" in str(caught.value)


# --- in-memory frames and the report ------------------------------------------------------


def shop_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u000001", "u000002", "u000001", "u000001", "u000003"],
            "item_id": ["i00001", "i00002", "i00001", "i00003", "i00002"],
            "timestamp": pd.to_datetime(
                [
                    "2024-01-02 10:00",
                    "2024-01-01 09:00",
                    "2024-01-02 10:00",
                    "2024-01-03 10:00",
                    "2024-01-04 10:00",
                ]
            ),
            "quantity": [1.0, 2.0, 1.0, 0.0, 1.0],
            "price": [9.99, 4.99, 9.99, 3.99, 5.99],
            "order_id": ["o0000001", "o0000002", "o0000001", "o0000003", "o0000004"],
            "category": ["c01", "c02", "c01", "c03", "c02"],
            "name": ["Classic mug", "Eco lamp", "Classic mug", "Bold pen", "Eco lamp"],
        },
        index=[10, 20, 30, 40, 50],
    )


def test_purchases_from_frame_applies_generic_cleaning() -> None:
    purchases = purchases_from_frame(shop_frame(), source="shop")

    assert isinstance(purchases, Purchases)
    assert purchases.report.source == "shop"
    assert purchases.report.dropped == {
        "missing_user": 0,
        "missing_item": 0,
        "missing_timestamp": 0,
        "non_positive_quantity": 1,
        "non_positive_price": 0,
        "duplicate": 1,
    }
    frame = purchases.frame
    assert frame["order_id"].tolist() == ["o0000002", "o0000001", "o0000004"]
    assert frame["quantity"].tolist() == [2.0, 1.0, 1.0]
    assert frame.index.tolist() == [0, 1, 2]
    items = purchases.items.set_index("item_id")
    assert items.index.tolist() == ["i00001", "i00002"]
    assert items.loc["i00002", "category"] == "c02"
    assert items.loc["i00002", "name"] == "Eco lamp"
    assert items.loc["i00002", "price"] == pytest.approx(5.49)


def test_purchases_from_frame_without_optional_columns() -> None:
    frame = shop_frame()[["user_id", "item_id", "timestamp"]]
    purchases = purchases_from_frame(frame)
    assert purchases.report.source == "<frame>"
    assert purchases.frame["quantity"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert purchases.frame["price"].isna().all()
    assert purchases.frame["order_id"].iloc[0] == "u000002@2024-01-01T09:00:00"
    assert purchases.items["name"].isna().all()


def test_purchases_from_frame_names_a_missing_column() -> None:
    with pytest.raises(DataError) as caught:
        purchases_from_frame(shop_frame().drop(columns="timestamp"), source="shop")
    assert "'timestamp'" in str(caught.value)
    assert "shop" in str(caught.value)


def test_report_is_json_serialisable_and_renders(tmp_path: Path) -> None:
    report = load_purchases(retail_file(tmp_path), "online-retail").report

    data = json.loads(json.dumps(report.as_dict()))
    assert data["start"] == "2010-12-01T08:26:00"
    assert data["end"] == "2010-12-03T12:00:00"
    assert data["dropped"]["non_product_code"] == 3
    text = report.render()
    assert "16 rows read, 5 kept" in text
    assert "non_product_code" in text
    assert "3 users, 4 items" in text


# --- the real data set --------------------------------------------------------------------


@pytest.fixture(scope="module")
def online_retail(online_retail_path: Path) -> Purchases:
    # online_retail_path (conftest) skips where ../shared is absent and fails in CI
    return load_purchases(online_retail_path, "online-retail")


def test_online_retail_full_data_set_counts(online_retail: Purchases) -> None:
    report = online_retail.report
    # rows_read and duplicate are the README's facts; the rest as measured.
    assert report.rows_read == 541_909
    assert report.dropped == {
        "duplicate": 5_268,
        "missing_customer": 135_037,
        "cancellation": 8_872,
        "non_positive_quantity": 0,
        "non_positive_price": 40,
        "non_product_code": 1_542,
    }
    assert report.rows_kept == 391_150
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert (report.users, report.items) == (4_334, 3_659)
    assert report.start == pd.Timestamp("2010-12-01 08:26:00")
    assert report.end == pd.Timestamp("2011-12-09 12:50:00")
    frame = online_retail.frame
    assert not frame["user_id"].str.contains(".", regex=False).any()
    assert len(online_retail.items) == report.items


def test_online_retail_full_data_set_agrees_with_readme(
    online_retail: Purchases, online_retail_path: Path
) -> None:
    # The README's 397,884 rows keep duplicates, so check it on the raw file with pandas.
    raw = pd.read_csv(online_retail_path, dtype=str, keep_default_na=False, engine="pyarrow")
    assert len(raw) == 541_909

    def classic(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[
            (rows["CustomerID"] != "")
            & ~rows["InvoiceNo"].str.startswith("C")
            & (pd.to_numeric(rows["Quantity"]) > 0)
            & (pd.to_numeric(rows["UnitPrice"]) > 0)
        ]

    kept = classic(raw)
    assert len(kept) == 397_884
    assert kept["CustomerID"].nunique() == 4_338
    assert kept["StockCode"].nunique() == 3_665
    # Without duplicates, the classic filters leave what the loader keeps plus non-products.
    report = online_retail.report
    assert (
        len(classic(raw.drop_duplicates())) == report.rows_kept + report.dropped["non_product_code"]
    )


def test_generic_format_picks_up_optional_columns_by_their_default_names(tmp_path: Path) -> None:
    data = tmp_path / "p.csv"
    data.write_text(
        "user_id,item_id,timestamp,order_id,price,category,name\n"
        "u1,i1,2024-01-01 10:00:00,o1,2.5,toys,Bear\n"
        "u1,i2,2024-01-01 10:00:00,o1,1.0,toys,Car\n"
    )
    purchases = load_purchases(data)
    assert list(purchases.frame["order_id"]) == ["o1", "o1"]
    assert list(purchases.frame["price"]) == [2.5, 1.0]
    assert list(purchases.items["category"]) == ["toys", "toys"]
    assert list(purchases.items["name"]) == ["Bear", "Car"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", None]),
            st.sampled_from(["i1", "i2"]),
            st.sampled_from([0, 1]),
            st.sampled_from([1.0, 2.0, float("nan")]),
        ),
        max_size=30,
    )
)
def test_duplicated_rows_agrees_with_pandas(rows: list[tuple[object, ...]]) -> None:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "price"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s")
    for columns in (list(frame.columns), ["user_id", "item_id"], ["timestamp", "price"]):
        part = frame[columns]
        np.testing.assert_array_equal(duplicated_rows(part), part.duplicated().to_numpy())
