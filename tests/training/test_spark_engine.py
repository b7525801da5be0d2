"""The Spark engine (issue 15, item 1; the Spark half of item 3): the same cleaning, the same
aggregates, the same artifact, served; bad input gives the pandas engine's one-line errors.

One SparkSession (local[2]) for the whole module. Skipped with the reason when pyspark or Java
is missing, unless RECOFFER_REQUIRE_SPARK=1 (CI).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from service.artifact import ModelStore, load_artifact
from service.errors import DataError, UsageProblem
from tests.conftest import require_or_skip
from training.cli import app
from training.data.formats import ColumnMapping, load_purchases
from training.encode import encode
from training.models import ModelParams, als_weights, build_history
from training.pipeline import TrainConfig, TrainResult, run
from training.spark.session import to_pandas
from training.synthetic.shop import SyntheticShop

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "online-retail"
RETAIL = SHARED / "online_retail.csv.gz"


class FiguresReport(UserWarning):
    """The figures a test compares, shown in pytest's warnings summary (the test output)."""


def _spark_problem() -> str:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark not installed (pip install 'recoffer[spark]')"
    from training.spark.session import java_problem

    return java_problem() or ""


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """The module's one local SparkSession (the engine's runs reuse it: getOrCreate)."""
    problem = _spark_problem()
    require_or_skip(not problem, problem, "RECOFFER_REQUIRE_SPARK")
    from training.spark.session import POSTGRES_JDBC_JAR, start_session

    session = start_session("local[2]", shuffle_partitions=4, jars=[POSTGRES_JDBC_JAR])
    yield session
    session.stop()


def _spark_config(model_dir: Path, data: Path, **extra: Any) -> TrainConfig:
    from training.spark.engine import SparkOptions

    spark_options = extra.pop("spark_options", SparkOptions(master="local[2]"))
    return TrainConfig(
        model_dir=model_dir,
        data=data,
        tune_seconds=0,
        engine="spark",
        spark=spark_options,
        params=ModelParams(threads=2),
        **extra,
    )


