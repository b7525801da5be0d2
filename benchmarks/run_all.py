"""Run every benchmark, then render docs/benchmarks.md (about 15 minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import PYTHON, ROOT

STEPS = (
    ["benchmarks.train_online_retail"],
    ["benchmarks.train_synthetic", "--sizes", "2m,10m"],
    ["benchmarks.api_latency"],
)


def main() -> int:
    for step in STEPS:
        print(f"== {' '.join(step)}", flush=True)
        code = subprocess.run([PYTHON, "-m", *step], cwd=ROOT).returncode
        if code:
            return code
    return subprocess.run([PYTHON, "-m", "benchmarks.report"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
