"""Every visitor and every product in the signals model (issue 14, item 4)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.artifact import load_artifact
from service.recommend.recommender import History, Query, Recommender
from service.recommend.serving import prepare
from training.cli import app
from training.data.formats import Purchases, purchases_from_frame
from training.encode import encode
from training.evaluate import temporal_split
from training.models import ModelParams, fit_stage
from training.pipeline import TrainConfig, TrainResult, run
from training.signals import encode_signals
from training.synthetic.browsing import every_visitor_events
from training.synthetic.shop import SyntheticShop

PARAMS = ModelParams(factors=8, iterations=4, threads=1)
FAST = ["--tune-seconds", "0", "--factors", "16", "--iterations", "6", "--threads", "1"]
END = pd.Timestamp("2025-06-30")
runner = CliRunner()


def _train(
    purchases: Purchases, root: Path, params: ModelParams, events: pd.DataFrame | None
) -> TrainResult:
    config = TrainConfig(model_dir=root, params=params, tune_seconds=0, force=True)
    return run(config, purchases, signal_events=events)


def _views(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["user_id", "item_id", "timestamp"]].assign(type="view")


# --- the fit ---------------------------------------------------------------------------------


def test_browse_only_users_and_view_only_items_are_rows_of_the_signals_fit(
    tiny_purchases: Purchases,
) -> None:
    frame, ids = encode(tiny_purchases.frame)
    cutoff = temporal_split(frame, 30).cutoff
    first_item = str(ids.items[0])
    day = pd.Timedelta(days=1)
    events = pd.DataFrame(
        {
            "user_id": ["browser-1", "browser-1", "browser-2", str(ids.users[0]), "late-browser"],
            "item_id": [first_item, "unsold", "unsold", "unsold", first_item],
            "timestamp": [
                cutoff - 3 * day,
                cutoff - 2 * day,
                cutoff - day,
                cutoff - day,
                cutoff + day,
            ],
            "type": ["view", "view", "add_to_cart", "view", "view"],
        }
    )
    signals = encode_signals(events, ids.users, ids.items)
    stage = fit_stage(frame[frame["timestamp"] <= cutoff], cutoff, PARAMS, ids, signals=signals)
    assert stage.signal_user_codes is not None
    assert stage.signal_item_codes is not None
    assert stage.signal_user_factors is not None
    assert stage.signal_item_factors is not None
    n_users, n_items = len(stage.user_codes), len(stage.item_codes)
    # the purchase rows first, in their order; then the visitors and items seen up to the cut-off
    np.testing.assert_array_equal(stage.signal_user_codes[:n_users], stage.user_codes)
    np.testing.assert_array_equal(stage.signal_item_codes[:n_items], stage.item_codes)
    assert stage.extra_user_ids.tolist() == ["browser-1", "browser-2"]  # not the late one
    assert stage.extra_item_ids.tolist() == ["unsold"]
    assert stage.signal_user_factors.shape[0] == n_users + 2
    assert stage.signal_item_factors.shape[0] == n_items + 1
    # the unsold item learnt a vector from its views; the purchase components are unchanged
    assert np.linalg.norm(stage.signal_item_factors[-1]) > 0
    plain = fit_stage(frame[frame["timestamp"] <= cutoff], cutoff, PARAMS, ids)
    np.testing.assert_array_equal(stage.item_factors, plain.item_factors)
    np.testing.assert_array_equal(stage.popularity, plain.popularity)
    # the scorer of every evaluation figure has the purchase rows only
    assert stage.scorer().n_items == n_items
    served = stage.served_scorer()
    assert served.n_items == n_items + 1
    assert served.popularity[-1] == 0
    assert served.trending[-1] == 0
    assert not served.item_factors[-1].any()
    # the rule before: purchasers only, no extra row
    before = fit_stage(
        frame[frame["timestamp"] <= cutoff],
        cutoff,
        dataclasses.replace(PARAMS, every_visitor=False),
        ids,
        signals=signals,
    )
    assert len(before.extra_user_ids) == len(before.extra_item_ids) == 0
    assert before.served_scorer().n_items == n_items


def test_visitors_weigh_like_an_average_buyer_not_like_the_shortest_row() -> None:
    """A visitor without purchases gets BM25's average length, so one view stays a fraction of a
    purchase."""
    import scipy.sparse as sp

    from training.models import _bm25_like

    purchases = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
    signals = sp.csr_matrix(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.0, 0.1]]))
    weighted = _bm25_like(purchases, signals, 100.0, 0.8).toarray()
    idf_unsold = np.log(2) - np.log1p(0)
    assert weighted[2, 2] == pytest.approx(0.1 * 101 / (100 + 0.1) * idf_unsold)


# --- evaluation: purchases only, the same users, no leakage -------------------------------------


def test_signals_touching_no_test_data_leave_the_evaluation_unchanged(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    """Visitors and unsold products seen only after the test cut-off: not one figure moves, in
    either evaluated stage; a leak would put the test buyers' next purchases in their rows."""
    frame = tiny_purchases.frame
    cutoff = temporal_split(frame, 30).cutoff
    late = frame[frame["timestamp"] > cutoff]
    # visitors who view exactly what the test users go on to buy, and an unsold product
    leak = _views(late).assign(user_id=lambda f: "visitor-" + f["user_id"].astype(str))
    unsold = _views(late).assign(item_id="unsold")
    events = pd.concat([leak, unsold], ignore_index=True)
    events["timestamp"] = events["timestamp"] - pd.Timedelta(minutes=1)
    plain = _train(tiny_purchases, tmp_path / "plain", PARAMS, None)
    visited = _train(tiny_purchases, tmp_path / "visited", PARAMS, events)
    for figures, unvisited in (
        (visited.metrics, plain.metrics),
        (visited.validation, plain.validation),
    ):
        for protocol, table in unvisited.items():
            for name, values in table.items():
                assert figures[protocol][name] == values, (protocol, name)
            assert figures[protocol]["als_signals"] == table["als"]
    # the served model did learn them: the visitors shaped it, the unsold product is served
    signals = visited.manifest.signals
    assert signals is not None
    assert signals.users_without_purchases == leak["user_id"].nunique()
    assert signals.items_without_purchases == 1
    arrays = load_artifact(visited.path).arrays
    assert "unsold" in arrays["item_ids"].tolist()
    assert len(arrays["user_ids"]) == len(load_artifact(plain.path).arrays["user_ids"])


