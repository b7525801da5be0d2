"""Segment computation: a bulk run of ``recoffer segments`` over 1,000,000 users and
10,000,000 events, on SQLite and on PostgreSQL: its time and the peak RSS of its process.

For each database: a fresh one, migrated, then seeded in bulk (not timed as part of the run):
``--events`` events of ``--users`` users drawn with ``numpy.random.default_rng(--seed)``,
spread over the last 365 days, 12 % purchases (one to three units, an exact price in EUR; a
user's purchases of one day are one order), 5 % add-to-cart, the rest views, and a coupon
redeemed by about 3 % of the purchases. SQLite is written with the driver's ``executemany``
and PostgreSQL with ``COPY``, the events' indexes dropped meanwhile and built again after
(one index build is much cheaper than ten million index updates). Then ``--rounds`` bulk runs,
each in a fresh process (``Segments.run`` as the CLI calls it, imports excluded from the time),
which reports its wall time and its own peak RSS (``VmHWM``; the database server's memory is
not in it).
The medians are reported; every run must segment every user who has an event.

    python -m benchmarks.segments                        # both databases, the full size
    python -m benchmarks.segments --users 100000 --events 1000000 --backend sqlite
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, median, save, this_command
from benchmarks.harness import BACKENDS, events_bulk_load, fresh_database

CHUNK = 500_000
# the child's own peak (benchmarks.common.peak_rss_mib: not the seeding parent's)
CHILD = """
import json, sys, time
from benchmarks.common import peak_rss_mib as peak_mib
from service.activity.repository import Repository
from service.clock import utc_now
from service.db import make_engine
from service.segments.repository import SegmentRepository
from service.segments.service import Segments
from service.settings import SegmentSettings
engine = make_engine(sys.argv[1], timeout_seconds=60)
segments = Segments(SegmentRepository(Repository(engine)), SegmentSettings(), utc_now)
started = time.perf_counter()
summary = segments.run()
seconds = time.perf_counter() - started
engine.dispose()
print(json.dumps({"seconds": seconds, "users": summary.users, "customers": summary.customers,
                  "typical_interval_days": summary.typical_interval_days,
                  "stages": summary.per_stage(), "loyalty_types": summary.per_type(),
                  "peak_rss_mib": peak_mib()}))
"""


def _chunks(users: int, events: int, seed: int, now: datetime) -> Iterator[dict[str, Any]]:
    """The seeded events, ``CHUNK`` at a time, as numpy columns."""
    rng = np.random.default_rng(seed)
    end = np.datetime64(now.replace(tzinfo=None), "s")
    for first in range(0, events, CHUNK):
        n = min(CHUNK, events - first)
        ago = rng.integers(0, 365 * 86_400, n)
        draw = rng.random(n)
        yield {
            "user": rng.integers(0, users, n),
            "item": rng.integers(0, 50_000, n),
            "type": np.where(draw < 0.12, 0, np.where(draw < 0.17, 1, 2)),
            "ts": end - ago.astype("timedelta64[s]"),
            "day": (end.astype("int64") - ago) // 86_400,
            "quantity": rng.integers(1, 4, n),
            "price": rng.integers(100, 1_000_000, n),  # 0.01 .. 100.00 in ten-thousandths
            "coupon": rng.random(n) < 0.03,
        }


TYPES = ("purchase", "add_to_cart", "view")


def _rows(chunk: dict[str, Any], sep: str) -> Iterator[tuple[Any, ...]]:
    stamps = np.datetime_as_string(chunk["ts"], unit="us")
    for user, item, kind, ts, day, qty, price in zip(
        chunk["user"].tolist(),
        chunk["item"].tolist(),
        chunk["type"].tolist(),
        stamps.tolist(),
        chunk["day"].tolist(),
        chunk["quantity"].tolist(),
        chunk["price"].tolist(),
        strict=True,
    ):
        moment = ts[:10] + sep + ts[11:]
        if kind == 0:
            yield (f"u{user}", f"i{item}", "purchase", moment, f"o{user}-{day}", qty, price, "EUR")
        else:
            yield (f"u{user}", f"i{item}", TYPES[kind], moment, None, None, None, None)


def _coupons(chunk: dict[str, Any], sep: str, first: int) -> Iterator[tuple[Any, ...]]:
    picked = np.flatnonzero(chunk["coupon"] & (chunk["type"] == 0))
    stamps = np.datetime_as_string(chunk["ts"][picked], unit="us").tolist()
    for k, (index, ts) in enumerate(zip(picked.tolist(), stamps, strict=True)):
        user, day = int(chunk["user"][index]), int(chunk["day"][index])
        moment = ts[:10] + sep + ts[11:]
        yield (
            f"C{first + k}",
            "bench",
            f"u{user}",
            f"a{first + k}",
            10.0,
            moment,
            moment,
            moment,
            f"o{user}-{day}",
        )


def seed(url: str, users: int, events: int, seed_value: int) -> dict[str, Any]:
    """Migrate ``url`` and store the seeded events and coupons; returns counts and seconds."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    with events_bulk_load(url) as engine:
        coupons = 0
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            assert database is not None
            raw = sqlite3.connect(database)
            raw.execute("PRAGMA synchronous=OFF")
            for number, chunk in enumerate(_chunks(users, events, seed_value, now)):
                received = now.strftime("%Y-%m-%d %H:%M:%S.000000")
                raw.executemany(
                    "INSERT INTO events (user_id, item_id, type, ts, order_id, quantity, price, "
                    f"currency, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{received}')",
                    _rows(chunk, " "),
                )
                rows = list(_coupons(chunk, " ", number * CHUNK))
                raw.executemany(
                    "INSERT INTO coupons (code, campaign_id, user_id, attribution_id, "
                    "discount_percent, issued_at, expires_at, redeemed_at, order_id, releases) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    rows,
                )
                coupons += len(rows)
                raw.commit()
            raw.close()
        else:
            raw_conn = engine.raw_connection()
            try:
                cursor = raw_conn.cursor()
                for number, chunk in enumerate(_chunks(users, events, seed_value, now)):
                    with cursor.copy(
                        "COPY events (user_id, item_id, type, ts, order_id, quantity, price, "
                        "currency, received_at) FROM STDIN"
                    ) as copy:
                        received = now.isoformat()
                        lines = [
                            "\t".join(
                                "\\N" if v is None else (f"{v}+00" if i == 3 else str(v))
                                for i, v in enumerate(row)
                            )
                            + f"\t{received}\n"
                            for row in _rows(chunk, "T")
                        ]
                        copy.write("".join(lines))
                    rows = list(_coupons(chunk, "T", number * CHUNK))
                    with cursor.copy(
                        "COPY coupons (code, campaign_id, user_id, attribution_id, "
                        "discount_percent, issued_at, expires_at, redeemed_at, order_id, "
                        "releases) FROM STDIN"
                    ) as copy:
                        for row in rows:
                            copy.write_row((*row[:5], *(f"{v}+00" for v in row[5:8]), row[8], 0))
                    coupons += len(rows)
                    raw_conn.commit()
            finally:
                raw_conn.close()
    return {"events": events, "coupons": coupons, "seed_seconds": time.perf_counter() - started}


