"""Products the model does not know: how well their vectors place them, and what they cost.

Quality, on a synthetic shop (``--preset``, three shop seeds): a share of the catalogue is held
out of training as "new" (``NEW_SHARE``: every purchase of those items before the cut-off is
removed), the model trains on the purchases before the cut-off (30 days before the end), and the
new items arrive at the cut-off with their category. The first ``OBSERVE_DAYS`` after it are what
the service sees before a retrain: purchases of new items and the browsing views of the shop's
customers (``training.synthetic.browsing_events``, taste views only: no research view of the
very item bought later). The rest of the window is the truth: a known user's purchases of new
items they had not touched while observed. For each such user the two new-arrival slots are
filled by

- ``random``: two new items drawn at random (the exact expectation, not a draw),
- ``popular since arrival``: the most visited new items while observed (what a visitor nobody
  knows gets),
- ``content``: the user's factors against the content vectors (category only: the synthetic
  catalogue has no attribute that carries taste),
- ``fold-in replacing content``: the fold-in's own vector from the observed events where
  known users touched the item, the content vector otherwise,
- ``content, then fold-in``: the served vector alone: the direction turned from the content
  vector's towards the fold-in's as known users come (``FOLD_IN_PRIOR_USERS``), at the
  content vector's length,
- ``content and popularity since arrival``: the served ranking with the content vectors only,
- ``served``: ``ArrivalIndex.pick`` itself: that vector's standardised match with the user
  plus the standardised log popularity since arrival,

and we count how often the slots hold an item the user buys (hit rate@2) and the share of their
new purchases they hold (recall@2).

Cost, in-process on the same model (no HTTP, to see the few microseconds): ``Recommendations``'
known-user lists with and without the new-arrivals index, interleaved call by call in one run,
p50 and p99; then the same with a tenth of the catalogue out of stock. And the builds: the
content vectors of the whole catalogue, one catalogue change, the fold-in refresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import median, save, this_command
from service.activity.records import ItemRecord
from service.activity.store import ActivityStore
from service.artifact import ModelStore, load_artifact
from service.metrics import Metrics
from service.recommend.arrivals import NewArrivals
from service.recommend.recommender import Query, Recommender
from service.recommend.service import Recommendations
from service.recommend.serving import prepare
from training.data.formats import purchases_from_frame
from training.models import ModelParams
from training.pipeline import TrainConfig, run
from training.synthetic.browsing import browsing_events
from training.synthetic.shop import SyntheticShop, generate_shop
from training.synthetic.spec import spec_for

NEW_SHARE = 0.1
TEST_DAYS = 30
OBSERVE_DAYS = 7
SLOTS = 2
SEEDS = (42, 43, 44)
HTTP_TURNS = 3  # servers of each kind, alternating
CALLS = int(os.environ.get("NEW_ARRIVALS_CALLS", "20000"))  # of each kind
FOLDED = "fold-in replacing content"
VECTOR = "content, then fold-in (the served vector alone)"
SERVED = "served: the vector and popularity since arrival"
CONTENT_POPULAR = "content and popularity since arrival"
VARIANTS = ("random", "popular since arrival", "content", FOLDED, VECTOR, CONTENT_POPULAR, SERVED)


@dataclasses.dataclass
class _Holder:
    current: Recommender | None


class _Events:
    """The observed window's events, as ``Repository.item_event_counts`` would return them."""

    def __init__(self, frame: pd.DataFrame) -> None:
        counts = frame.groupby(["item_id", "user_id", "type"]).size()
        self.rows = [(str(i), str(u), str(t), int(n)) for (i, u, t), n in counts.items()]

    def item_event_counts(self, item_ids: Any, since: datetime) -> list[tuple[str, str, str, int]]:
        wanted = set(item_ids)
        return [r for r in self.rows if r[0] in wanted]


def _record(
    item_id: str, category: str | None, moment: datetime, *, in_stock: bool = True
) -> ItemRecord:
    return ItemRecord(item_id, None, category, in_stock, moment, created_at=moment)


@dataclasses.dataclass
class _World:
    shop: SyntheticShop
    recommender: Recommender
    activity: ActivityStore
    arrivals: NewArrivals
    new_items: list[str]
    cutoff: datetime
    observed: pd.DataFrame
    truth: pd.DataFrame


