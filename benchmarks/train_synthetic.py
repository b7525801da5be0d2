"""Training time and peak memory against size, side by side with a bare implicit ALS fit.

For each size: generate the seeded synthetic shop (not timed), then in fresh processes run
(a) a bare ALS fit (factors 64, 15 iterations, 2 threads) on the same user x item matrix and
(b) the whole ``recoffer train --tune-seconds 0`` (load, clean, three nested stages, evaluate,
gate, publish). Reports medians over --repeats runs and the ratio (b) / (a).
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import UTC, datetime

from benchmarks.common import PYTHON, RESULTS, WORK, measure, median, save, this_command
from training.synthetic import generate_shop, spec_for, write_shop


def run_size(preset: str, repeats: int) -> dict[str, object]:
    data_dir = WORK / f"shop-{preset}"
    data = data_dir / "purchases.parquet"
    if not data.is_file():
        write_shop(generate_shop(spec_for(preset)), data_dir, fmt="parquet")
    bare_runs, train_runs = [], []
    for _ in range(repeats):
        bare = measure([PYTHON, "-m", "benchmarks.fit_bare", str(data)])
        if bare.returncode != 0:
            raise SystemExit(f"bare fit failed: {bare.stderr[-2000:]}")
        fit = json.loads(bare.stdout.strip().splitlines()[-1])
        bare_runs.append({"fit_seconds": fit["fit_seconds"], "peak_rss_mib": bare.peak_rss_mib})
        models = WORK / f"models-{preset}"
        shutil.rmtree(models, ignore_errors=True)
        train = measure(
            [
                PYTHON,
                "-m",
                "benchmarks.train_child",
                "train",
                "--data",
                str(data),
                "--model-dir",
                str(models),
                "--tune-seconds",
                "0",
                "--threads",
                "2",
                "--json",
            ]
        )
        if train.returncode != 0:
            raise SystemExit(f"train failed: {train.stderr[-2000:]}")
        doc = json.loads(train.stdout)
        train_runs.append(
            {
                "wall_seconds": train.seconds,
                "pipeline_seconds": doc["timings"]["total"],
                "timings": doc["timings"],
                "peak_rss_mib": train.peak_rss_mib,
                "served": doc["served_by_protocol"],
                "ndcg@10": {p: doc["metrics"][p]["served"]["ndcg@10"] for p in doc["metrics"]},
            }
        )
        print(
            f"{preset}: bare {bare_runs[-1]} train {train_runs[-1]['pipeline_seconds']:.2f}s "
            f"peak {train.peak_rss_mib:.0f} MiB",
            flush=True,
        )
    spec = spec_for(preset)
    bare_s = median([r["fit_seconds"] for r in bare_runs])
    train_s = median([r["pipeline_seconds"] for r in train_runs])
    return {
        "preset": preset,
        "users": spec.n_users,
        "items": spec.n_items,
        "interactions": spec.n_interactions,
        "repeats": repeats,
        "bare_fit_seconds": bare_s,
        "train_seconds": train_s,
        "train_wall_seconds": median([r["wall_seconds"] for r in train_runs]),
        "ratio": train_s / bare_s,
        "run_ratios": [
            t["pipeline_seconds"] / b["fit_seconds"]
            for t, b in zip(train_runs, bare_runs, strict=True)
        ],
        "bare_runs": bare_runs,
        "train_peak_rss_mib": max(r["peak_rss_mib"] for r in train_runs),
        "bare_peak_rss_mib": max(r["peak_rss_mib"] for r in bare_runs),
        "runs": train_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2m,10m", help="comma-separated presets")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    previous = RESULTS / "train_synthetic.json"
    rows = json.loads(previous.read_text())["sizes"] if previous.is_file() else []
    for preset in args.sizes.split(","):
        row = run_size(preset, 1 if preset == "10m" else args.repeats)
        row["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows = [r for r in rows if r["preset"] != preset] + [row]
    order = ["100k", "1m", "2m", "10m"]
    rows.sort(key=lambda r: order.index(r["preset"]) if r["preset"] in order else 99)
    save("train_synthetic", this_command(), {"sizes": rows})


if __name__ == "__main__":
    main()
