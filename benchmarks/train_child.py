"""Run ``recoffer train`` in this process and report its peak RSS (used by the benchmarks)."""

from __future__ import annotations

import sys

from benchmarks.common import report_peak
from training.cli import app

if __name__ == "__main__":
    try:
        app(sys.argv[1:], standalone_mode=False)
    finally:
        report_peak()