def _world(preset: str, seed: int, models: Path) -> _World:
    shop = generate_shop(dataclasses.replace(spec_for(preset), seed=seed))
    rng = np.random.default_rng(seed)
    items = shop.items["item_id"].to_numpy()
    new_items = sorted(rng.choice(items, size=int(NEW_SHARE * len(items)), replace=False).tolist())
    is_new = set(new_items)
    meta = shop.items[["item_id", "category", "name"]]
    frame = shop.purchases.merge(meta, on="item_id", how="left")
    end = frame["timestamp"].max()
    cutoff = end - pd.Timedelta(days=TEST_DAYS)
    train = frame[(frame["timestamp"] <= cutoff) & ~frame["item_id"].isin(is_new)]
    params = ModelParams(factors=32, iterations=12, threads=2)
    run(
        TrainConfig(model_dir=models, params=params, force=True),
        purchases=purchases_from_frame(train, source=f"{preset} seed {seed}"),
    )
    artifact = load_artifact(ModelStore(models).current_path(), mmap=False)  # type: ignore[arg-type]
    recommender = Recommender(prepare(artifact))
    moment = cutoff.to_pydatetime().replace(tzinfo=UTC)
    watch = cutoff + pd.Timedelta(days=OBSERVE_DAYS)
    after = frame[frame["timestamp"] > cutoff]
    views = browsing_events(shop, research_share=0.0, seed=seed)
    bought = after.assign(type="purchase")[["user_id", "item_id", "type", "timestamp"]]
    seen = pd.concat([bought, views[views["timestamp"] > cutoff]])
    observed = seen[(seen["timestamp"] <= watch) & seen["item_id"].isin(is_new)]
    truth = after[(after["timestamp"] > watch) & after["item_id"].isin(is_new)]
    activity = ActivityStore()
    category = dict(zip(shop.items["item_id"], shop.items["category"], strict=True))
    activity.update_catalogue([_record(i, category[i], moment) for i in new_items])
    arrivals = NewArrivals(
        _Holder(recommender),
        activity,
        lambda: moment,
        days=TEST_DAYS,
        slots=SLOTS,
        events=_Events(observed),
    )
    return _World(shop, recommender, activity, arrivals, new_items, moment, observed, truth)