@pytest.fixture(scope="module")
def shop_csv(tmp_path_factory: pytest.TempPathFactory, small_shop: SyntheticShop) -> Path:
    path = tmp_path_factory.mktemp("shop") / "purchases.csv"
    small_shop.purchases.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def spark_run(spark: Any, shop_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    root = tmp_path_factory.mktemp("spark-models")
    return run(_spark_config(root, shop_csv))


# --- cleaning and aggregates: the pandas engine's figures -----------------------------------

RETAIL_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom
536365,85123A,WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER,6,12/1/2010 8:28,1.85,,United Kingdom
C536379,D,Discount,-1,12/1/2010 9:41,27.50,14527.0,United Kingdom
536380,22961,JAM MAKING SET PRINTED ,24,12/1/2010 9:41,1.45,12583.0,France
536381,22961,JAM SET,-3,12/1/2010 9:45,1.45,12583.0,France
536382,22962,FREE THING,2,12/1/2010 9:47,0,12583.0,France
536383,POST,POSTAGE,1,12/1/2010 9:50,18.0,12583.0,France
536384,gift_0001_10,GIFT VOUCHER,1,12/1/2010 9:52,10.0,12583.0,France
536386,00123,"ZERO PADDED, WITH COMMA",,12/13/2010 10:00,0.85,13047.0,United Kingdom
536387,22961,JAM MAKING SET PRINTED,12,12/3/2010 12:00,1.45,12583.0,France
"""


def test_online_retail_rules_count_the_same_rows(spark: Any, tmp_path: Path) -> None:
    from training.spark.load import read_purchases

    path = tmp_path / "retail.csv"
    path.write_text(RETAIL_CSV)
    ours = read_purchases(spark, str(path), "online-retail")
    theirs = load_purchases(path, "online-retail")
    assert ours.report.as_dict() == theirs.report.as_dict()
    pd.testing.assert_frame_equal(ours.items, theirs.items)
    assert sorted(to_pandas(ours.frame)["order_id"]) == sorted(theirs.frame["order_id"])


def test_generic_mapping_cleans_the_same_rows(spark: Any, tmp_path: Path) -> None:
    from training.spark.load import read_purchases

    path = tmp_path / "orders.csv"
    path.write_text(
        "customer;sku;when;units;unit_price\n"
        "007;A1;01/06/2026 10:00;2;3.5\n"
        "007;A1;01/06/2026 10:00;2;3.5\n"  # a duplicate
        ";A2;02/06/2026 10:00;1;1.0\n"  # missing user
        "008;;03/06/2026;1;1.0\n"  # missing item
        "008;A2;;1;1.0\n"  # missing time
        "008;A2;13/06/2026 09:30;0;1.0\n"  # non-positive quantity
        "008;A3;14/06/2026;1;-1\n"  # non-positive price
        "009.0;A3;15/06/2026 11:00;;\n"  # float-looking id, unknown quantity and price
    )
    mapping = ColumnMapping.parse(
        "user=customer,item=sku,timestamp=when,quantity=units,price=unit_price"
    )
    ours = read_purchases(spark, str(path), "generic", mapping)
    theirs = load_purchases(path, "generic", mapping)
    assert ours.report.as_dict() == theirs.report.as_dict()
    got = to_pandas(ours.frame).sort_values(["timestamp", "user_id"]).reset_index(drop=True)
    want = theirs.frame.sort_values(["timestamp", "user_id"]).reset_index(drop=True)
    assert got["user_id"].tolist() == want["user_id"].tolist() == ["007", "009"]
    assert got["timestamp"].tolist() == want["timestamp"].tolist()
    assert got["quantity"].tolist() == want["quantity"].tolist()


def test_history_popularity_trending_and_weights_equal_the_pandas_formulas(
    spark: Any, tiny_shop: SyntheticShop
) -> None:
    from training.spark import aggregate

    frame = tiny_shop.purchases.copy()
    reference = pd.Timestamp(frame["timestamp"].max()) - pd.Timedelta(days=10)
    params = ModelParams()
    coded, ids = encode(frame)
    upto = coded[coded["timestamp"] <= reference]
    users, items, counts, ages = build_history(upto, reference)
    weights = als_weights(counts, ages, params)

    sdf = spark.createDataFrame(
        frame.loc[:, ["user_id", "item_id", "order_id", "timestamp", "quantity"]].astype(
            {"quantity": "float64"}
        )
    )
    scoded, sids = aggregate.encode(sdf)
    pairs = aggregate.pairs(scoded, reference, params)
    history = aggregate.collect_history(pairs, aggregate.item_counts(pairs, params.trending_days))

    def by_ids(
        matrix: sp.csr_matrix, rows: pd.Index, cols: pd.Index
    ) -> dict[tuple[str, str], float]:
        m = matrix.tocoo()
        return {
            (str(rows[r]), str(cols[c])): float(v)
            for r, c, v in zip(m.row, m.col, m.data, strict=True)
        }

    ours_rows, ours_cols = sids.users[history.user_codes], sids.items[history.item_codes]
    pandas_rows, pandas_cols = ids.users[users], ids.items[items]
    assert by_ids(history.counts, ours_rows, ours_cols) == by_ids(counts, pandas_rows, pandas_cols)
    ours_age = by_ids(history.age_days, ours_rows, ours_cols)
    want_age = by_ids(ages, pandas_rows, pandas_cols)
    assert ours_age.keys() == want_age.keys()
    assert np.allclose([ours_age[k] for k in want_age], list(want_age.values()), rtol=1e-6)
    popularity = dict(
        zip(pandas_cols, np.bincount(counts.indices, minlength=len(items)), strict=True)
    )
    assert dict(zip(ours_cols, history.popularity, strict=True)) == popularity
    recent = ages.data <= params.trending_days
    trending = np.bincount(counts.indices[recent], minlength=len(items))
    assert dict(zip(ours_cols, history.trending, strict=True)) == dict(
        zip(pandas_cols, trending, strict=True)
    )
    spark_weights = to_pandas(aggregate.als_weights(pairs, params))
    got = {
        (str(sids.users[u]), str(sids.items[i])): w
        for u, i, w in spark_weights.itertuples(index=False)
    }
    want = by_ids(weights, pandas_rows, pandas_cols)
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-4)


# --- the artifact, served --------------------------------------------------------------------


def test_spark_artifact_has_the_pandas_arrays_and_manifest_fields(
    spark_run: TrainResult, shop_csv: Path, tmp_path: Path
) -> None:
    pandas_run = run(
        TrainConfig(
            model_dir=tmp_path, data=shop_csv, tune_seconds=0, params=ModelParams(threads=2)
        )
    )
    ours = load_artifact(spark_run.path, verify_checksums=True)
    theirs = load_artifact(pandas_run.path, verify_checksums=True)
    assert ours.manifest.engine.name == "spark"
    assert ours.manifest.engine.fit == "implicit"
    assert ours.manifest.engine.version
    assert ours.manifest.engine.master == "local[2]"
    assert set(ours.manifest.engine.left_out) >= {"ease"}
    assert theirs.manifest.engine.name == "pandas"
    # the same arrays, less EASE's (left out of this engine)
    assert set(ours.arrays) == set(theirs.arrays) - {"ease_b"}
    for field in ("recipes", "reference_time", "created_at", "served", "metrics", "counts"):
        assert getattr(ours.manifest, field) is not None
    assert ours.manifest.counts.users == theirs.manifest.counts.users
    assert ours.manifest.counts.items == theirs.manifest.counts.items
    assert ours.manifest.counts.interactions == theirs.manifest.counts.interactions
    assert ours.manifest.data is not None
    assert theirs.manifest.data is not None
    assert ours.manifest.data.cleaning == theirs.manifest.data.cleaning
    assert ours.manifest.split == theirs.manifest.split
    assert spark_run.gate.method == "first"
    warnings.warn(
        "synthetic small shop, test NDCG@10 (all): spark served "
        f"{spark_run.metrics['all'][spark_run.served['all']]['ndcg@10']:.4f}, pandas als "
        f"{pandas_run.metrics['all']['als']['ndcg@10']:.4f}",
        FiguresReport,
        stacklevel=1,
    )


def test_spark_artifact_serves_every_endpoint_and_filter(
    spark_run: TrainResult, database_url: str
) -> None:
    from tests.service.test_api import ADMIN, F, make_client

    artifact = load_artifact(spark_run.path)
    indptr = artifact.arrays["history_indptr"]
    user = str(artifact.arrays["user_ids"][int(np.diff(indptr).argmax())])
    row = int(np.diff(indptr).argmax())
    bought = {
        str(artifact.arrays["item_ids"][i])
        for i in artifact.arrays["history_indices"][indptr[row] : indptr[row + 1]]
    }
    root = spark_run.path.parent.parent
    with make_client(root, database_url) as client:
        model = client.get("/v1/model", headers={"X-API-Key": ADMIN})
        assert model.status_code == 200, model.text
        assert client.get("/metrics").status_code == 200
        base = f"/v1/users/{user}/recommendations"
        page = client.get(base, params={"limit": 5}, headers=F)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["source"] == "model"
        assert len(body["items"]) == 5
        assert body["model_version"] == spark_run.version
        novel = client.get(base, params={"limit": 10, "exclude_purchased": "true"}, headers=F)
        assert novel.status_code == 200
        assert not {i["item_id"] for i in novel.json()["items"]} & bought
        first = body["items"][0]["item_id"]
        excluded = client.get(base, params={"limit": 5, "exclude": first}, headers=F)
        assert first not in {i["item_id"] for i in excluded.json()["items"]}
        categories = artifact.arrays.get("item_categories")
        if categories is not None:
            category = str(categories[0])
            within = client.get(base, params={"limit": 5, "category": category}, headers=F)
            assert within.status_code == 200
            names = {
                str(i): str(c) for i, c in zip(artifact.arrays["item_ids"], categories, strict=True)
            }
            assert all(names[i["item_id"]] == category for i in within.json()["items"])
        recent = client.get(base, params={"limit": 5, "purchased_within_days": 30}, headers=F)
        assert recent.status_code == 200
        posted = client.post(base, json={"limit": 3}, headers=F)
        assert posted.status_code == 200
        assert len(posted.json()["items"]) == 3
        similar = client.get(f"/v1/items/{first}/similar", params={"limit": 4}, headers=F)
        assert similar.status_code == 200
        assert len(similar.json()["items"]) == 4
        stranger = client.get("/v1/users/nobody-at-all/recommendations", headers=F)
        assert stranger.status_code == 200
        assert stranger.json()["source"] == "popular"


# --- the gate: the current model scored with its own engine ---------------------------------


def test_gate_refits_a_pandas_built_current_the_pandas_way(
    spark: Any, tmp_path: Path, shop_csv: Path
) -> None:
    params = ModelParams(threads=2, regularization=0.1)
    run(TrainConfig(model_dir=tmp_path, data=shop_csv, tune_seconds=0, params=params))
    again = run(_spark_config(tmp_path, shop_csv))
    assert again.gate.method == "refit"
    assert any("pandas engine" in note for note in again.gate.notes)
    assert again.gate.current  # compared, not a silent pass
    manifest = load_artifact(again.path).manifest
    assert manifest.gate is not None
    assert manifest.gate.method == "refit"
    runs = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 2


def test_pandas_engine_does_not_silently_pass_a_spark_built_current(
    spark_run: TrainResult, shop_csv: Path
) -> None:
    root = spark_run.path.parent.parent
    store = ModelStore(root)
    assert store.current() == spark_run.version
    again = run(
        TrainConfig(model_dir=root, data=shop_csv, tune_seconds=0, params=ModelParams(threads=2))
    )
    assert again.gate.method == "other_engine"
    assert not again.gate.passed
    assert not again.promoted
    assert store.current() == spark_run.version


# --- bad input: the pandas engine's one-line errors, exit 2 ---------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["train", *args, "--tune-seconds", "0"])


@pytest.mark.parametrize(
    "case",
    ["missing_file", "bad_mapping", "empty_data", "header_only"],
)
def test_bad_input_gives_the_pandas_engines_one_line_error(
    spark: Any, tmp_path: Path, case: str
) -> None:
    extra: list[str] = []
    if case == "missing_file":
        data = tmp_path / "nope.csv"
    elif case == "bad_mapping":
        data = tmp_path / "p.csv"
        data.write_text("user_id,item_id,timestamp\nu1,i1,2026-01-01\n")
        extra = ["--columns", "user=customer,item=sku"]
    elif case == "empty_data":
        data = tmp_path / "e.csv"
        data.write_text("user_id,item_id,timestamp\n,x,2011-01-01\n,y,2011-01-02\n")
    else:
        data = tmp_path / "h.csv"
        data.write_text("user_id,item_id,timestamp\n")
    common = ["--data", str(data), "--model-dir", str(tmp_path / "m"), *extra]
    pandas_result = _cli(*common)
    spark_result = _cli(*common, "--engine", "spark", "--spark-master", "local[2]")
    assert pandas_result.exit_code == 2, pandas_result.output
    assert spark_result.exit_code == 2, spark_result.output
    line = [x for x in spark_result.output.splitlines() if x.startswith("recoffer: error:")]
    assert line
    assert line == [
        x for x in pandas_result.output.splitlines() if x.startswith("recoffer: error:")
    ]


def test_missing_java_or_pyspark_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    from training.spark import session

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(UsageProblem, match="Java 17"):
        session.check_engine()
    real_import = builtins.__import__

    def no_pyspark(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    result = CliRunner().invoke(
        app, ["train", "--engine", "spark", "--data", str(tmp_path / "x.csv")]
    )
    assert result.exit_code == 2
    assert "pip install 'recoffer[spark]'" in result.output


def test_unknown_engine_and_fit_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--engine", "dask", "--data", "x.csv"])
    assert result.exit_code == 2
    assert "--engine must be pandas or spark" in result.output
    from training.spark.fit import chosen_fit

    assert chosen_fit("auto", 10, max_pairs=100) == "implicit"
    assert chosen_fit("auto", 1000, max_pairs=100) == "mllib"
    with pytest.raises(ValueError, match="--spark-fit"):
        chosen_fit("gpu", 10)
    from training.spark.engine import SparkOptions

    with pytest.raises(DataError):
        SparkOptions(fit="gpu")


# --- Online Retail: the same cleaning, and quality within 5 % of pandas' ALS ---------------


@pytest.fixture(scope="module")
def retail() -> Path:
    require_or_skip(RETAIL.is_file(), f"{RETAIL} not found", "RECOFFER_REQUIRE_SHARED_DATA")
    return RETAIL


@pytest.mark.slow
def test_online_retail_spark_quality_within_5_percent_of_pandas_als(
    spark: Any, retail: Path, tmp_path: Path
) -> None:
    from training.spark.engine import SparkOptions

    fit_with = os.environ.get("RECOFFER_SPARK_TEST_FIT", "mllib")
    ours = run(
        _spark_config(
            tmp_path / "spark",
            retail,
            fmt="online-retail",
            spark_options=SparkOptions(master="local[2]", fit=fit_with),
        )
    )
    theirs = run(
        TrainConfig(
            model_dir=tmp_path / "pandas",
            data=retail,
            fmt="online-retail",
            tune_seconds=0,
            params=ModelParams(threads=2),
        )
    )
    assert ours.report.as_dict() == theirs.report.as_dict()
    assert load_artifact(ours.path).manifest.engine.fit == fit_with
    lines = []
    for protocol in ("all", "novel"):
        served = ours.metrics[protocol][ours.served[protocol]]["ndcg@10"]
        spark_als = ours.metrics[protocol]["als"]["ndcg@10"]
        pandas_als = theirs.metrics[protocol]["als"]["ndcg@10"]
        lines.append(
            f"{protocol}: spark ({fit_with}) served {ours.served[protocol]} {served:.4f}, "
            f"spark als {spark_als:.4f}; pandas als {pandas_als:.4f}"
        )
        assert served >= 0.95 * pandas_als, lines[-1]
    warnings.warn("Online Retail test NDCG@10 - " + "; ".join(lines), FiguresReport, stacklevel=1)


# --- the service's PostgreSQL, read by Spark JDBC --------------------------------------------


def test_database_purchases_clean_to_the_pandas_engines_counts(
    spark: Any, fresh_postgres: str, tiny_shop: SyntheticShop
) -> None:
    from tests.training.test_database_source import _seed
    from training.data.database import load_database_purchases
    from training.data.formats import purchases_from_frame
    from training.spark.database import read_database_purchases
    from training.spark.session import POSTGRES_JDBC_JAR

    require_or_skip(
        Path(POSTGRES_JDBC_JAR).is_file(),
        f"{POSTGRES_JDBC_JAR} absent (apt-get install libpostgresql-jdbc-java)",
        "RECOFFER_REQUIRE_SPARK",
    )
    _seed(fresh_postgres, tiny_shop.purchases, with_catalogue=tiny_shop.items)
    ours = read_database_purchases(spark, fresh_postgres)
    theirs = purchases_from_frame(
        load_database_purchases(fresh_postgres), source="database purchase events"
    )
    assert ours.report.as_dict() == theirs.report.as_dict()
    assert ours.report.rows_kept == len(tiny_shop.purchases)


@pytest.mark.parametrize(
    ("given", "uri"),
    [
        ("s3a://shop/purchases/", "s3a://shop/purchases"),
        ("hdfs://nn:8020/a/b.csv.gz", "hdfs://nn:8020/a/b.csv.gz"),
        ("file:///tmp/a.csv", "file:///tmp/a.csv"),
        ("/tmp/a.parquet", "/tmp/a.parquet"),
    ],
)
def test_a_data_uri_survives_the_path_option(given: str, uri: str) -> None:
    from training.spark.engine import data_uri

    assert data_uri(Path(given)) == uri
