"""Every console page's time to first render on the demo shop, and the screenshots in the
README (issue 13, items 2 and 3; target: under 1 s each).

Runs the browser tests (``tests/browser``: the demo shop on a real server, Debian's headless
Chromium driven by Playwright) with their screenshots going to ``docs/img`` and their timings
to a file. A page's time is the browser's own first contentful paint for that navigation,
measured once per visit by the tests; the figure here is the median of the visits of the run.

Run: ``python -m benchmarks.console_pages`` (about two minutes; needs /usr/bin/chromium).
``--check`` writes under ``var/bench`` and leaves ``docs/img`` and the results as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, median, save, this_command

TARGET_MS = 1000.0


def measure(shots: Path) -> dict[str, Any]:
    timings = WORK / "console-timings.json"
    timings.unlink(missing_ok=True)
    env = {
        **os.environ,
        "RECOFFER_CONSOLE_SHOTS": str(shots),
        "RECOFFER_CONSOLE_TIMINGS": str(timings),
        "RECOFFER_REQUIRE_BROWSER": "1",
    }
    command = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/browser"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the browser tests failed (exit {done.returncode}); no figures written")
    visits: dict[str, Any] = json.loads(timings.read_text())
    pages = {
        name: {
            "path": entry["path"],
            "role": entry["role"],
            "visits": len(entry["ms"]),
            "median_ms": median(entry["ms"]),
            "max_ms": max(entry["ms"]),
        }
        for name, entry in visits.items()
    }
    return {"pages": pages, "target_ms": TARGET_MS}


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Console: time to first render of every page",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}, while other agents kept the "
        "machine busy.",
        "",
        f"Command: `{doc['command']}`",
        "",
        "The demo shop (`tasks.py run`'s) on a real server, Debian's headless Chromium; each "
        "figure is the browser's first contentful paint of the page's navigation (median of "
        f"the run's visits). Target: under {doc['target_ms']:,.0f} ms each.",
        "",
        "| page | path | role | visits | median ms | max ms | target |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, row in sorted(doc["pages"].items()):
        met = "**met**" if row["median_ms"] < doc["target_ms"] else "**not met**"
        out.append(
            f"| {name} | `{row['path']}` | {row['role'] or '-'} | {row['visits']} | "
            f"{row['median_ms']:.0f} | {row['max_ms']:.0f} | {met} |"
        )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write under var/bench only")
    args = parser.parse_args()
    shots = WORK / "console-shots" if args.check else ROOT / "docs" / "img"
    data = measure(shots)
    path = save("console_pages", this_command(), data, WORK if args.check else RESULTS)
    print(f"wrote {path.relative_to(ROOT)}")
    for name, row in sorted(data["pages"].items()):
        print(f"{name:<40} {row['median_ms']:8.0f} ms")


if __name__ == "__main__":
    main()
