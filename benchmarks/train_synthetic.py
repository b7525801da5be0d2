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
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, measure, median, save, this_command
from training.synthetic.shop import generate_shop, write_shop
from training.synthetic.spec import spec_for


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
    plot(rows, PLOT)


PLOT = ROOT / "docs" / "img" / "training_size.png"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Training time and peak memory against interactions (log-log), bare ALS beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = [r["interactions"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(size, [r["train_seconds"] for r in rows], marker="o", label="recoffer train")
    left.plot(size, [r["bare_fit_seconds"] for r in rows], marker="s", label="bare ALS fit")
    right.plot(size, [r["train_peak_rss_mib"] for r in rows], marker="o", label="recoffer train")
    right.plot(size, [r["bare_peak_rss_mib"] for r in rows], marker="s", label="bare ALS fit")
    for axis, label in ((left, "seconds (median)"), (right, "peak RSS (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("purchase lines (synthetic shop)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    left.set_title("Training time (tuning off, 2 threads)")
    right.set_title("Peak memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
