"""Every visitor and every product in the signals model: before and after, side by side.

Issue 14, item 4. Before: the ``als_signals`` fit had rows only for users and items with
purchases (views of a visitor who never bought, or of a product not sold yet, were ignored).
After (``ModelParams.every_visitor``, the default): they get rows too. One run trains three
models on the same purchases: purchases only, the signals of purchasers only (before), and every
visitor's signals (after), with the same parameters and no tuning (so the figures differ by the
rule alone).

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

from benchmarks.common import median, save, this_command
from training.data.formats import purchases_from_frame
from training.models import ModelParams
from training.pipeline import TrainConfig, TrainResult, run
from training.synthetic.browsing import every_visitor_events
from training.synthetic.shop import generate_shop
from training.synthetic.spec import spec_for

SEEDS = (42, 43, 44)
RUNS = ("purchases only", "purchasers' signals (before)", "every visitor (after)")
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
        signals = {
            RUNS[0]: (None, base),
            RUNS[1]: (log.events, dataclasses.replace(base, every_visitor=False)),
            RUNS[2]: (log.events, base),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", help="synthetic shop")
    parser.add_argument("--factors", type=int, default=64, help="ALS factors of every run")
    args = parser.parse_args()
    doc = {"quality": quality(args.preset, args.factors)}
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
        "Three models on the same purchases, same parameters "
        f"({q['factors']} factors, default weights, no tuning): purchases only; the signals of "
        "purchasers only (the rule before); every visitor's signals (now the default). "
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
        f"the same test users for all three models: {shop['test_users']['all']:,} under `all`, "
        f"{shop['test_users']['novel']:,} under `novel`; truth: their test purchases of items "
        "sold before the cut-off).",
        "",
    ]
    out += _table(q["median"], "test", METRICS)
    out += [
        "",
        "**With the products never sold before the cut-off in the truth** (same users; an item "
        "the model did not learn is never recommended). *shown*: share of the top-10 slots "
        "holding a product never sold before the cut-off; *hits* of *truth*: test purchases of "
        "such products found in the top 10.",
        "",
    ]
    out += _table(q["median"], "new", (*METRICS, "shown", "hits"))
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


def _table(
    median_of: dict[str, dict[str, float]], part: str, metrics: tuple[str, ...]
) -> list[str]:
    cells = [f"{p} {c} {m}" for p in ("all", "novel") for c in CANDIDATES for m in metrics]
    head = ["| model | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    rows = []
    for label in RUNS:
        values = median_of[label]
        row = []
        for p in ("all", "novel"):
            for c in CANDIDATES:
                for m in metrics:
                    v = values.get(f"{part}/{p}/{c}/{m}", 0.0)
                    if m == "hits":
                        row.append(f"{v:g} of {values.get(f'{part}/{p}/{c}/truth', 0.0):g}")
                    else:
                        row.append(f"{v:.4f}")
        rows.append(f"| {label} | " + " | ".join(row) + " |")
    return head + rows


if __name__ == "__main__":
    raise SystemExit(main())
