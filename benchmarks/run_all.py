"""Run every benchmark, then render docs/benchmarks.md (about 45 minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import PYTHON, ROOT

STEPS = (
    ["benchmarks.train_online_retail"],
    ["benchmarks.train_synthetic", "--sizes", "100k,1m,2m,10m"],
    ["benchmarks.signals"],
    ["benchmarks.api_latency"],
    ["benchmarks.against_commit"],
    ["benchmarks.concurrency"],
    ["benchmarks.serving_memory"],
    ["benchmarks.experiment_serving"],  # issue 14, item 3
    ["benchmarks.experiment_guard"],  # issue 14, item 3
    ["benchmarks.import_online_retail", "--repeats", "2"],
    ["benchmarks.offers"],
    ["benchmarks.sweep"],
    ["benchmarks.money"],
    ["benchmarks.lifecycle_sweep"],  # issue 12, item 2
    ["benchmarks.retrain_pickup"],
    ["benchmarks.reliability"],
    ["benchmarks.campaign_store"],  # issue 12, item 5
    ["benchmarks.segments"],  # issue 12, item 1
    ["benchmarks.segments_online_retail"],
    ["benchmarks.clv"],  # issue 13, item 1: predicted lifetime value
    ["benchmarks.loyalty"],  # issue 13, item 1
    ["benchmarks.feedback_overhead"],  # issue 14, target 1
    ["benchmarks.simulator"],  # issue 14, item 5
    ["benchmarks.capacity"],  # issue 15, item 7 (docs/scaling.md)
    ["benchmarks.replicas"],  # issue 15, item 5: needs PostgreSQL and Redis
    ["benchmarks.ann_libraries", "--items", "100000", "--queries", "500"],  # issue 15, item 4
    ["benchmarks.ann_index"],  # issue 15, item 4: 1M items, 10M users
)


def main() -> int:
    for step in STEPS:
        print(f"== {' '.join(step)}", flush=True)
        code = subprocess.run([PYTHON, "-m", *step], cwd=ROOT).returncode
        if code:
            return code
    code = subprocess.run([PYTHON, "-m", "benchmarks.report"], cwd=ROOT).returncode
    return code or subprocess.run([PYTHON, "-m", "benchmarks.scaling"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
