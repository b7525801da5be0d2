"""Views and add-to-carts as weaker training signals (training.signals)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.artifact import load_artifact
from service.settings import Settings
from training.cli import app
from training.data.database import load_database_signals
from training.data.formats import Purchases
from training.encode import encode
from training.evaluate import temporal_split
from training.models import ModelParams, fit_stage
from training.pipeline import TrainConfig, TrainResult, run
from training.signals import PAIR_CAP, Signals, encode_signals
from training.synthetic.browsing import browsing_events
from training.synthetic.shop import SyntheticShop
from training.tune import param_variants

FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]
PARAMS = ModelParams(factors=8, iterations=4, threads=1)
runner = CliRunner()
FRONTEND = "frontend-key-0123456789"
F = {"X-API-Key": FRONTEND}
REF = pd.Timestamp("2025-01-31")


def _frame(*rows: tuple[str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [(u, i, pd.Timestamp(t), k) for u, i, t, k in rows],
        columns=["user_id", "item_id", "timestamp", "type"],
    )


def _train(
    purchases: Purchases,
    root: Path,
    params: ModelParams,
    events: pd.DataFrame | None,
    *,
    force: bool = True,
) -> TrainResult:
    config = TrainConfig(model_dir=root, params=params, tune_seconds=0, force=force)
    return run(config, purchases, signal_events=events)


# --- encoding and the per-stage matrix ------------------------------------------------------


def test_visitors_and_items_without_purchases_get_codes_after_the_known_ones() -> None:
    user_ids, item_ids = pd.Index(["u0", "u1"]), pd.Index(["i0", "i1", "i2"])
    frame = _frame(
        ("u1", "i2", "2025-01-03", "add_to_cart"),
        ("u0", "i0", "2025-01-02", "view"),
        ("stranger", "i0", "2025-01-01", "view"),
        ("u0", "new-item", "2025-01-01 00:00:01", "view"),
        ("u0", "i1", "2025-01-01", "purchase"),  # not a signal type: dropped, not counted
    )
    signals = encode_signals(frame, user_ids, item_ids)
    assert signals.user_codes.tolist() == [2, 0, 0, 1]  # sorted by time; stranger is code 2
    assert signals.item_codes.tolist() == [0, 3, 0, 2]  # new-item is code 3
    assert signals.kind.tolist() == [0, 0, 0, 1]
    assert signals.new_users.tolist() == ["stranger"]
    assert signals.new_items.tolist() == ["new-item"]
    assert signals.summary() == {
        "view": 3,
        "add_to_cart": 1,
        "ignored_no_purchases": 0,
        "until": "2025-01-03T00:00:00",
        "users": 3,
        "items": 3,
        "users_without_purchases": 1,
        "items_without_purchases": 1,
    }
    # the rule before every visitor counted: those two views are ignored, and counted
    buyers = signals.purchasers_only()
    assert buyers.user_codes.tolist() == [0, 1]
    assert buyers.summary()["ignored_no_purchases"] == 2
    assert buyers.ignored == (2, 0)
    # a model with view weight 0 keeps neither the views nor their ignored count
    carts = buyers.only((0.0, 0.3))
    assert carts.summary()["view"] == 0
    assert carts.summary()["ignored_no_purchases"] == 0
    assert carts.kind.tolist() == [1]
    # chunks (as streamed from the database) give the same result as one frame
    chunked = encode_signals([frame.iloc[:2], frame.iloc[2:]], user_ids, item_ids)
    assert chunked.user_codes.tolist() == signals.user_codes.tolist()
    assert chunked.item_codes.tolist() == signals.item_codes.tolist()
    assert chunked.ts.tolist() == signals.ts.tolist()
    assert chunked.purchasers_only().ignored == (2, 0)
    # one id in several chunks keeps one code
    again = encode_signals([frame.iloc[2:3], frame.iloc[2:3]], user_ids, item_ids)
    assert again.user_codes.tolist() == [2, 2]
    assert len(encode_signals([], user_ids, item_ids)) == 0


def test_matrix_weighs_decays_caps_and_stops_at_the_reference_time() -> None:
    user_ids, item_ids = pd.Index(["u0", "u1", "u2"]), pd.Index(["i0", "i1", "i2"])
    day = pd.Timedelta(days=1)
    frame = _frame(
        ("u0", "i0", str(REF - 60 * day), "view"),  # one half-life parameter old: x exp(-1)
        *[("u0", "i1", str(REF - day * 0), "add_to_cart")] * 5,  # 5 x 0.3 capped at 1
        ("u1", "i2", str(REF + day), "view"),  # after the reference time: not seen
        ("u2", "i2", str(REF), "view"),  # u2 has no row in this stage
    )
    signals = encode_signals(frame, user_ids, item_ids)
    user_codes = np.array([0, 1], dtype=np.int64)  # codes of the stage's rows
    item_codes = np.array([0, 1, 2], dtype=np.int64)
    m = signals.matrix(user_codes, item_codes, REF, (0.1, 0.3), 60.0)
    assert m is not None
    assert m.shape == (2, 3)
    dense = m.toarray()
    assert dense[0, 0] == pytest.approx(0.1 * np.exp(-1.0), rel=1e-5)
    assert dense[0, 1] == pytest.approx(PAIR_CAP)
    assert dense[1].sum() == 0
    assert m.nnz == 2
    # one day later the view of u1 counts
    later = signals.matrix(user_codes, item_codes, REF + day, (0.1, 0.3), 60.0)
    assert later is not None
    assert later[1, 2] > 0
    assert signals.matrix(user_codes, item_codes, REF, (0.0, 0.0), 60.0) is None
    assert Signals.empty().matrix(user_codes, item_codes, REF, (0.1, 0.3), 60.0) is None


def test_signals_fit_a_second_als_and_leave_the_first_alone(tiny_purchases: Purchases) -> None:
    frame, ids = encode(tiny_purchases.frame)
    cutoff = temporal_split(frame, 30).cutoff
    views = frame[["user", "item", "timestamp"]].assign(
        user_id=ids.users[frame["user"]], item_id=ids.items[frame["item"]], type="view"
    )
    signals = encode_signals(views, ids.users, ids.items)
    off = dataclasses.replace(PARAMS, view_weight=0.0, add_to_cart_weight=0.0)
    plain = fit_stage(frame, cutoff, off, ids)
    zero = fit_stage(frame, cutoff, off, ids, signals=signals)
    weighted = fit_stage(frame, cutoff, PARAMS, ids, signals=signals)
    assert plain.signal_item_factors is None
    assert zero.signal_item_factors is not None
    assert weighted.signal_item_factors is not None
    # the second ALS without any signal is the first one
    np.testing.assert_array_equal(plain.item_factors, zero.signal_item_factors)
    assert zero.signal_pairs == 0
    assert weighted.signal_pairs > 0
    assert not np.allclose(plain.item_factors, weighted.signal_item_factors)
    # the purchase-only ALS, history, popularity and trending are untouched by signals
    np.testing.assert_array_equal(plain.item_factors, weighted.item_factors)
    assert (weighted.counts != plain.counts).nnz == 0
    np.testing.assert_array_equal(weighted.popularity, plain.popularity)


# --- the pipeline -----------------------------------------------------------------------------


def test_signals_inside_the_test_window_never_reach_the_scored_stages(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    """Browsing after the test cut-off changes the served model but not one evaluation figure."""
    frame = tiny_purchases.frame
    cutoff = temporal_split(frame, 30).cutoff
    late = frame[frame["timestamp"] > cutoff]
    # views of exactly what the test users go on to buy: a leak would lift every metric
    leak = late[["user_id", "item_id", "timestamp"]].assign(type="view")
    leak["timestamp"] = leak["timestamp"] - pd.Timedelta(minutes=1)
    plain = _train(tiny_purchases, tmp_path / "plain", PARAMS, None)
    leaky = _train(tiny_purchases, tmp_path / "leaky", PARAMS, leak)
    for figures, unleaked in ((leaky.metrics, plain.metrics), (leaky.validation, plain.validation)):
        for protocol, table in unleaked.items():
            for name, values in table.items():
                assert figures[protocol][name] == values, (protocol, name)
            # no signal before the cut-off: the second ALS is the first one
            assert figures[protocol]["als_signals"] == table["als"]
    assert plain.manifest.signals is None
    assert leaky.manifest.signals is not None
    assert leaky.manifest.signals.view == len(leak)
    assert leaky.manifest.signals.pairs > 0  # the serving stage did use them
    served_plain = load_artifact(plain.path).arrays
    served_leaky = load_artifact(leaky.path).arrays
    assert "signal_item_factors" not in served_plain
    np.testing.assert_array_equal(served_plain["item_factors"], served_leaky["item_factors"])
    assert not np.allclose(served_plain["item_factors"], served_leaky["signal_item_factors"])


def test_browsing_lifts_recommendations_of_new_products(
    small_shop: SyntheticShop, small_purchases: Purchases, tmp_path: Path
) -> None:
    """On a shop whose customers browse their taste, views make ALS better at novel items."""
    events = browsing_events(small_shop, research_share=0.0)
    off = dataclasses.replace(PARAMS, factors=32, view_weight=0.0, add_to_cart_weight=0.0)
    on = dataclasses.replace(off, view_weight=0.1, add_to_cart_weight=0.3)
    without = _train(small_purchases, tmp_path / "off", off, None)
    with_signals = _train(small_purchases, tmp_path / "on", on, events)
    ndcg = "ndcg@10"
    before = with_signals.metrics["novel"]["als"][ndcg]
    after = with_signals.metrics["novel"]["als_signals"][ndcg]
    assert after > before * 1.2, (before, after)
    assert with_signals.metrics["novel"]["blend"][ndcg] > without.metrics["novel"]["blend"][ndcg]
    # recommendations that may repeat purchases keep the purchase-only ALS: not one figure moves
    assert with_signals.metrics["all"]["blend"] == without.metrics["all"]["blend"]
    assert with_signals.manifest.recipes["novel"].weights.get("als_signals")
    assert with_signals.manifest.signals is not None
    assert with_signals.manifest.signals.weights == {"view": 0.1, "add_to_cart": 0.3}
    assert with_signals.manifest.params["view_weight"] == 0.1


def test_tuning_tries_the_signals_weighted_up_and_down() -> None:
    base = ModelParams()
    plain = param_variants(base)
    with_signals = param_variants(base, with_signals=True)
    assert all(p.signal_weights == base.signal_weights for p in plain)
    views = sorted(p.view_weight for p in with_signals if p.view_weight != base.view_weight)
    assert views == [round(base.view_weight / 3, 4), round(3 * base.view_weight, 4)]
    capped = param_variants(ModelParams(view_weight=0.5, add_to_cart_weight=0.9), with_signals=True)
    assert max(p.add_to_cart_weight for p in capped) == 1.0


def test_models_trained_before_signals_existed_read_as_purchase_only() -> None:
    old = {k: v for k, v in ModelParams().to_dict().items() if not k.endswith("_weight")}
    assert ModelParams.from_dict(old).signal_weights == (0.0, 0.0)
    assert ModelParams.from_dict(ModelParams().to_dict()) == ModelParams()
    with pytest.raises(ValueError, match="view_weight"):
        ModelParams(view_weight=1.5)


# --- from the service's database, through the API ----------------------------------------------


def _post(client: TestClient, frame: pd.DataFrame, kind: str | None = None) -> None:
    rows = []
    for r in frame.itertuples(index=False):
        event = {
            "user_id": r.user_id,
            "item_id": r.item_id,
            "type": kind or r.type,
            "timestamp": pd.Timestamp(r.timestamp).tz_localize("UTC").isoformat(),
        }
        if kind == "purchase":
            event["order_id"] = r.order_id
        rows.append(event)
    for start in range(0, len(rows), 1000):
        response = client.post("/v1/events", json={"events": rows[start : start + 1000]}, headers=F)
        assert response.status_code == 200, response.text


def test_training_reads_the_views_and_carts_the_api_ingested(
    tiny_shop: SyntheticShop, small_model_root: Path, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        model_dir=small_model_root,
        database_url=database_url,
        frontend_keys=[FRONTEND],
        access_log=False,
    )
    events = browsing_events(tiny_shop)
    with TestClient(create_app(settings)) as client:
        _post(client, tiny_shop.purchases, "purchase")
        _post(client, events)
        _post(client, tiny_shop.events)  # new users: most without a purchase, used all the same
    chunks = list(load_database_signals(database_url, ["view", "add_to_cart"], chunk_rows=5000))
    assert len(chunks) > 1
    assert max(len(c) for c in chunks) <= 5000
    everything = pd.concat([events, tiny_shop.events], ignore_index=True)
    browsing = everything[everything["type"] != "purchase"]
    assert sum(len(c) for c in chunks) == len(browsing)
    # what training uses: every view and add-to-cart, of buyers and of visitors who never bought
    bought = pd.concat([tiny_shop.purchases, everything[everything["type"] == "purchase"]])
    usable = browsing
    browsers = set(browsing["user_id"]) - set(bought["user_id"])

    models = tmp_path / "models"
    command = ["train", "--database-url", database_url, "--model-dir", str(models), *FAST]
    result = runner.invoke(app, [*command, "--json"])
    assert result.exit_code == 0, result.stderr
    manifest = load_artifact(Path(json.loads(result.stdout)["model_path"])).manifest
    used = manifest.signals
    assert used is not None
    assert used.view == (usable["type"] == "view").sum()
    assert used.add_to_cart == (usable["type"] == "add_to_cart").sum()
    assert used.ignored_no_purchases == 0
    assert used.every_visitor
    assert used.users_without_purchases == len(browsers) > 0
    assert used.weights == {"view": 0.1, "add_to_cart": 0.3}
    assert "weaker signals" in result.stderr
    assert manifest.recipes["novel"].weights.get("als_signals")

    # the service serves the model with both factor sets: known users and sessions, both protocols
    serving = Settings(
        model_dir=models, database_url=database_url, frontend_keys=[FRONTEND], access_log=False
    )
    known = str(tiny_shop.purchases["user_id"].iloc[0])
    visitor = "visitor-after-training"
    with TestClient(create_app(serving)) as client:
        described = client.get("/v1/model", headers=F).json()
        assert described["signals"]["view"] == used.view
        viewed = tiny_shop.purchases["item_id"].drop_duplicates().head(3)
        views = [{"user_id": visitor, "type": "view", "item_id": str(i)} for i in viewed]
        assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
        for user, source in ((known, "model"), (visitor, "session")):
            for exclude in ("true", "false"):
                r = client.get(
                    f"/v1/users/{user}/recommendations",
                    params={"exclude_purchased": exclude},
                    headers=F,
                )
                assert r.status_code == 200, r.text
                assert r.json()["source"] == source

    off = ["--view-weight", "0", "--add-to-cart-weight", "0", "--json"]
    result = runner.invoke(app, [*command, *off])
    # published, but refused by the gate (exit 3): the current model learnt from the signals
    assert result.exit_code == 3, result.stderr
    assert "learnt from no view or add-to-cart" in result.stderr
    manifest = load_artifact(Path(json.loads(result.stdout)["model_path"])).manifest
    # read only for the gate, which refits the current model (it learnt from them)
    assert manifest.signals is None
    assert (
        "signal_item_factors"
        not in load_artifact(Path(json.loads(result.stdout)["model_path"])).arrays
    )
    only_carts = ["--view-weight", "0", "--json"]
    result = runner.invoke(app, [*command, *only_carts])
    manifest = load_artifact(Path(json.loads(result.stdout)["model_path"])).manifest
    assert manifest.signals is not None
    assert manifest.signals.view == 0
    assert manifest.signals.add_to_cart == used.add_to_cart


def test_a_recipe_naming_missing_signals_is_served_without_them() -> None:
    from service.recommend.serving import _servable
    from service.scoring import Recipe, Scorer

    scorer = Scorer(
        item_factors=np.ones((3, 2), dtype=np.float32),
        user_factors=np.ones((1, 2), dtype=np.float32),
        history_counts=sp.csr_matrix((1, 3), dtype=np.float32),
        history_age_days=sp.csr_matrix((1, 3), dtype=np.float32),
        popularity=np.ones(3),
        trending=np.ones(3),
    )
    recipe = Recipe(weights={"als_signals": 1.0, "trending": 0.5})
    assert _servable(recipe, scorer).weights == {"trending": 0.5}


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--view-weight", "2"),
        ("--view-weight", "-1"),
        ("--view-weight", "nan"),
        ("--add-to-cart-weight", "1.5"),
        ("--add-to-cart-weight", "inf"),
    ],
)
def test_a_weight_out_of_range_is_one_line_and_exit_2(
    tmp_path: Path, option: str, value: str
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(
        app, ["train", "--database-url", url, "--model-dir", str(tmp_path), option, value]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"recoffer: error: {option} must be between 0 and 1 (a purchase is 1), not {float(value)}"
    ]


def test_weights_without_a_database_are_said_to_change_nothing(
    tmp_path: Path, tiny_shop: SyntheticShop
) -> None:
    data = tmp_path / "purchases.csv"
    tiny_shop.purchases.to_csv(data, index=False)
    command = ["train", "--data", str(data), "--model-dir", str(tmp_path / "m"), *FAST]
    result = runner.invoke(app, [*command, "--view-weight", "0.5"])
    assert result.exit_code == 0, result.stderr
    assert "without it they change nothing" in result.stderr
    result = runner.invoke(app, command)
    assert "change nothing" not in result.stderr


# --- the quality gate against a current model ----------------------------------------------


def test_upgrading_to_signals_compares_like_for_like(
    small_purchases: Purchases, small_shop: SyntheticShop, tmp_path: Path
) -> None:
    """The current model is refitted the way the new one was fitted (validation stage from cold,
    test stage warm), so the purchase components come out identical and only the signals can
    make the two differ."""
    events = browsing_events(small_shop, research_share=0.0)
    root = tmp_path / "models"
    first = _train(small_purchases, root, PARAMS, None, force=False)
    assert first.promoted
    second = _train(small_purchases, root, PARAMS, events, force=False)
    assert second.gate.method == "refit"
    # the all recipe uses no signal: the current model scores exactly what the new one does
    assert second.gate.current["all"] == second.gate.new["all"]
    assert second.gate.new["novel"] > second.gate.current["novel"]
    assert second.promoted, second.gate.reasons
    # other weights: the same purchase components again
    other = dataclasses.replace(PARAMS, view_weight=0.3)
    third = _train(small_purchases, root, other, events, force=False)
    assert third.gate.method == "refit"
    assert third.gate.current["all"] == third.gate.new["all"]
    # the same parameters on other threads: nothing to refit
    fourth = _train(small_purchases, root, dataclasses.replace(other, threads=2), events)
    assert fourth.gate.method == "same"


def test_the_gate_never_changes_the_new_model(
    tiny_purchases: Purchases, tiny_shop: SyntheticShop, tmp_path: Path
) -> None:
    """Refitting the current model for the gate leaves the new model's own factors alone."""
    events = browsing_events(tiny_shop)
    other = dataclasses.replace(PARAMS, view_weight=0.3)
    _train(tiny_purchases, tmp_path / "a", PARAMS, events)
    after_a_gate = _train(tiny_purchases, tmp_path / "a", other, events)
    alone = _train(tiny_purchases, tmp_path / "b", other, events)
    assert after_a_gate.gate.method == "refit"
    served = load_artifact(after_a_gate.path).arrays
    reference = load_artifact(alone.path).arrays
    for name in ("item_factors", "signal_item_factors", "signal_user_factors"):
        np.testing.assert_array_equal(served[name], reference[name])


