"""Views and add-to-carts as weaker training signals: what they are worth, and what they cost.

Quality: synthetic shops (``--preset``, three shop seeds) get browsing events around their
orders (``training.synthetic.browsing_events``); the pipeline trains on the same purchases with
the signal weights of ``WEIGHTS`` and reports test NDCG@10 of ALS and of the blend under both
protocols (median over the seeds). Two browsing scenarios: taste views plus research views of
the bought items days before the order, and taste views only (no research).

Cost: the purchases and the browsing events of one shop are ingested into SQLite and PostgreSQL;
``recoffer train --database-url`` then runs with the default weights and with both weights 0
(signals not read), and the loading and fitting times are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import median, save, this_command
from benchmarks.harness import BACKENDS, fresh_database
from training.data.database import load_database_signals
from training.data.formats import purchases_from_frame
from training.models import ModelParams
from training.pipeline import TrainConfig, TrainResult, run
from training.synthetic.browsing import browsing_events
from training.synthetic.shop import generate_shop
from training.synthetic.spec import spec_for

WEIGHTS = ((0.0, 0.0), (0.05, 0.15), (0.1, 0.3), (0.3, 0.6), (1.0, 1.0))
DEFAULT = (ModelParams().view_weight, ModelParams().add_to_cart_weight)
SCENARIOS = {"taste and research views": 0.5, "taste views only": 0.0}
SEEDS = (42, 43, 44)
BATCH = 10_000


METRICS = ("all/blend", "novel/als", "novel/als_signals", "novel/blend")


def _figures(result: TrainResult) -> dict[str, float]:
    """Test NDCG@10 of the purchase-only ALS, the signals ALS and the blends."""
    out = {}
    for key in METRICS:
        protocol, name = key.split("/")
        table = result.metrics[protocol]
        out[key] = round(table.get(name, table["als"])["ndcg@10"], 4)
    for protocol, name in result.served.items():
        out[f"{protocol}/served"] = round(result.metrics[protocol][name]["ndcg@10"], 4)
    return out


def tuned(preset: str, seconds: float) -> dict[str, Any]:
    """Purchases only against the default weights, each tuned for ``seconds`` (one seed)."""
    shop = generate_shop(spec_for(preset))
    purchases = purchases_from_frame(shop.purchases, source=preset)
    events = browsing_events(shop, research_share=0.0)
    out: dict[str, Any] = {"preset": preset, "tune_seconds": seconds, "runs": {}}
    for label, signal_events in (("purchases only", None), ("default weights", events)):
        with tempfile.TemporaryDirectory() as models:
            config = TrainConfig(model_dir=Path(models), tune_seconds=seconds, force=True)
            result = run(config, purchases, signal_events=signal_events)
        out["runs"][label] = {
            "served": result.served,
            "ndcg": {
                p: round(result.metrics[p][n]["ndcg@10"], 4) for p, n in result.served.items()
            },
            "recipes": {p: r.to_dict() for p, r in result.manifest.recipes.items()},
            "params": {k: v for k, v in result.manifest.params.items() if "weight" in k},
            "seconds": result.timings["total"],
        }
        print(label, out["runs"][label]["ndcg"], flush=True)
    return out


def quality(preset: str) -> dict[str, Any]:
    rows: dict[str, dict[str, list[dict[str, float]]]] = {s: {} for s in SCENARIOS}
    counts: dict[str, list[int]] = {s: [] for s in SCENARIOS}
    for seed in SEEDS:
        shop = generate_shop(dataclasses.replace(spec_for(preset), seed=seed))
        purchases = purchases_from_frame(shop.purchases, source=f"{preset} seed {seed}")
        for scenario, research in SCENARIOS.items():
            events = browsing_events(shop, research_share=research, seed=seed)
            counts[scenario].append(len(events))
            for view, cart in WEIGHTS:
                params = ModelParams(view_weight=view, add_to_cart_weight=cart)
                with tempfile.TemporaryDirectory() as models:
                    config = TrainConfig(
                        model_dir=Path(models), params=params, tune_seconds=0, force=True
                    )
                    result = run(config, purchases, signal_events=events)
                key = f"{view:g}/{cart:g}"
                rows[scenario].setdefault(key, []).append(_figures(result))
                print(scenario, seed, key, _figures(result), flush=True)
    table = {
        scenario: {
            key: {m: median([r[m] for r in runs]) for m in runs[0]} for key, runs in by.items()
        }
        for scenario, by in rows.items()
    }
    return {
        "preset": preset,
        "seeds": list(SEEDS),
        "purchases": len(purchases.frame),
        "events": {s: int(median([float(c) for c in n])) for s, n in counts.items()},
        "median_ndcg": table,
    }


def _ingest(url: str, purchases: pd.DataFrame, events: pd.DataFrame) -> float:
    """Purchases and browsing events into a migrated database; returns the seconds it took."""
    from service.db import make_engine, migrate
    from service.tables import events as table

    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    rows = [
        {"user_id": u, "item_id": i, "type": "purchase", "ts": t, "order_id": o}
        for u, i, t, o in zip(
            purchases["user_id"],
            purchases["item_id"],
            purchases["timestamp"].dt.tz_localize(UTC).dt.to_pydatetime(),
            purchases["order_id"],
            strict=True,
        )
    ]
    rows += [
        {"user_id": u, "item_id": i, "type": k, "ts": t, "order_id": None}
        for u, i, k, t in zip(
            events["user_id"],
            events["item_id"],
            events["type"],
            events["timestamp"].dt.tz_localize(UTC).dt.to_pydatetime(),
            strict=True,
        )
    ]
    for row in rows:
        row["received_at"] = now
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, len(rows), BATCH):
            conn.execute(table.insert(), rows[start : start + BATCH])
    engine.dispose()
    return time.perf_counter() - started


def cost(preset: str, backend: str, url: str) -> dict[str, Any]:
    shop = generate_shop(spec_for(preset))
    events = browsing_events(shop)
    ingest = _ingest(url, shop.purchases, events)
    started = time.perf_counter()
    loaded = sum(len(chunk) for chunk in load_database_signals(url, ["view", "add_to_cart"]))
    read = time.perf_counter() - started
    runs = {}
    for view, cart in (DEFAULT, (0.0, 0.0)):
        params = ModelParams(view_weight=view, add_to_cart_weight=cart)
        with tempfile.TemporaryDirectory() as models:
            config = TrainConfig(
                model_dir=Path(models),
                database_url=url,
                params=params,
                tune_seconds=0,
                force=True,
            )
            result = run(config)
        runs[f"{view:g}/{cart:g}"] = {
            "timings": result.timings,
            "signals": None
            if result.manifest.signals is None
            else result.manifest.signals.model_dump(mode="json"),
            "ndcg": _figures(result),
        }
    return {
        "backend": backend,
        "preset": preset,
        "purchase_events": len(shop.purchases),
        "signal_events": loaded,
        "ingest_seconds": round(ingest, 2),
        "read_signals_seconds": round(read, 2),
        "read_rows_per_second": round(loaded / read),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", help="synthetic shop for the quality sweep")
    parser.add_argument("--cost-preset", default="demo", help="synthetic shop for the cost runs")
    parser.add_argument("--tune-seconds", type=float, default=60.0, help="budget of tuned runs")
    args = parser.parse_args()
    doc: dict[str, Any] = {
        "quality": quality(args.preset),
        "tuned": tuned(args.preset, args.tune_seconds),
        "cost": [],
    }
    for backend, name in zip(BACKENDS, ("SQLite", "PostgreSQL"), strict=True):
        with fresh_database(backend, "recoffer_signals") as url:
            if url is not None:
                doc["cost"].append(cost(args.cost_preset, name, url))
    save("signals", this_command(), doc)
    print(json.dumps(doc, indent=1))
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    q = doc["quality"]
    metrics = list(METRICS)
    out = [
        "## Views and add-to-carts as weaker training signals",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')}, "
        f"{doc['machine'].get('cpus')} CPUs. Command: `{doc['command']}`",
        "",
        f"Synthetic shop `{q['preset']}` ({q['purchases']:,} purchase lines), browsing events "
        "from `training.synthetic.browsing_events` around each order, no tuning. Test NDCG@10 "
        f"is the median over shop seeds {', '.join(map(str, q['seeds']))}; weights are "
        "view/add-to-cart, one purchase being 1 (0/0: the second ALS gets no signal, so it is "
        f"the first). Defaults: {DEFAULT[0]:g}/{DEFAULT[1]:g}. `als` is fitted on purchases "
        "only and `als_signals` on purchases plus the signals; the `all` blend starts from "
        "`als`, the `novel` blend from `als_signals`. These shops' browsing follows the same "
        "taste clusters as their purchases, so the gains show what the code can do with "
        "informative browsing, not what a given shop will see.",
        "",
    ]
    for scenario, table in q["median_ndcg"].items():
        out += [
            f"**{scenario}** ({q['events'][scenario]:,} events)",
            "",
            "| weights | " + " | ".join(m.replace("/", " ") for m in metrics) + " |",
            "|---|" + "---:|" * len(metrics),
        ]
        base = table["0/0"]
        for key, row in table.items():
            cells = []
            for m in metrics:
                change = "" if key == "0/0" else f" ({row[m] / base[m] - 1:+.0%})"
                cells.append(f"{row[m]:.4f}{change}")
            out.append(f"| {key} | " + " | ".join(cells) + " |")
        out.append("")
    t = doc["tuned"]
    out += [
        f"Tuned for {t['tune_seconds']:g} s (as `recoffer train` does by default), seed 42, taste "
        "views only: test NDCG@10 of what is served.",
        "",
        "| training input | all | novel | served novel recipe |",
        "|---|---:|---:|---|",
    ]
    for label, r in t["runs"].items():
        weights = r["recipes"]["novel"]["weights"]
        recipe = ", ".join(f"{k} {v:g}" for k, v in weights.items())
        out.append(f"| {label} | {r['ndcg']['all']:.4f} | {r['ndcg']['novel']:.4f} | {recipe} |")
    out += [
        "",
        "Training with `--database-url` on one shop whose purchases and browsing events are in "
        "the service's database (default weights against both weights 0, where the signals are "
        "not read at all):",
        "",
        "| backend | purchase events | signal events | read signals (s) | rows/s | "
        "load with / without (s) | total with / without (s) | pairs in ALS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    default_key = f"{DEFAULT[0]:g}/{DEFAULT[1]:g}"
    for c in doc["cost"]:
        on, off = c["runs"][default_key], c["runs"]["0/0"]
        out.append(
            f"| {c['backend']} | {c['purchase_events']:,} | {c['signal_events']:,} | "
            f"{c['read_signals_seconds']} | {c['read_rows_per_second']:,} | "
            f"{on['timings']['load']} / {off['timings']['load']} | "
            f"{on['timings']['total']} / {off['timings']['total']} | "
            f"{on['signals']['pairs']:,} |"
        )
    out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