def _quality(world: _World) -> dict[str, Any]:
    """Hit rate@2 and recall@2 of the new-arrival slots per variant, for known users."""
    m = world.recommender.model
    arrivals = world.arrivals
    arrivals.rebuild()  # content vectors, fold-in from the observed window
    index = arrivals.index
    assert index is not None
    folded = index.vectors.copy()
    replaced = np.stack([arrivals._content[i] for i in index.item_ids])
    for row, item_id in enumerate(index.item_ids):
        if item_id in arrivals._folded:
            replaced[row] = arrivals._folded[item_id][0]
    arrivals.events = None
    arrivals.rebuild()  # content only
    content = arrivals.index
    assert content is not None
    assert content.item_ids == index.item_ids
    ids = index.item_ids
    # the served ranking over the content vectors, with the observed popularity
    content_popular = dataclasses.replace(
        content, popularity=index.popularity, popularity_z=index.popularity_z
    )
    touched: dict[str, set[str]] = defaultdict(set)
    for u, i in zip(world.observed["user_id"], world.observed["item_id"], strict=True):
        touched[str(u)].add(str(i))
    truth: dict[str, set[str]] = defaultdict(set)
    for u, i in zip(world.truth["user_id"], world.truth["item_id"], strict=True):
        if str(u) in m.user_index and str(i) not in touched[str(u)]:
            truth[str(u)].add(str(i))
    popular = [ids[r] for r in np.argsort(-index.popularity, kind="stable")[:SLOTS]]
    hits: dict[str, list[float]] = {v: [] for v in VARIANTS}
    recall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    n = len(ids)
    for user, bought in truth.items():
        vector = m.scorer.user_factors[m.user_index[user]]
        k = len(bought & set(ids))
        # random: P(at least one of k among 2 of n), and 2 of the k expected out of n
        hits["random"].append(1.0 - (n - k) * (n - k - 1) / (n * (n - 1)))
        recall["random"].append(SLOTS / n)
        picks = {
            "popular since arrival": popular,
            "content": [ids[r] for r in np.argsort(-(content.vectors @ vector))[:SLOTS]],
            FOLDED: [ids[r] for r in np.argsort(-(replaced @ vector))[:SLOTS]],
            VECTOR: [ids[r] for r in np.argsort(-(folded @ vector))[:SLOTS]],
            CONTENT_POPULAR: [
                r.item_id
                for r in content_popular.pick(Query(user_id=user), vector, (), world.cutoff, (), 2)
            ],
            SERVED: [
                r.item_id
                for r in index.pick(Query(user_id=user), vector, (), world.cutoff, (), SLOTS)
            ],
        }
        for variant, picked in picks.items():
            got = len(bought & set(picked))
            hits[variant].append(float(got > 0))
            recall[variant].append(got / len(bought))
    return {
        "users": len(truth),
        "new_items": n,
        "folded_items": int(index.folded.sum()),
        "observed_events": len(world.observed),
        "hit_rate@2": {v: round(float(np.mean(hits[v])), 4) for v in VARIANTS},
        "recall@2": {v: round(float(np.mean(recall[v])), 4) for v in VARIANTS},
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1e6
    return {
        "p50_us": round(float(np.percentile(values, 50)), 1),
        "p99_us": round(float(np.percentile(values, 99)), 1),
    }


def _cost(world: _World) -> dict[str, Any]:
    """Known-user lists with and without new arrivals, interleaved; then out-of-stock items."""
    arrivals = world.arrivals
    arrivals.events = _Events(world.observed)
    started = time.perf_counter()
    arrivals.rebuild()
    rebuild = time.perf_counter() - started
    m = world.recommender.model
    some = world.new_items[0]
    started = time.perf_counter()
    arrivals.on_catalogue([_record(some, "c00", world.cutoff)])
    one_change = time.perf_counter() - started
    started = time.perf_counter()
    arrivals.refresh()
    refresh = time.perf_counter() - started
    users = list(m.user_index)
    rng = np.random.default_rng(0)
    now = world.cutoff + timedelta(days=1)
    holder: Any = _Holder(world.recommender)
    metrics = Metrics()
    plain = Recommendations(holder, world.activity, lambda: now, metrics)
    served = Recommendations(holder, world.activity, lambda: now, metrics, arrivals=arrivals)
    out: dict[str, Any] = {
        "rebuild_seconds": round(rebuild, 4),
        "one_catalogue_change_seconds": round(one_change, 4),
        "refresh_seconds": round(refresh, 4),
    }
    for label in ("in stock", "a tenth of the catalogue out of stock"):
        if label != "in stock":
            gone = rng.choice(m.item_labels, size=m.n_items // 10, replace=False).tolist()
            world.activity.update_catalogue(
                [_record(i, None, world.cutoff, in_stock=False) for i in gone]
            )
        times: dict[str, list[float]] = {"without new arrivals": [], "with new arrivals": []}
        listed = 0
        for call in range(CALLS):
            query = Query(user_id=users[int(rng.integers(len(users)))])
            order = (("without new arrivals", plain), ("with new arrivals", served))
            for name, service in order if call % 2 else order[::-1]:
                started = time.perf_counter()
                result = service.recommend(query)
                times[name].append(time.perf_counter() - started)
                if name == "with new arrivals":
                    listed += any(r.source == "new_arrivals" for r in result.result.items)
        out[label] = {
            "calls": CALLS,
            "unservable": len(world.activity.unservable),
            "lists_with_new_arrivals": round(listed / CALLS, 4),
            **{name: _percentiles(t) for name, t in times.items()},
        }
        print(label, out[label], flush=True)
    return out


def _http(world: _World, models: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Known users' lists over HTTP, one uvicorn worker with slots 0 and one with 2, in turns."""
    import httpx

    from benchmarks.api_latency import latency
    from benchmarks.harness import FRONTEND_KEY, Server, fresh_sqlite

    m = world.recommender.model
    users = list(m.user_index)[:2000]
    paths = [f"/v1/users/{u}/recommendations" for u in users]
    env = {
        "RECOFFER_MODEL_DIR": str(models),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_NEW_ITEMS_REFRESH_SECONDS": "0",
        "OPENBLAS_NUM_THREADS": "1",  # as the Docker image runs it
    }
    category = dict(zip(world.shop.items["item_id"], world.shop.items["category"], strict=True))
    runs: dict[str, list[dict[str, float]]] = {"without new arrivals": [], "with new arrivals": []}
    listed: dict[str, bool] = {}
    with fresh_sqlite("new-arrivals") as url:
        for turn in range(HTTP_TURNS):
            kinds = [("without new arrivals", "0"), ("with new arrivals", "2")]
            for label, slots in kinds if turn % 2 == 0 else kinds[::-1]:  # neither always first
                server_env = {**env, "RECOFFER_DATABASE_URL": url}
                server_env["RECOFFER_NEW_ARRIVALS_SLOTS"] = slots
                with Server(server_env, cpus="0") as server:
                    headers = {"X-API-Key": FRONTEND_KEY}
                    with httpx.Client(base_url=server.url, headers=headers) as client:
                        if turn == 0 and slots == "0":  # the new products, once, stored first
                            for item in world.new_items:
                                body = {"category": str(category[item]), "in_stock": True}
                                client.put(f"/v1/items/{item}", json=body).raise_for_status()
                        items = client.get(paths[0]).json()["items"]
                        listed[label] = any(i["source"] == "new_arrivals" for i in items)
                    runs[label].append(latency(server.port, paths, rate, seconds))
                    print(label, turn, runs[label][-1], flush=True)
    return {
        "rate": rate,
        "seconds": seconds,
        "turns": HTTP_TURNS,
        "lists_hold_new_arrivals": listed,
        "each_turn": {
            label: [{k: round(r[k], 3) for k in ("p50_ms", "p99_ms")} for r in rows]
            for label, rows in runs.items()
        },
        **{
            label: {
                key: round(median([r[key] for r in rows]), 3)
                for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms")
            }
            | {"errors": int(sum(r.get("errors", 0) for r in rows))}
            for label, rows in runs.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", help="synthetic shop")
    parser.add_argument("--rate", type=float, default=500.0, help="HTTP requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="HTTP run length")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP side by side")
    args = parser.parse_args()
    runs = []
    cost: dict[str, Any] = {}
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as models:
            world = _world(args.preset, seed, Path(models))
            figures = _quality(world)
            print(seed, figures, flush=True)
            runs.append({"seed": seed, **figures})
            if seed == SEEDS[0]:
                cost = _cost(world)
                if not args.no_http:
                    cost["http"] = _http(world, Path(models), args.rate, args.seconds)
    table = {
        metric: {v: round(median([r[metric][v] for r in runs]), 4) for v in VARIANTS}
        for metric in ("hit_rate@2", "recall@2")
    }
    save(
        "new_arrivals",
        this_command(),
        {
            "preset": args.preset,
            "new_share": NEW_SHARE,
            "test_days": TEST_DAYS,
            "observe_days": OBSERVE_DAYS,
            "slots": SLOTS,
            "seeds": list(SEEDS),
            "runs": runs,
            "median": table,
            "cost": cost,
        },
    )
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    """The "New products" section of docs/benchmarks.md."""
    from benchmarks.report import _header

    med = doc["median"]
    first = doc["runs"][0]
    out = ["## New products", "", *_header(doc)]
    out += [
        f"Quality, synthetic shop `{doc['preset']}`, seeds {', '.join(map(str, doc['seeds']))}: "
        f"{100 * doc['new_share']:.0f} % of the catalogue held out of training as new "
        f"({first['new_items']} items), arriving at the cut-off {doc['test_days']} days before "
        f"the end; the first {doc['observe_days']} days are observed (purchases and taste "
        "views), the rest is the truth: a known user's purchases of new items they had not "
        f"touched while observed ({first['users']:,} users in the first seed; "
        f"{first['folded_items']} of the new items had events of known users to fold in). "
        f"The {doc['slots']} new-arrival slots of each user, medians over the seeds:",
        "",
        "| slots filled by | hit rate@2 | recall@2 |",
        "|---|---:|---:|",
    ]
    for variant in VARIANTS:
        out.append(
            f"| {variant} | {med['hit_rate@2'][variant]:.4f} | {med['recall@2'][variant]:.4f} |"
        )
    hit = med["hit_rate@2"]

    def times(variant: str) -> float:
        return float(hit[variant]) / max(float(hit["random"]), 1e-9)

    out += [
        "",
        f"Against two random new items: the content vector alone (category only) "
        f"{times('content'):.1f} times the hits, the served vector alone {times(VECTOR):.1f} "
        f"times, the fold-in's own vector replacing the content one {times(FOLDED):.1f} times "
        "(its length, shrunk by every user who did not touch the product, sinks the products "
        "with early visitors, hence the served rule keeps the content vector's length), "
        f"popularity since arrival {times('popular since arrival'):.1f} times, and the served "
        f"ranking, match plus popularity, {times(SERVED):.1f} times. Inside one category the "
        "content vectors are all alike, so the popularity since arrival is what tells the new "
        "products of a taste apart; with it, the content vectors alone give "
        f"{times(CONTENT_POPULAR):.1f} times.",
        "",
    ]
    cost = doc["cost"]
    out += [
        "Cost, in-process on the first seed's model (`Recommendations.recommend` for random "
        "known users, the two kinds of call interleaved in one run, microseconds; the p99 of "
        "this shared 2-CPU machine is mostly other work, the p50 is the cost):",
        "",
        "| catalogue | calls | lists holding a new arrival | without: p50 | without: p99 | "
        "with: p50 | with: p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in ("in stock", "a tenth of the catalogue out of stock"):
        row = cost[label]
        a, b = row["without new arrivals"], row["with new arrivals"]
        out.append(
            f"| {label} ({row['unservable']} unservable) | {row['calls']:,} | "
            f"{100 * row['lists_with_new_arrivals']:.0f} % | {a['p50_us']:.0f} | "
            f"{a['p99_us']:.0f} | {b['p50_us']:.0f} | {b['p99_us']:.0f} |"
        )
    http = cost.get("http")
    if http:
        out += [
            "",
            f"Over HTTP: one uvicorn worker on CPU 0 (`OPENBLAS_NUM_THREADS=1`, as in the Docker "
            f"image) with `RECOFFER_NEW_ARRIVALS_SLOTS=0` and "
            f"one with 2, {http['turns']} of each in turns (which starts first alternates) on the "
            "same database and model, "
            f"`benchmarks/loadgen.py` on CPU 1 at {http['rate']:g} req/s for "
            f"{http['seconds']:g} s each, known users (medians of the turns, ms):",
            "",
            "| server | p50 | p90 | p99 | p99.9 | errors | lists hold a new arrival | each turn: "
            "p50 / p99 |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for label in ("without new arrivals", "with new arrivals"):
            row = http[label]
            held = "yes" if http["lists_hold_new_arrivals"].get(label) else "no"
            turns = ", ".join(
                f"{t['p50_ms']:.2f} / {t['p99_ms']:.1f}"
                for t in http.get("each_turn", {}).get(label, [])
            )
            out.append(
                f"| {label} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['p999_ms']:.2f} | {row['errors']} | {held} | {turns} |"
            )
        out += [
            "",
            "The turns differ among themselves by more than the two kinds of server do (this "
            "machine's two CPUs are shared with other work), so the in-process difference above "
            "is the figure for the request path. Which server starts first alternates because "
            "it matters: runs where the server without new arrivals always went first had the "
            "second one slower in almost every turn (0.1 to 1 ms at p50).",
        ]
    out += [
        "",
        f"Builds, {first['new_items']} new items: everything for a model version "
        f"{1000 * cost['rebuild_seconds']:.1f} ms (category means, content vectors, the "
        f"fold-in query and solves), one catalogue change "
        f"{1000 * cost['one_catalogue_change_seconds']:.1f} ms, the periodic refresh "
        f"{1000 * cost['refresh_seconds']:.1f} ms; all in a thread, off the event loop.",
        "",
    ]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