def test_a_model_that_saw_later_browsing_is_refitted_not_scored_directly(
    small_purchases: Purchases, small_shop: SyntheticShop, tmp_path: Path
) -> None:
    """Its last purchase is before the new cut-off but its browsing is not: scoring it directly
    would reward it for the views that precede the test purchases."""
    events = browsing_events(small_shop)
    frame = small_purchases.frame
    early = frame[frame["timestamp"] <= frame["timestamp"].max() - pd.Timedelta(days=40)]
    older = Purchases(early.reset_index(drop=True), small_purchases.items, small_purchases.report)
    root = tmp_path / "models"
    first = _train(older, root, PARAMS, events)
    assert first.manifest.signals is not None
    assert first.manifest.signals.until is not None
    assert first.manifest.signals.until > first.manifest.reference_time
    second = _train(small_purchases, root, PARAMS, events, force=False)
    assert second.gate.method == "same"  # not "direct"


def test_types_with_weight_0_are_left_out_of_the_new_model(
    tiny_purchases: Purchases, tiny_shop: SyntheticShop, tmp_path: Path
) -> None:
    events = pd.concat(
        [browsing_events(tiny_shop), tiny_shop.events[tiny_shop.events["type"] != "purchase"]]
    )
    carts_only = dataclasses.replace(PARAMS, view_weight=0.0)
    result = _train(tiny_purchases, tmp_path / "m", carts_only, events)
    used = result.manifest.signals
    assert used is not None
    assert used.view == 0
    assert used.add_to_cart > 0
    known = events["user_id"].isin(tiny_purchases.frame["user_id"]) & events["item_id"].isin(
        tiny_purchases.frame["item_id"]
    )
    carts = events["type"] == "add_to_cart"
    # every visitor counts: the carts of users without purchases are used, not ignored
    assert used.add_to_cart == int(carts.sum())
    assert used.ignored_no_purchases == 0
    assert used.users_without_purchases == events.loc[carts & ~known, "user_id"].nunique() > 0
    # the rule before: only users and items with purchases, the others counted as ignored
    buyers = dataclasses.replace(carts_only, every_visitor=False)
    before = _train(tiny_purchases, tmp_path / "before", buyers, events).manifest.signals
    assert before is not None
    assert before.ignored_no_purchases == int((carts & ~known).sum())
    assert before.add_to_cart == int((carts & known).sum())
    assert not before.every_visitor
    # none at all: a purchase-only model, though the views were read for the gate
    nothing = dataclasses.replace(PARAMS, view_weight=0.0, add_to_cart_weight=0.0)
    plain = _train(tiny_purchases, tmp_path / "m", nothing, events)
    assert plain.manifest.signals is None
    assert plain.gate.method == "refit"


