"""Evaluation at scale (issue 15, item 2): time and peak memory of scoring a seeded sample of
test users in chunks, against the number of users and items.

Each size runs in a fresh process (``--child``): a synthetic model (seeded random factors, 32 of
them, a few purchases per user, skewed popularity) and a truth of two test purchases per user,
built with ``build_evalset`` (the sample of ``DEFAULT_EVAL_USERS``), then one recipe
(als + popularity + repeat) scored under both protocols with ``EvalSet.evaluate_many``. Random
factors cost what real ones cost to score (the figures themselves mean nothing here), so this
measures the scoring, not the quality. Reported: the users scored (and what ``MAX_EVAL_CELLS //
items``, the cap before, gave), the users scored at once, seconds, nanoseconds per user x item
cell, the process's peak RSS, and what one unchunked users x items float32 matrix would take.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import PYTHON, ROOT, WORK, measure, median, save, this_command

OLD_CAP_CELLS = 10_000_000  # MAX_EVAL_CELLS before issue 15: users x items scored, in all
SIZES = "60000x10000,2000x200000,4000x200000,500x1000000,1000x1000000"
FACTORS = 32
BASELINE = "f948bc5"  # the issue 15 contracts: the evaluation before chunks and the sample
TUNING_SIZE = (1_400, 3_700, 64)  # about Online Retail's test users, items; factors
TUNING_RECIPES = 40


if TYPE_CHECKING:
    import numpy as np

    from service.scoring import Scorer


def random_scorer(
    rng: np.random.Generator,
    users: int,
    items: int,
    factors: int,
    *,
    per_user: int,
    with_ease: bool = False,
) -> Scorer:
    """A scorer of random factors over ``per_user`` random purchases a user (scoring costs
    what real factors cost), with EASE's item x item matrix when ``with_ease``."""
    import numpy as np
    import scipy.sparse as sp

    from service.scoring import Scorer

    rows = np.repeat(np.arange(users), per_user)
    cols = rng.integers(0, items, users * per_user)
    counts = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(users, items)
    )
    counts.sum_duplicates()
    ages = counts.copy()
    ages.data = rng.uniform(0, 365, len(ages.data)).astype(np.float32)
    return Scorer(
        item_factors=rng.standard_normal((items, factors), dtype=np.float32),
        user_factors=rng.standard_normal((users, factors), dtype=np.float32),
        history_counts=counts,
        history_age_days=ages,
        popularity=rng.zipf(1.5, items).clip(max=100_000),
        trending=rng.poisson(1.0, items),
        ease_b=rng.standard_normal((items, items), dtype=np.float32) if with_ease else None,
    )


def tuning_child() -> dict[str, Any]:
    """Tuning's inner loop on a shop of Online Retail's size: ``EvalSet.evaluate`` of many
    recipes on cached components. Runs in either tree (only APIs both have)."""
    import numpy as np
    import pandas as pd

    from service.scoring import Recipe
    from training.evaluate import build_evalset

    users, items, factors = TUNING_SIZE
    rng = np.random.default_rng(0)
    scorer = random_scorer(rng, users, items, factors, per_user=20, with_ease=True)
    test_users = np.repeat(np.arange(users), 3)
    test_items = rng.integers(0, items, len(test_users))
    ev = build_evalset(
        scorer, pd.Index(np.arange(users)), pd.Index(np.arange(items)), test_users, test_items
    )
    recipes = [
        Recipe(weights={"als": 1.0, "ease": float(w), "popularity": 0.1, "repeat": 1.0})
        for w in np.linspace(0.1, 2.0, TUNING_RECIPES)
    ]
    ev.evaluate(recipes[0], "all")  # fills the cache, as tuning's first evaluation does
    started, cpu = time.perf_counter(), time.process_time()
    figures = [ev.evaluate(r, p) for r in recipes for p in ("all", "novel")]
    n = len(figures)
    return {
        "evaluations": n,
        "users": int(figures[0]["users"]),
        "ms_per_evaluation": round((time.perf_counter() - started) / n * 1000, 2),
        "cpu_ms_per_evaluation": round((time.process_time() - cpu) / n * 1000, 2),
        # every figure of every evaluation: equal in both trees, or the change moved a figure
        "checksum": repr(sorted((k, round(sum(f[k] for f in figures), 12)) for k in figures[0])),
    }