def test_the_test_users_are_the_same_with_and_without_every_visitor(
    small_shop: SyntheticShop, tmp_path: Path
) -> None:
    log = every_visitor_events(small_shop)
    purchases = purchases_from_frame(log.purchases, source="small")
    results = {
        flag: _train(
            purchases,
            tmp_path / str(flag),
            dataclasses.replace(PARAMS, every_visitor=flag),
            log.events,
        )
        for flag in (False, True)
    }
    for protocol in ("all", "novel"):
        users = {r.metrics[protocol]["als"]["users"] for r in results.values()}
        assert len(users) == 1
        # the purchase-only components do not depend on who else browsed
        assert results[True].metrics[protocol]["als"] == results[False].metrics[protocol]["als"]
        new = {flag: r.new_products[protocol]["als_signals"] for flag, r in results.items()}
        # the same truth for both (products never sold before the cut-off included) ...
        assert new[True]["truth"] == new[False]["truth"] > 0
        assert new[True]["users"] == new[False]["users"]
    # ... which only the model that learnt those products can hit
    assert results[False].new_products["novel"]["als_signals"]["shown"] == 0
    assert results[True].new_products["novel"]["als_signals"]["shown"] > 0


# --- end to end: recoffer train, then the service's Recommender ----------------------------------


def _taste_shop() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tastes, A and B, of 12 products each; 40 buyers of each taste; 30 visitors of taste A
    who never buy. ``A-new`` is never sold: A's buyers and visitors view it in the last weeks."""
    rng = np.random.default_rng(5)
    start = END - pd.Timedelta(days=150)
    lines, views = [], []
    for taste in ("A", "B"):
        for u in range(40):
            user = f"{taste.lower()}-buyer-{u:02d}"
            for o, item in enumerate(rng.choice(12, size=6, replace=False)):
                when = start + pd.Timedelta(days=int(rng.integers(0, 150)), hours=o)
                lines.append((user, f"{taste}{item:02d}", when, f"{user}-{o}"))
                views.append((user, f"{taste}{item:02d}", when - pd.Timedelta(days=14), "view"))
            if taste == "A":
                for d in range(3):
                    views.append((user, "A-new", END - pd.Timedelta(days=3 + 5 * d), "view"))
    for v in range(30):
        visitor = f"a-visitor-{v:02d}"
        for item in rng.choice(12, size=4, replace=False):
            views.append(
                (visitor, f"A{item:02d}", END - pd.Timedelta(days=int(rng.integers(1, 60))), "view")
            )
        views.append((visitor, "A-new", END - pd.Timedelta(days=int(rng.integers(1, 20))), "view"))
    purchases = pd.DataFrame(lines, columns=["user_id", "item_id", "timestamp", "order_id"])
    events = pd.DataFrame(views, columns=["user_id", "item_id", "timestamp", "type"])
    return purchases, events