def test_a_current_model_with_unreadable_parameters_only_faces_popularity(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    first = _train(tiny_purchases, root, PARAMS, None)
    manifest_path = first.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["weighting"] = "bm42"
    manifest_path.write_text(json.dumps(manifest))
    second = _train(tiny_purchases, root, PARAMS, None, force=False)
    assert second.gate.method == "current_unreadable"
    assert second.promoted


def test_a_model_that_learnt_signals_is_not_replaced_blindly(
    tiny_purchases: Purchases, tiny_shop: SyntheticShop, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    _train(tiny_purchases, root, PARAMS, browsing_events(tiny_shop), force=False)
    plain = _train(tiny_purchases, root, PARAMS, None, force=False)
    assert plain.gate.method == "incomparable"
    assert not plain.promoted
    assert "learnt from views and add-to-carts" in plain.gate.reasons[0]


def test_browsing_after_the_last_purchase_reaches_the_served_model(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    frame = tiny_purchases.frame
    last = frame["timestamp"].max()
    pairs = frame.drop_duplicates(["user_id", "item_id"]).head(50)
    later = pairs[["user_id", "item_id"]].assign(
        timestamp=last + pd.Timedelta(hours=1), type="view"
    )
    result = _train(tiny_purchases, tmp_path / "m", PARAMS, later)
    assert result.manifest.signals is not None
    assert result.manifest.signals.view == 50
    assert result.manifest.signals.pairs == 50


def test_browsing_events_stay_in_the_past_and_in_taste(small_shop: SyntheticShop) -> None:
    events = browsing_events(small_shop, research_share=0.0, abandoned_cart_share=0.0)
    assert events["timestamp"].max() <= small_shop.now
    assert events["timestamp"].is_monotonic_increasing
    cluster_of_user = pd.Series(small_shop.user_cluster, index=small_shop.users["user_id"])
    cluster_of_item = pd.Series(small_shop.item_cluster, index=small_shop.items["item_id"])
    same = cluster_of_user[events["user_id"]].to_numpy() == cluster_of_item[events["item_id"]]
    assert same.mean() > 0.75
    # every line bought was viewed and carted before; no abandoned carts asked for
    carts = events[events["type"] == "add_to_cart"]
    assert len(carts) == len(small_shop.purchases)
    again = browsing_events(small_shop, research_share=0.0, abandoned_cart_share=0.0)
    pd.testing.assert_frame_equal(events, again)
    with pytest.raises(ValueError, match="research_share"):
        browsing_events(small_shop, research_share=2.0)