def run_child(url: str) -> dict[str, Any]:
    proc = subprocess.run(
        [PYTHON, "-c", CHILD, url], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"segment run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure(backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    seeded = seed(url, args.users, args.events, args.seed)
    print(backend, "seeded", json.dumps(seeded), flush=True)
    runs = []
    for number in range(args.rounds):
        run = run_child(url)
        run["round"] = number + 1
        runs.append(run)
        print(backend, json.dumps(run), flush=True)
    return {
        **seeded,
        "runs": runs,
        "median_seconds": round(median([r["seconds"] for r in runs]), 2),
        "median_peak_rss_mib": round(median([r["peak_rss_mib"] for r in runs]), 1),
        "users_segmented": runs[-1]["users"],
    }


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    full = doc["users"] >= 1_000_000 and doc["events"] >= 10_000_000
    out = [
        "## Segments: bulk computation",
        "",
        f"On {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}, shared with other agents' work while measured (figures "
        "from a loaded machine); "
        + "; ".join(
            f"{b}: measured {r.get('date', doc['date'])} with `{r.get('command', doc['command'])}`"
            for b, r in doc["backends"].items()
        )
        + ".",
        "",
        f"`Segments.run` (what `recoffer segments` calls) over a fresh database of "
        f"{doc['users']:,} users and {doc['events']:,} events (12 % purchases, 5 % carts, the "
        "rest views, over 365 days; coupons on about 3 % of purchases), in a fresh process: "
        "one SQL aggregate per user into a temporary table, read twice in chunks (the shop's "
        "thresholds, then the rows), rows upserted in batches. Peak RSS is the run's own process "
        f"(the database server's memory is not in it). Medians of {doc['rounds']} run(s). "
        "Each database is seeded and segmented as of its own moment (the seed's times are "
        "relative to it), so a few users on a threshold may land in a neighbouring stage.",
        "",
        "| database | users segmented | with orders | seconds (median) | peak RSS MiB "
        "(median) | each run s | seeding s |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for backend, row in doc["backends"].items():
        each = ", ".join(f"{r['seconds']:.1f}" for r in row["runs"])
        out.append(
            f"| {backend} | {row['users_segmented']:,} | {row['runs'][-1]['customers']:,} | "
            f"{row['median_seconds']:.1f} | {row['median_peak_rss_mib']:.0f} | {each} | "
            f"{row['seed_seconds']:.0f} |"
        )
    out.append("")
    if not full:
        out += [
            "This is a smaller size than the target (1,000,000 users and 10,000,000 events): "
            "the full size did not fit the time the shared machine had; the same script runs "
            "it with its defaults (`python -m benchmarks.segments`).",
            "",
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where segments.json goes")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    backends = [args.backend] if args.backend else list(BACKENDS)
    previous = args.out / "segments.json"
    kept: dict[str, Any] = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        if (old.get("users"), old.get("events")) == (args.users, args.events):
            kept = old.get("backends", {})  # the other database, measured at the same size
    results: dict[str, Any] = {
        "users": args.users,
        "events": args.events,
        "rounds": args.rounds,
        "backends": {b: row for b, row in kept.items() if b not in backends},
    }
    for backend in backends:
        with fresh_database(backend, "recoffer_bench_segments") as url:
            if url is None:
                continue
            row = measure(backend, url, args)
            row["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            row["command"] = this_command()
            results["backends"][backend] = row
        save("segments", this_command(), results, args.out)  # after each database
    for backend, row in results["backends"].items():
        print(
            backend, "median seconds", row["median_seconds"], "peak MiB", row["median_peak_rss_mib"]
        )


if __name__ == "__main__":
    main()