def _ingest(url: str, events: pd.DataFrame) -> None:
    from datetime import UTC, datetime

    from service.db import make_engine, migrate
    from service.tables import events as table

    engine = make_engine(url)
    migrate(engine)
    rows = [
        {
            "user_id": u,
            "item_id": i,
            "type": k,
            "ts": t.tz_localize(UTC).to_pydatetime(),
            "received_at": datetime.now(UTC),
        }
        for u, i, t, k in zip(
            events["user_id"], events["item_id"], events["timestamp"], events["type"], strict=True
        )
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()


def test_a_product_only_viewed_is_recommended_to_buyers_of_its_taste(
    tmp_path: Path, database_url: str
) -> None:
    purchases, events = _taste_shop()
    data = tmp_path / "purchases.csv"
    purchases.to_csv(data, index=False)
    _ingest(database_url, events)
    models = tmp_path / "models"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--database-url",
            database_url,
            "--model-dir",
            str(models),
            "--force",
            *FAST,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    artifact = load_artifact(Path(json.loads(result.stdout)["model_path"]))
    signals = artifact.manifest.signals
    assert signals is not None
    assert signals.items_without_purchases == 1
    assert signals.users_without_purchases == 30
    assert "A-new" in artifact.arrays["item_ids"].tolist()
    recommender = Recommender(prepare(artifact))
    model = recommender.model
    new = model.item_index["A-new"]
    assert model.scorer.popularity[new] == 0
    # the als_signals vectors alone: taste A's buyers rank it high, taste B's low
    vectors = model.scorer.signal_user_factors
    assert vectors is not None
    assert model.scorer.signal_item_factors is not None
    scores = vectors @ model.scorer.signal_item_factors.T
    ranks = (scores > scores[:, [new]]).sum(axis=1)
    a_rows = [i for u, i in model.user_index.items() if u.startswith("a-")]
    b_rows = [i for u, i in model.user_index.items() if u.startswith("b-")]
    assert np.median(ranks[a_rows]) < 6, ranks[a_rows]
    assert np.median(ranks[b_rows]) > 12, ranks[b_rows]
    # its reason names the bought item of its own taste, through the views' vectors (it has
    # no purchase vector): of a history of B00 then A00, "A00", never the first one by default
    mixed = History(
        np.array([model.item_index["B00"], model.item_index["A00"]], dtype=np.int64),
        np.array([1.0, 1.0], dtype=np.float32),
    )
    (reason,) = recommender._reasons([new], "model", mixed, ())
    assert reason == f"because you bought {model.name_of(model.item_index['A00'])}", reason

    # served: the novel recipe (chosen on validation) starts from als_signals
    assert model.recipes["novel"].uses("als_signals"), model.recipes["novel"]

    def listed(user: str) -> list[str]:
        got = recommender.recommend(Query(user_id=user, limit=10, exclude_purchased=True))
        assert got.source == "model"
        return [r.item_id for r in got.items if r.source == "model"]

    for u in range(40):
        # every buyer of taste A is shown it in the top 10 of their 18 candidates
        items = listed(f"a-buyer-{u:02d}")
        assert "A-new" in items, items
        # a buyer of taste B never
        assert "A-new" not in listed(f"b-buyer-{u:02d}")
    # a visitor the model never saw (the session fold-in) who views products of taste A puts it
    # higher than one who views products of taste B (in this blend trending, where a product
    # never sold comes last, holds it below most established products)
    from datetime import UTC, datetime

    from service.activity.records import Activity

    now = datetime(2025, 6, 30, tzinfo=UTC)
    query = Query(user_id="newcomer", limit=len(model.item_ids), exclude_purchased=True)

    def session_place(taste: str) -> int:
        recent = tuple(Activity(item_id=f"{taste}{i:02d}", type="view", ts=now) for i in (1, 4))
        got = recommender.recommend(query, recent)
        assert got.source == "session"
        return [r.item_id for r in got.items].index("A-new")

    assert session_place("A") < session_place("B")

    # every other query handles an item with no purchase: no crash, no "buy again"
    assert len(recommender.similar("A-new", 5)) == 5
    assert recommender.similar("A00", 30)  # its zero purchase-ALS vector is no nan
    again = recommender.recommend(Query(user_id="a-buyer-00", limit=10, purchased_within_days=400))
    assert "A-new" not in [r.item_id for r in again.items]
    assert recommender.rank("a-buyer-00", ["A-new", "B00", "unknown"])[-1] == "unknown"
    everything = recommender.recommend(Query(user_id="a-buyer-00", limit=len(model.item_ids)))
    assert all(np.isfinite(r.score) for r in everything.items)

    # --purchasers-only: the rule before, the unsold product is not served and its views and the
    # visitors' are counted as left out
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--database-url",
            database_url,
            "--model-dir",
            str(models),
            "--force",
            "--purchasers-only",
            *FAST,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    before = load_artifact(Path(json.loads(result.stdout)["model_path"]))
    assert before.manifest.signals is not None
    assert not before.manifest.signals.every_visitor
    assert before.manifest.signals.ignored_no_purchases == int(
        (events["item_id"].eq("A-new") | events["user_id"].str.startswith("a-visitor")).sum()
    )
    assert "A-new" not in before.arrays["item_ids"].tolist()


# --- the synthetic browsing stream ------------------------------------------------------------


def test_the_every_visitor_stream_is_seeded_and_keeps_its_promises(
    tiny_shop: SyntheticShop,
) -> None:
    log = every_visitor_events(tiny_shop, seed=3)
    again = every_visitor_events(tiny_shop, seed=3)
    pd.testing.assert_frame_equal(log.events, again.events)
    pd.testing.assert_frame_equal(log.purchases, again.purchases)
    assert not every_visitor_events(tiny_shop, seed=4).events.equals(log.events)
    events = log.events
    assert set(events["type"]) == {"view", "add_to_cart"}
    assert events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].max() <= tiny_shop.now
    # visitors who never buy, and do browse
    assert not log.purchases["user_id"].isin(log.browsers).any()
    assert events["user_id"].isin(log.browsers).sum() > len(log.browsers)
    # new products: never sold before their first sale, never seen before their launch, viewed
    # between the two
    new = log.purchases["item_id"].isin(log.new_products)
    assert (log.purchases.loc[new, "timestamp"] >= log.first_sale).all()
    seen = events["item_id"].isin(log.new_products)
    assert (events.loc[seen, "timestamp"] >= log.launch).all()
    assert (seen & (events["timestamp"] < log.first_sale)).sum() > 0
    # the same taste structure: a visitor's views are mostly of their main cluster's items
    cluster_of = dict(zip(tiny_shop.items["item_id"], tiny_shop.item_cluster, strict=True))
    browsing = events[events["user_id"].isin(log.browsers) & (events["type"] == "view")]
    by_visitor = browsing.assign(cluster=browsing["item_id"].map(cluster_of))
    main = by_visitor.groupby("user_id")["cluster"].agg(lambda c: c.value_counts().iloc[0] / len(c))
    assert main.median() >= 0.7
    # the shop's own purchases of the other products are untouched
    assert len(log.purchases) + int(
        (
            tiny_shop.purchases["item_id"].isin(log.new_products)
            & (tiny_shop.purchases["timestamp"] < log.first_sale)
        ).sum()
    ) == len(tiny_shop.purchases)
