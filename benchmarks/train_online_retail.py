"""Online Retail: model quality (with tuning) and end-to-end training time (tuning off).

Quality: one ``recoffer train --format online-retail --tune-seconds N`` run; every candidate's
test metrics. Time: --repeats runs with ``--tune-seconds 0`` (load, clean, fit, evaluate,
publish), median wall time of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
from typing import Any

from benchmarks.common import PYTHON, ROOT, WORK, measure, median, save, this_command

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"


def train(tune_seconds: float, models_name: str) -> tuple[dict[str, Any], float, float]:
    """One measured ``recoffer train --json`` run: (its JSON report, wall seconds, peak MiB)."""
    models = WORK / models_name
    shutil.rmtree(models, ignore_errors=True)
    result = measure(
        [
            PYTHON,
            "-m",
            "benchmarks.train_child",
            "train",
            "--data",
            str(DATA),
            "--format",
            "online-retail",
            "--model-dir",
            str(models),
            "--test-days",
            "30",
            "--tune-seconds",
            str(tune_seconds),
            "--json",
        ]
    )
    if result.returncode != 0:
        raise SystemExit(f"train failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout), result.seconds, result.peak_rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tune-seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"Online Retail not found at {DATA}")
    quality, quality_wall, _ = train(args.tune_seconds, "models-or-tuned")
    print(f"quality run: {quality_wall:.1f}s served={quality['served']}", flush=True)
    times, walls, peaks, untuned = [], [], [], None
    for _ in range(args.repeats):
        doc, wall, peak = train(0, "models-or-untuned")
        times.append(doc["timings"]["total"])
        walls.append(wall)
        peaks.append(peak)
        untuned = doc
        print(f"untuned run: pipeline {times[-1]:.2f}s wall {wall:.2f}s", flush=True)
    save(
        "train_online_retail",
        this_command(),
        {
            "tune_seconds": args.tune_seconds,
            "quality": {
                "served": quality["served_by_protocol"],
                "metrics": quality["metrics"],
                "tuning": quality.get("timings", {}),
            },
            "untuned_metrics": untuned["metrics"] if untuned else {},
            "end_to_end": {
                "repeats": args.repeats,
                "pipeline_seconds_median": median(times),
                "wall_seconds_median": median(walls),
                "peak_rss_mib": max(peaks),
                "timings_last": untuned["timings"] if untuned else {},
            },
        },
    )


if __name__ == "__main__":
    main()
