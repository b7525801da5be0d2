"""``recoffer import``: Online Retail's purchases into a fresh database, then the same again.

Per backend (SQLite, PostgreSQL), --repeats times on a fresh database each: the whole command
(read, check, write) timed by the command itself, and its rows per second (rows read / seconds);
the second import of the same file stores nothing and is timed too. Medians are saved.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.common import PYTHON, ROOT, median, save, this_command
from benchmarks.harness import Backend, fresh_database

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"


def one_import(url: str) -> dict[str, Any]:
    import subprocess

    command = [
        PYTHON, "-m", "training.cli", "import", "purchases", str(DATA),
        "--format", "online-retail", "--currency", "GBP", "--database-url", url, "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"Online Retail not found at {DATA}")
    results: dict[str, Any] = {}
    backends: tuple[Backend, ...] = ("sqlite", "postgresql")
    for backend in backends:
        first: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        for _ in range(args.repeats):
            with fresh_database(backend, "import") as url:
                if url is None:
                    break
                first.append(one_import(url))
                again.append(one_import(url))
            print(
                f"{backend}: {first[-1]['seconds']:.1f}s, again {again[-1]['seconds']:.1f}s",
                flush=True,
            )
        if not first:
            continue
        results[backend] = {
            "rows_read": first[0]["rows_read"],
            "written": first[0]["written"],
            "already_there": first[0]["already_there"],
            "seconds_median": median([r["seconds"] for r in first]),
            "rows_per_second_median": median([r["rows_per_second"] for r in first]),
            "again_written": again[0]["written"],
            "again_seconds_median": median([r["seconds"] for r in again]),
            "again_rows_per_second_median": median([r["rows_per_second"] for r in again]),
        }
    save("import_online_retail", this_command(), {"repeats": args.repeats, **results})


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    m = doc["machine"]
    out = [
        "## `recoffer import`: Online Retail into the service's database",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs. "
        f"Command: `{doc['command']}`",
        "",
        f"The whole command (read, check, write) on a fresh database, then the same file again "
        f"(stores nothing twice); medians of {doc['repeats']} runs.",
        "",
        "| database | rows read | stored | first import (s) | rows/s | again (s) | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("postgresql", "sqlite"):
        r = doc.get(name)
        if r is None:
            continue
        out.append(
            f"| {name} | {r['rows_read']:,} | {r['written']:,} | {r['seconds_median']:.1f} | "
            f"{r['rows_per_second_median']:,.0f} | {r['again_seconds_median']:.1f} | "
            f"{r['again_rows_per_second_median']:,.0f} |"
        )
    return [*out, ""]


if __name__ == "__main__":
    main()
