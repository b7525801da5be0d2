"""Every visitor and every product in the signals model: before and after, side by side.

Issue 14, item 4. Before: the ``als_signals`` fit had rows only for users and items with
purchases (views of a visitor who never bought, or of a product not sold yet, were ignored).
After (``ModelParams.every_visitor``, the default): they get rows too. One run trains five
models on the same purchases: purchases only, the signals of purchasers only (before), and every
visitor's signals (after), the last two with the default weights and with three times as much
(the variant tuning tries), all with the same other parameters and no tuning.

Data: a synthetic shop (``--preset``, three shop seeds) with
``training.synthetic.browsing.every_visitor_events``: customers' views around their orders,
visitors who never buy (one per customer), and 5 % of the catalogue launched 50 days before the
end and first sold in the last 30 days (the test window), viewed from their launch by the
customers and visitors of their taste cluster.

Figures (test split, the last 30 days): recall@10 and NDCG@10 under both protocols of the
purchase-only ``als``, of ``als_signals`` and of the blend, on the pipeline's evaluation (the same
test users for every model: users with a purchase before the cut-off; truth: their test
purchases of items sold before it), and the same with the products never sold before the
cut-off added to the truth (``training.pipeline.new_product_figures``): how often they are shown
in the top 10 and hit.

Public log: none reachable from this machine (PyPI, npm and Debian only; no package there
ships a RetailRocket, REES46, Taobao or similar events sample), so the synthetic shop alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.common import median, save, this_command
from training.data.formats import purchases_from_frame
from training.models import ModelParams
from training.pipeline import TrainConfig, TrainResult, run
from training.synthetic.browsing import every_visitor_events
from training.synthetic.shop import generate_shop
from training.synthetic.spec import spec_for

SEEDS = (42, 43, 44)
RUNS = (
    "purchases only",
    "purchasers' signals (before)",
    "every visitor (after)",
    "before, weights x3",
    "after, weights x3",
)
CANDIDATES = ("als", "als_signals", "blend")
METRICS = ("recall@10", "ndcg@10")
NEW = ("shown", "users_shown", "hits", "truth")


def _figures(result: TrainResult) -> dict[str, float]:
    """The figures of one run, flat: ``<table>/<protocol>/<candidate>/<metric>``."""
    out: dict[str, float] = {}
    for protocol, table in result.metrics.items():
        for name in CANDIDATES:
            row = table.get(name, table["als"])  # purchases only: no als_signals
            for m in METRICS:
                out[f"test/{protocol}/{name}/{m}"] = round(row[m], 4)
    for protocol, table in result.new_products.items():
        for name in CANDIDATES:
            row = table.get(name, table["als"])
            for m in (*METRICS, *NEW):
                out[f"new/{protocol}/{name}/{m}"] = round(row[m], 4)
    return out


def _users(result: TrainResult) -> dict[str, int]:
    return {p: int(t["als"]["users"]) for p, t in result.metrics.items()}


def quality(preset: str, factors: int) -> dict[str, Any]:
    per_run: dict[str, list[dict[str, float]]] = {r: [] for r in RUNS}
    facts: list[dict[str, Any]] = []
    base = ModelParams(factors=factors)
    for seed in SEEDS:
        shop = generate_shop(dataclasses.replace(spec_for(preset), seed=seed))
        log = every_visitor_events(shop, seed=seed)
        purchases = purchases_from_frame(log.purchases, source=f"{preset} seed {seed}")
        no_weights = dataclasses.replace(base, view_weight=0.0, add_to_cart_weight=0.0)
        tripled = dataclasses.replace(
            base,
            view_weight=round(3 * base.view_weight, 4),
            add_to_cart_weight=min(1.0, round(3 * base.add_to_cart_weight, 4)),
        )
        signals = {
            # the events are read but weigh nothing: a purchase-only model on the same truth
            RUNS[0]: (log.events, no_weights),
            RUNS[1]: (log.events, dataclasses.replace(base, every_visitor=False)),
            RUNS[2]: (log.events, base),
            # the weights tuning also tries (training.tune.param_variants): three times as much
            RUNS[3]: (log.events, dataclasses.replace(tripled, every_visitor=False)),
            RUNS[4]: (log.events, tripled),
        }
        users = {}
        manifests = {}
        for label, (events, params) in signals.items():
            with tempfile.TemporaryDirectory() as models:
                config = TrainConfig(
                    model_dir=Path(models), params=params, tune_seconds=0, force=True
                )
                result = run(config, purchases, signal_events=events)
            per_run[label].append(_figures(result))
            users[label] = _users(result)
            info = result.manifest.signals
            manifests[label] = None if info is None else info.model_dump(mode="json")
            print(seed, label, json.dumps(_figures(result)), flush=True)
        # the same test users for every run: the evaluation is on purchases only
        assert len({json.dumps(u, sort_keys=True) for u in users.values()}) == 1, users
        facts.append(
            {
                "seed": seed,
                "purchases": len(log.purchases),
                "events": len(log.events),
                "browsers": len(log.browsers),
                "browser_events": int(log.events["user_id"].isin(log.browsers).sum()),
                "new_products": len(log.new_products),
                "new_product_events_before_first_sale": int(
                    (
                        log.events["item_id"].isin(log.new_products)
                        & (log.events["timestamp"] < log.first_sale)
                    ).sum()
                ),
                "test_users": users[RUNS[0]],
                "signals": manifests,
            }
        )
    keys = list(per_run[RUNS[2]][0])
    table = {
        label: {k: median([r.get(k, 0.0) for r in rows]) for k in keys}
        for label, rows in per_run.items()
    }
    return {
        "preset": preset,
        "factors": factors,
        "seeds": list(SEEDS),
        "shops": facts,
        "median": table,
        "public_log": None,
    }


def browsers(preset: str, factors: int, seed: int = SEEDS[0]) -> dict[str, Any]:
    """Visitors with no purchase before the test cut-off who buy in the test window: served
    from their learnt rows of the signals fit (as known users would be), or by the service's
    session fold-in of their last 50 events (what they get: they are not rows of the served
    model), or by popularity (no events at all).

    One model, fitted on everything up to the cut-off with every visitor; the service's
    ``Recommender`` over its arrays (constants from a pipeline run on the same data) does the
    fold-in. Recipes: ``als_signals`` alone and the default ``novel`` blend (for a user with
    no purchase, all and novel are the same).
    """
    from service.activity.records import Activity
    from service.artifact import load_artifact
    from service.recommend.recommender import Recommender
    from service.recommend.serving import prepare
    from service.scoring import Recipe
    from training.encode import encode
    from training.evaluate import rank_metrics, temporal_split, truth_of
    from training.models import default_candidates, fit_stage
    from training.publish import artifact_arrays
    from training.signals import encode_signals

    shop = generate_shop(dataclasses.replace(spec_for(preset), seed=seed))
    log = every_visitor_events(shop, seed=seed)
    purchases = purchases_from_frame(log.purchases, source=f"{preset} seed {seed}")
    coded, ids = encode(purchases.frame)
    split = temporal_split(coded, 30.0)
    params = ModelParams(factors=factors)
    before = log.events[log.events["timestamp"] <= split.cutoff]
    signals = encode_signals(before, ids.users, ids.items)
    stage = fit_stage(split.train, split.cutoff, params, ids, signals=signals)
    with tempfile.TemporaryDirectory() as models:
        trained = run(
            TrainConfig(model_dir=Path(models), params=params, tune_seconds=0, force=True),
            purchases_from_frame(
                log.purchases[log.purchases["timestamp"] <= split.cutoff], source="cut"
            ),
            signal_events=before,
        )
        artifact = load_artifact(trained.path)
    artifact = dataclasses.replace(artifact, arrays=artifact_arrays(stage, purchases))
    recommender = Recommender(prepare(artifact))
    model = recommender.model
    visitors = stage.extra_user_ids
    test = split.test
    buyers = pd.Index(ids.users[test["user"].unique()])
    target = visitors.intersection(buyers)
    rows = np.asarray(visitors.get_indexer(target), dtype=np.int64)
    items = pd.Index(model.item_labels)
    test_ids = ids.users[test["user"].to_numpy()]
    truth = truth_of(
        np.arange(len(target)),
        pd.Index(target),
        items,
        test_ids,
        ids.items[test["item"].to_numpy()],
    )
    empty = sp.csr_matrix((len(target), len(items)), dtype=np.float32)
    assert stage.signal_user_factors is not None
    learnt = stage.signal_user_factors[len(stage.user_codes) :][rows]
    zeros = np.zeros((len(target), model.scorer.item_factors.shape[1]), dtype=np.float32)
    recent: dict[str, list[Activity]] = {}
    for u, i, k, t in before[before["user_id"].isin(target)].itertuples(index=False):
        recent.setdefault(u, []).append(Activity(item_id=i, type=k, ts=t.tz_localize("UTC")))
    now = split.cutoff.tz_localize("UTC").to_pydatetime()
    blend = default_candidates(with_ease=model.scorer.ease_b is not None, with_signals=True)
    out: dict[str, Any] = {"seed": seed, "visitors": len(visitors), "buyers": len(target)}
    for name, recipe in (
        ("als_signals", Recipe(weights={"als_signals": 1.0})),
        ("novel blend", blend["blend"]["novel"]),
    ):
        model.recipes["novel"] = recipe
        recommender = Recommender(model)
        learnt_scores = model.scorer.score_histories(
            empty, empty, zeros, recipe, signal_vectors=learnt
        )
        session = np.stack(
            [recommender._session_scores(recent[u][-50:], "novel", now) for u in target]
        )
        popular = np.tile(model.scorer.popularity_z, (len(target), 1))
        for how, scores in (
            ("learnt rows", learnt_scores),
            ("session fold-in", session),
            ("popularity", popular),
        ):
            values = rank_metrics(scores, truth, empty, "novel")
            out[f"{name}/{how}"] = {m: round(values[m], 4) for m in ("recall", "ndcg")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", help="synthetic shop")
    parser.add_argument("--factors", type=int, default=64, help="ALS factors of every run")
    args = parser.parse_args()
    doc = {
        "quality": quality(args.preset, args.factors),
        "browsers": browsers(args.preset, args.factors),
    }
    save("signals_every_visitor", this_command(), doc)
    print(json.dumps(doc, indent=1))
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    q = doc["quality"]
    shop = q["shops"][0]
    after = shop["signals"][RUNS[2]] or {}
    before = shop["signals"][RUNS[1]] or {}
    out = [
        "## Every visitor and every product in the signals model (issue 14)",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')}, "
        f"{doc['machine'].get('cpus')} CPUs. Command: `{doc['command']}`",
        "",
        f"Synthetic shop `{q['preset']}` with `training.synthetic.browsing.every_visitor_events` "
        f"(seed {shop['seed']}: {shop['purchases']:,} purchase lines, {shop['events']:,} views "
        f"and add-to-carts, {shop['browsers']:,} visitors who never buy with "
        f"{shop['browser_events']:,} of them, {shop['new_products']} products launched 50 days "
        "before the end and first sold in the test window, viewed "
        f"{shop['new_product_events_before_first_sale']:,} times before their first sale). "
        "Five models on the same purchases, same parameters "
        f"({q['factors']} factors, no tuning): purchases only; the signals of purchasers only "
        "(the rule before) and every visitor's signals (now the default), with the default "
        "weights (view 0.1, add-to-cart 0.3) and with three times as much (0.3, 0.9: the "
        "variant tuning tries). "
        f"Medians over shop seeds {', '.join(map(str, q['seeds']))}.",
        "",
        "Signals used by the serving fit, seed "
        f"{shop['seed']}: before {before.get('view', 0):,} views and "
        f"{before.get('add_to_cart', 0):,} add-to-carts ({before.get('ignored_no_purchases', 0):,} "
        f"ignored); after {after.get('view', 0):,} and {after.get('add_to_cart', 0):,} (0 "
        f"ignored), naming {after.get('users_without_purchases', 0):,} users and "
        f"{after.get('items_without_purchases', 0):,} items without a purchase.",
        "",
        "**Test split, evaluated on purchases only** (the figures the gate and the manifest use; "
        f"the same test users for all five models: {shop['test_users']['all']:,} under `all`, "
        f"{shop['test_users']['novel']:,} under `novel`; truth: their test purchases of items "
        "sold before the cut-off).",
        "",
    ]
    out += _table(q["median"], "test", extra=False)
    out += [
        "",
        "**With the products never sold before the cut-off in the truth** (same users; an item "
        "the model did not learn is never recommended). *shown*: share of the top-10 slots "
        "holding a product never sold before the cut-off; *hits* of *truth*: test purchases of "
        "such products found in the top 10.",
        "",
    ]
    out += _table(q["median"], "new", extra=True)
    out += ["", *_browsers(doc["browsers"])]
    out += [
        "",
        "Public browsing log: none could be measured. Only the PyPI, npm and Debian registries "
        "are reachable from the machine, and no package there ships an e-commerce events "
        "sample with views (RetailRocket, REES46, Taobao UserBehavior and the like are "
        "downloaded from their hosts at run time); these figures are the synthetic shop's "
        "alone, whose browsing follows its purchases' taste clusters by construction.",
        "",
    ]
    return out


def _table(median_of: dict[str, dict[str, float]], part: str, extra: bool) -> list[str]:
    """One row per protocol and candidate, one column per model: recall@10 / NDCG@10 (and,
    with ``extra``, the share of slots holding a product never sold and its hits)."""
    what = "recall / NDCG" + (" / shown / hits of truth" if extra else "")
    head = [
        "| protocol, candidate | " + " | ".join(f"{r}: {what}" for r in RUNS) + " |",
        "|---|" + "---:|" * len(RUNS),
    ]
    rows = []
    for p in ("all", "novel"):
        for c in CANDIDATES:
            cells = []
            for label in RUNS:
                v = median_of[label]
                key = f"{part}/{p}/{c}"
                cell = f"{v.get(key + '/recall@10', 0.0):.4f} / {v.get(key + '/ndcg@10', 0.0):.4f}"
                if extra:
                    cell += (
                        f" / {v.get(key + '/shown', 0.0):.2%} / "
                        f"{v.get(key + '/hits', 0.0):g} of {v.get(key + '/truth', 0.0):g}"
                    )
                cells.append(cell)
            rows.append(f"| {p}, {c} | " + " | ".join(cells) + " |")
    return head + rows


def _browsers(b: dict[str, Any]) -> list[str]:
    out = [
        f"**Visitors served from their rows or by the session fold-in** (seed {b['seed']}): "
        f"{b['buyers']} of the {b['visitors']:,} users without a purchase before the test "
        "cut-off (rows of the signals fit) buy in the test window. Their test purchases "
        "scored three ways on one model: from their learnt rows (as if the served model had "
        "them as users), by the service's session fold-in of their last 50 events before the "
        "cut-off (what they get: they are not users of the served model), by popularity.",
        "",
        "| recipe | learnt rows: recall / NDCG | session fold-in | popularity |",
        "|---|---:|---:|---:|",
    ]
    for recipe in ("als_signals", "novel blend"):
        cells = []
        for how in ("learnt rows", "session fold-in", "popularity"):
            v = b[f"{recipe}/{how}"]
            cells.append(f"{v['recall']:.4f} / {v['ndcg']:.4f}")
        out.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