def against_baseline(commit: str, rounds: int) -> dict[str, Any]:
    """``tuning_child`` in this tree and in ``commit``'s, taking turns (A B B A ...)."""
    from benchmarks.against_commit import export, in_tree

    trees = {"this": ROOT, commit: export(commit)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for i in range(rounds):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in order:
            m = measure(
                in_tree(
                    trees[name],
                    [PYTHON, str(ROOT / "benchmarks" / "eval_scale.py"), "--tuning-child"],
                )
            )
            if m.returncode != 0:
                raise SystemExit(f"tuning child in {name} failed: {m.stderr[-2000:]}")
            runs[name].append(json.loads(m.stdout.strip().splitlines()[-1]))
            print(name, json.dumps(runs[name][-1]), flush=True)
    return {
        "commit": commit,
        "size": dict(zip(("users", "items", "factors"), TUNING_SIZE, strict=True)),
        "rounds": rounds,
        "cpu_ms_per_evaluation": {
            n: median([r["cpu_ms_per_evaluation"] for r in rs]) for n, rs in runs.items()
        },
        "ms_per_evaluation": {
            n: median([r["ms_per_evaluation"] for r in rs]) for n, rs in runs.items()
        },
        "same_figures": len({r["checksum"] for rs in runs.values() for r in rs}) == 1,
        "users": {n: rs[0]["users"] for n, rs in runs.items()},
    }


def child(users: int, items: int, seed: int = 0) -> dict[str, Any]:
    """Build the synthetic model and truth, score one recipe under both protocols."""
    import numpy as np
    import pandas as pd

    from benchmarks.common import peak_rss_mib
    from service.scoring import Recipe
    from training.evaluate import build_evalset

    rng = np.random.default_rng(seed)
    scorer = random_scorer(rng, users, items, FACTORS, per_user=5)
    test_users = np.repeat(np.arange(users), 2)
    test_items = rng.integers(0, items, len(test_users))
    built = time.perf_counter()
    ev = build_evalset(
        scorer, pd.Index(np.arange(users)), pd.Index(np.arange(items)), test_users, test_items
    )
    recipe = Recipe(weights={"als": 1.0, "popularity": 0.3, "repeat": 1.0})
    started, cpu = time.perf_counter(), time.process_time()
    figures = ev.evaluate_many([(recipe, "all"), (recipe, "novel")])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    info = ev.info()
    cells = info["users"] * items
    return {
        "users_in_test": users,
        "items": items,
        **info,
        "old_cap_users": min(users, max(1, OLD_CAP_CELLS // items)),
        "build_seconds": round(started - built, 3),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "ns_per_cell": round(seconds / (2 * cells) * 1e9, 2),  # two protocols
        "cpu_ns_per_cell": round(cpu / (2 * cells) * 1e9, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "dense_matrix_mib": round(cells * 4 / 2**20, 1),
        "ndcg@10": {"all": figures[0]["ndcg"], "novel": figures[1]["ndcg"]},
    }


def trainer_side_by_side(preset: str, commit: str) -> dict[str, Any]:
    """``recoffer train --tune-seconds 0`` on a synthetic shop in this tree and ``commit``'s,
    each in a fresh process: whole time, evaluation stages, peak memory, users scored."""
    import shutil

    from benchmarks.against_commit import export, in_tree
    from training.synthetic.shop import generate_shop, write_shop
    from training.synthetic.spec import spec_for

    data = WORK / f"shop-{preset}" / "purchases.parquet"
    if not data.is_file():
        write_shop(generate_shop(spec_for(preset)), data.parent, fmt="parquet")
    out: dict[str, Any] = {"preset": preset, "commit": commit, "runs": {}}
    for name, tree in (("this", ROOT), (commit, export(commit))):
        models = WORK / f"eval-scale-models-{name}"
        shutil.rmtree(models, ignore_errors=True)
        command = [PYTHON, "-m", "benchmarks.train_child", "train", "--data", str(data)]
        command += ["--model-dir", str(models), "--tune-seconds", "0", "--threads", "2", "--json"]
        m = measure(in_tree(tree, command))
        if m.returncode != 0:
            raise SystemExit(f"train in {name} failed: {m.stderr[-2000:]}")
        doc = json.loads(m.stdout)
        out["runs"][name] = {
            "wall_seconds": round(m.seconds, 2),
            "timings": doc["timings"],
            "peak_rss_mib": m.peak_rss_mib,
            "users": {p: int(t["served"]["users"]) for p, t in doc["metrics"].items()},
            "ndcg@10": {p: t["served"]["ndcg@10"] for p, t in doc["metrics"].items()},
            "evaluation": doc.get("evaluation"),
        }
        print(name, json.dumps(out["runs"][name]), flush=True)
    spec = spec_for(preset)
    out["shop"] = {"users": spec.n_users, "items": spec.n_items, "purchases": spec.n_interactions}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES, help="users x items, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", nargs=2, type=int, metavar=("USERS", "ITEMS"))
    parser.add_argument("--tuning-child", action="store_true")
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare tuning with")
    parser.add_argument("--rounds", type=int, default=4, help="turns of each tree")
    parser.add_argument("--trainer", default="2m", help="synthetic preset trained in both trees")
    args = parser.parse_args()
    if args.tuning_child:
        print(json.dumps(tuning_child()))
        return
    if args.child:
        print(json.dumps(child(*args.child)))
        from benchmarks.common import report_peak

        report_peak()
        return
    results = []
    for size in args.sizes.split(","):
        users, items = (int(x) for x in size.lower().split("x"))
        runs = []
        for _ in range(args.repeats):
            m = measure([PYTHON, "-m", "benchmarks.eval_scale", "--child", str(users), str(items)])
            if m.returncode != 0:
                raise SystemExit(f"{size} failed: {m.stderr[-2000:]}")
            runs.append(json.loads(m.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        row = dict(runs[-1])
        row["seconds"] = median([r["seconds"] for r in runs])
        row["ns_per_cell"] = median([r["ns_per_cell"] for r in runs])
        row["cpu_seconds"] = median([r["cpu_seconds"] for r in runs])
        row["cpu_ns_per_cell"] = median([r["cpu_ns_per_cell"] for r in runs])
        row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
        row["repeats"] = len(runs)
        # the same cost per cell for 50,000 users (time grows with the users, memory does not)
        row["seconds_for_50000_users"] = round(row["ns_per_cell"] * 2 * 50_000 * items / 1e9, 1)
        results.append(row)
    baseline = against_baseline(args.baseline, args.rounds) if args.rounds > 0 else None
    trainer = trainer_side_by_side(args.trainer, args.baseline) if args.trainer else None
    save(
        "eval_scale",
        this_command(),
        {
            "factors": FACTORS,
            "sizes": results,
            "tuning_against_commit": baseline,
            "trainer_against_commit": trainer,
        },
    )


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    out = [
        "## Evaluation at scale: a sample of 50,000 test users, scored in chunks",
        "",
        f"Measured {doc['date']} on {doc['machine'].get('cpu', '?')}, "
        f"{doc['machine'].get('cpus')} CPUs (shared with other work: a busy machine). "
        f"Command: `{doc['command']}`",
        "",
        "Synthetic model and truth (seeded random factors, "
        f"{doc['factors']} of them; the scoring costs what real factors cost, the figures mean "
        "nothing), each size in a fresh process: `build_evalset` (the seeded sample of "
        "`DEFAULT_EVAL_USERS` = 50,000) and one recipe (als + popularity + repeat) under both "
        "protocols. *Before*: the users `MAX_EVAL_CELLS // items` let the old code score; "
        "*dense*: one users x items float32 matrix of the users scored now, what scoring them "
        "unchunked would build per component.",
        "",
        "| test users | items | scored before | scored now | at once | wall s | CPU s | CPU ns "
        "per cell | peak RSS (MiB) | dense matrix (MiB) | CPU s for 50,000 users |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["sizes"]:
        out.append(
            f"| {r['users_in_test']:,} | {r['items']:,} | {r['old_cap_users']:,} | "
            f"{r['users']:,} | {r['chunk_users']:,} | {r['seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | {r['cpu_ns_per_cell']:.1f} "
            f"| {r['peak_rss_mib']:.0f} | {r['dense_matrix_mib']:,.0f} | "
            f"{r['cpu_ns_per_cell'] * 2 * 50_000 * r['items'] / 1e9:,.0f} |"
        )
    peaks = [r["peak_rss_mib"] for r in doc["sizes"]]
    per_cell = median([r["cpu_ns_per_cell"] for r in doc["sizes"]])
    out += [
        "",
        f"- Peak memory stays within {min(peaks):.0f}-{max(peaks):.0f} MiB whatever the number "
        "of users (the item factors and the chunk's matrices; chunks of `EVAL_CHUNK_CELLS` = "
        "8M cells); time grows linearly with users x items, so the last column is the measured "
        "CPU cost per cell times 50,000 users x items x 2 protocols (an extrapolation where "
        "fewer users were measured; CPU rather than wall time: the machine was shared, wall "
        "time ran 2-4x the CPU time).",
        "- Each candidate and protocol scores every sampled user over the whole catalogue: "
        f"{per_cell:.0f} CPU ns per cell (median) is {per_cell * 50_000 * 50_000 / 1e9:.0f} "
        "CPU s per recipe and protocol at 50,000 items (the 10M-purchase synthetic shop, whose "
        f"gate scored {OLD_CAP_CELLS // 50_000} users before) and "
        f"{per_cell * 50_000 * 1_000_000 / 1e9 / 60:.0f} CPU minutes at a million items "
        f"({OLD_CAP_CELLS // 1_000_000} users before); a run scores every candidate under "
        "both protocols on validation and on test. That is the price of figures resting on "
        "50,000 users; the whole trainer on 10M purchases was not re-measured here.",
        "",
    ]
    base = doc.get("tuning_against_commit")
    if base:
        cpu, wall, commit = base["cpu_ms_per_evaluation"], base["ms_per_evaluation"], base["commit"]
        size = base["size"]
        out += [
            f"Tuning's inner loop on a shop of Online Retail's size ({size['users']:,} test "
            f"users, {size['items']:,} items, {size['factors']} factors, EASE; every user "
            "scored, components cached): `EvalSet.evaluate` of 80 recipes, this tree against "
            f"commit `{commit}` (before this change), {base['rounds']} turns each (A B B A), "
            "medians:",
            "",
            "| tree | CPU ms per evaluation | wall ms per evaluation | users |",
            "|---|---:|---:|---:|",
        ]
        for name in cpu:
            out.append(f"| {name} | {cpu[name]:.1f} | {wall[name]:.1f} | {base['users'][name]:,} |")
        out += [
            "",
            f"- Same figures in both trees (every metric of every evaluation): "
            f"{'yes' if base['same_figures'] else '**no**'}.",
            "",
        ]
    train = doc.get("trainer_against_commit")
    if train:
        shop = train["shop"]
        out += [
            f"The whole `recoffer train --tune-seconds 0 --threads 2` on the {train['preset']} "
            f"synthetic shop ({shop['users']:,} users, {shop['items']:,} items, "
            f"{shop['purchases']:,} purchases), this tree and commit `{train['commit']}`, one "
            "run each in a fresh process:",
            "",
            "| tree | test users scored (all / novel) | whole train (s) | fit_test incl. test "
            "figures (s) | gate (s) | peak RSS (MiB) | served NDCG@10 (all / novel) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in train["runs"].items():
            t = r["timings"]
            out.append(
                f"| {name} | {r['users']['all']:,} / {r['users']['novel']:,} | "
                f"{t['total']:.1f} | {t['fit_test']:.1f} | {t.get('gate', 0.0):.1f} | "
                f"{r['peak_rss_mib']:.0f} | {r['ndcg@10']['all']:.4f} / "
                f"{r['ndcg@10']['novel']:.4f} |"
            )
        now, before = train["runs"]["this"], train["runs"][train["commit"]]
        users = now["users"]["all"] / before["users"]["all"]
        slower = now["timings"]["total"] / before["timings"]["total"]
        out += [
            "",
            f"- {users:.0f}x the test users (all of them instead of `MAX_EVAL_CELLS // items`) "
            f"for {slower:.1f}x the whole run's time, in the same peak memory: "
            "the validation and test figures score every candidate on every sampled user. "
            "Wall times on a shared machine.",
        ]
        out.append("")
    return out


if __name__ == "__main__":
    main()
