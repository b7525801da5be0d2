"""The loyalty metrics of ``recoffer report`` on a purchase file of 1,000,000 customers and
10,000,000 orders: wall time and the peak RSS of the process that computes them.

The file (Parquet, generated once per size and seed under ``var/bench/``, not timed) is drawn
with ``numpy.random.default_rng(--seed)``: every customer has a first order on a day spread
over two years (2023-2024) and the other orders go to customers in proportion to a lognormal
weight (sigma 2), so that at 10 orders per customer on average the median customer has 2 (55 %
have one or two, 1 % more than 130, the largest about 15,000); a customer's orders fall between
their first day and the end of 2024. An order has 1 line (60 %), 2 (30 %) or 3 (10 %), 1.5
on average, within two minutes; items are drawn from 20,000 with a Zipf-like skew; quantities
1-3; prices 0.50-200.00 with two decimals; 2 % of the customers pay in GBP, the rest in EUR.

Each measured run is a fresh process (``benchmarks.common.measure``) that does what
``recoffer report --data FILE --json`` does without the printing: read and check the file as
the import would, then the monthly metrics and the cohort matrix (``training.report``: on
columns, or with ``--path reference`` on the reference core); it prints its times and its own
peak RSS (``VmHWM``).

With ``--path sqlite`` or ``--path postgresql`` the file's lines are stored as purchase events
in a fresh database (not timed) and the measured process is the API's way: ``Analytics.loyalty``
and ``Analytics.cohorts`` (what ``/v1/analytics/*`` call), each reading the lines back.

    python -m benchmarks.loyalty                                  # 1M customers, 10M orders
    python -m benchmarks.loyalty --customers 100000 --orders 1000000 --path sqlite
    python -m benchmarks.loyalty --customers 100000 --orders 1000000 --path reference

With ``--database URL`` the measured process is the same API's way on an existing database
(the demo shop's: ``recoffer demo --no-serve --workdir DIR --preset demo``), nothing seeded;
its row is keyed by the database's name.

    python -m benchmarks.loyalty --database sqlite:////tmp/fa-demo/recoffer.db
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, RESULTS, WORK, measure, save, this_command
from benchmarks.harness import events_bulk_load

CHUNK = 1_000_000  # orders written per Parquet row group
START = np.datetime64("2023-01-01T00:00:00", "s")
SPAN = 2 * 365 * 86_400  # seconds: two years
ITEMS = 20_000

CHILD = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from benchmarks.common import report_peak
from training.report import report_figures
imported = time.perf_counter()
timings = {}
figures = report_figures(Path(sys.argv[1]), reference=sys.argv[2] == "reference",
                         timings=timings)
done = time.perf_counter()
periods = figures["loyalty"]["periods"]
print(json.dumps({"import_seconds": imported - started, "seconds": done - imported,
                  "timings": timings, "periods": len(periods),
                  "customers_last": periods[-1]["customers_at_end"],
                  "orders": sum(p["orders"] for p in periods),
                  "cohorts": len(figures["cohorts"]["cohorts"])}))
report_peak()
"""


def generate(path: Path, customers: int, orders: int, seed: int) -> dict[str, Any]:
    """Write the seeded purchase file to ``path``; returns its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    first = rng.integers(0, SPAN - 86_400, customers)  # each customer's first order
    weight = rng.lognormal(0.0, 2.0, customers)
    others = rng.choice(customers, size=orders - customers, p=weight / weight.sum())
    owner = np.concatenate([np.arange(customers), others])
    rng.shuffle(owner)
    gbp = rng.random(customers) < 0.02
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer: pq.ParquetWriter | None = None
    lines = 0
    items = np.arange(1, ITEMS + 1, dtype=np.float64) ** -0.8
    items /= items.sum()
    for low in range(0, orders, CHUNK):
        who = owner[low : low + CHUNK]
        n = len(who)
        start = first[who]
        at = start + (rng.random(n) * (SPAN - start)).astype(np.int64)
        count = rng.choice(3, size=n, p=[0.6, 0.3, 0.1]) + 1
        order_no = np.repeat(np.arange(low, low + n), count)
        user = np.repeat(who, count)
        moment = np.repeat(at, count) + rng.integers(0, 120, count.sum())  # lines within 2 min
        k = len(user)
        item = rng.choice(ITEMS, size=k, p=items)
        cents = rng.integers(50, 20_001, k)
        frame = pa.table(
            {
                "user_id": pa.array(np.char.add("u", user.astype(str))),
                "item_id": pa.array(np.char.add("i", item.astype(str))),
                "timestamp": pa.array(START + moment.astype("timedelta64[s]")),
                "quantity": pa.array(rng.integers(1, 4, k)),
                "price": pa.array(np.char.add(np.char.add((cents // 100).astype(str), "."),
                                              np.char.zfill((cents % 100).astype(str), 2))),
                "currency": pa.array(np.where(gbp[user], "GBP", "EUR")),
                "order_id": pa.array(np.char.add("o", order_no.astype(str))),
            }
        )  # fmt: skip
        if writer is None:
            writer = pq.ParquetWriter(tmp, frame.schema)
        writer.write_table(frame)
        lines += k
    assert writer is not None
    writer.close()
    tmp.replace(path)
    return {"customers": customers, "orders": orders, "lines": lines}


DATABASE_CHILD = """
import json, sys, time
started = time.perf_counter()
from benchmarks.common import report_peak
from service.analytics.service import Analytics
from service.db import make_engine
engine = make_engine(sys.argv[1], timeout_seconds=600)
analytics = Analytics(engine)
imported = time.perf_counter()
by_period = analytics.loyalty("month", None, None)
read = time.perf_counter()
matrix = analytics.cohorts(None, None)
done = time.perf_counter()
engine.dispose()
periods = by_period["periods"]
print(json.dumps({"import_seconds": imported - started, "seconds": done - imported,
                  "timings": {"loyalty": read - imported, "cohorts": done - read},
                  "periods": len(periods), "customers_last": periods[-1]["customers_at_end"],
                  "orders": sum(p["orders"] for p in periods), "cohorts": len(matrix["cohorts"])}))
report_peak()
"""


def seed(path: Path, url: str) -> float:  # a file's lines into the events table
    """Store the file's lines as purchase events of a migrated database; returns seconds."""
    import sqlite3
    import time

    import pyarrow.parquet as pq

    started = time.perf_counter()
    with events_bulk_load(url) as engine:
        received = "2025-01-01 00:00:00.000000"
        columns = "user_id, item_id, type, ts, order_id, quantity, price, currency, received_at"
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            assert database is not None
            raw = sqlite3.connect(database)
            raw.execute("PRAGMA synchronous=OFF")
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK):
                raw.executemany(
                    f"INSERT INTO events ({columns}) VALUES (?, ?, 'purchase', ?, ?, ?, ?, ?, ?)",
                    _rows(batch, " ", received),
                )
                raw.commit()
            raw.close()
        else:
            raw_conn = engine.raw_connection()
            try:
                cursor = raw_conn.cursor()
                for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK):
                    with cursor.copy(f"COPY events ({columns}) FROM STDIN") as copy:
                        for row in _rows(batch, "T", received):
                            copy.write_row(
                                (*row[:2], "purchase", f"{row[2]}+00", *row[3:7], f"{row[7]}+00")
                            )
                    raw_conn.commit()
            finally:
                raw_conn.close()
    return time.perf_counter() - started


def _rows(batch: Any, sep: str, received: str) -> Any:
    """One events row per line: the price in ten-thousandths, as the amount column stores it."""
    stamps = np.datetime_as_string(batch.column("timestamp").to_numpy(), unit="us").tolist()
    prices = batch.column("price").to_pylist()
    for user, item, ts, order, qty, price, cur in zip(
        batch.column("user_id").to_pylist(),
        batch.column("item_id").to_pylist(),
        stamps,
        batch.column("order_id").to_pylist(),
        batch.column("quantity").to_pylist(),
        prices,
        batch.column("currency").to_pylist(),
        strict=True,
    ):
        units = int(price.replace(".", "")) * 100  # two decimals -> ten-thousandths
        yield (user, item, ts[:10] + sep + ts[11:], order, qty, units, cur, received)


def run(path: Path, which: str) -> dict[str, Any]:
    done = measure([PYTHON, "-c", CHILD, str(path), which])
    if done.returncode != 0:
        raise SystemExit(f"report run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(done.seconds, 2)
    result["peak_rss_mib"] = done.peak_rss_mib
    return result


def run_database(url: str) -> dict[str, Any]:
    done = measure([PYTHON, "-c", DATABASE_CHILD, url])
    if done.returncode != 0:
        raise SystemExit(f"database run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(done.seconds, 2)
    result["peak_rss_mib"] = done.peak_rss_mib
    return result


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Loyalty metrics: `recoffer report` on 1,000,000 customers and 10,000,000 orders",
        "",
        f"On {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}, shared with other agents' work while measured (figures "
        "from a loaded machine). Each row was measured with its own command (last column).",
        "",
        "A seeded Parquet purchase file (`benchmarks/loyalty.py`: every customer a first order "
        "over two years, the other orders by a lognormal weight: at 10 orders per customer on "
        "average the median customer has 2, 1 % more than 130; 1.5 lines per order; 2 % of "
        "customers in GBP), read and "
        "checked as `recoffer import` would, then the monthly metrics and the cohort matrix, in "
        "a fresh process: its wall time (imports excluded) and its own peak RSS. `columns` is "
        "what `recoffer report --data` runs (`service/analytics/columns.py`), `reference` the "
        "core on `Line` objects that `recoffer report --database-url` runs on the database's "
        "lines.",
        "",
        "`sqlite` and `postgresql` are the API's way (`Analytics.loyalty` and `.cohorts`, "
        "what `/v1/analytics/*` calls): the file's lines stored as purchase events in a fresh "
        "database (seeding not timed), each report reading them back into columns "
        "(`columns.read_columns`: the driver's rows, prices as their stored integers) and "
        "computing on `service/analytics/columns.py`; peak RSS is the service process's, not "
        "the database server's. Until 2026-12-01 18:07 UTC this way built `Line` objects and "
        "ran the reference core: 59 s (SQLite) and 53 s (PostgreSQL), 1.2 GiB, at 1,000,000 "
        "orders. `sqlite (demo shop)` is the same on the database of `recoffer demo --preset "
        "demo` (`--database URL`), its first request also importing numpy and pandas; the same "
        "child on the commit before (960d315, `Line` objects) took 5.5 and 6.0 s there (loyalty "
        "2.7-3.0, cohorts 2.5-3.4).",
        "",
        "| customers | orders | lines | path | seconds | where the time goes (s) | "
        "peak RSS MiB | measured | command |",
        "|---:|---:|---:|---|---:|---|---:|---|---|",
    ]
    for row in sorted(doc["runs"].values(), key=lambda r: (r["orders"], r["path"])):
        t = row["timings"]
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in t.items())
        out.append(
            f"| {row['customers']:,} | {row['orders']:,} | {row['lines']:,} | {row['path']} | "
            f"{row['seconds']:.1f} | {phases} | "
            f"{row['peak_rss_mib']:.0f} | {row['date']} | `{row['command']}` |"
        )
    out.append("")
    runs = list(doc["runs"].values())
    full = [r for r in runs if r["orders"] >= 10_000_000 and r["path"] == "columns"]
    if full:
        row = full[0]
        out.append(
            f"- Target (1,000,000 customers, 10,000,000 orders): {row['seconds']:.0f} s and "
            f"{row['peak_rss_mib'] / 1024:.1f} GiB peak on columns, reading and checking the "
            f"file {row['timings']['read']:.0f} s of it."
        )
    why = {
        "reference": "the reference core holds each as an object",
        "sqlite": "each is read through the driver's rows",
        "postgresql": "each is read through the driver's rows",
    }
    for path in ("reference", "sqlite", "postgresql"):
        slow = [r for r in runs if r["path"] == path]
        if not slow or any(r["orders"] >= 10_000_000 for r in slow):
            continue
        big = max(slow, key=lambda r: r["orders"])
        times = 10_000_000 / big["orders"]
        out.append(
            f"- `{path}` not run at 10,000,000 orders: at {big['orders']:,} it took "
            f"{big['seconds']:.0f} s and {big['peak_rss_mib']:,.0f} MiB, and both grow with the "
            f"lines ({why[path]}), so about "
            f"{big['seconds'] * times / 60:.0f} min and {big['peak_rss_mib'] * times / 1024:.0f} "
            "GiB there (extrapolated, not measured)."
        )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--path",
        choices=("columns", "reference", "sqlite", "postgresql"),
        default="columns",
        help="the file on columns or on the reference core, or the API's way: the file's "
        "lines stored in a fresh database, read back by the service (columns)",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="measure the API's way on this existing database instead (e.g. the demo shop's)",
    )
    parser.add_argument("--name", default="demo shop", help="what --database holds (its row)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where loyalty.json goes")
    args = parser.parse_args()
    if args.orders < args.customers:
        parser.error("--orders must be at least --customers (every customer has an order)")
    if args.database:
        row = existing(args.database, args.name)
        save_row(args.out, row["path"], row)
        return
    data = WORK / f"loyalty-{args.customers}-{args.orders}-{args.seed}.parquet"
    counts: dict[str, Any] = {"customers": args.customers, "orders": args.orders}
    if not data.is_file():
        print("generating", data, flush=True)
        counts = generate(data, args.customers, args.orders, args.seed)
    import pyarrow.parquet as pq

    counts["lines"] = pq.ParquetFile(data).metadata.num_rows
    if args.path in ("columns", "reference"):
        measured = run(data, args.path)
    else:
        from benchmarks.harness import fresh_database

        with fresh_database(args.path, "recoffer_bench_loyalty") as url:
            if url is None:
                raise SystemExit(f"no {args.path} database reachable")
            seconds = seed(data, url)
            print("seeded", url.split("@")[-1], f"{seconds:.0f} s", flush=True)
            measured = run_database(url)
            measured["seed_seconds"] = round(seconds, 1)
    save_row(
        args.out,
        f"{args.customers}/{args.orders}/{args.path}",
        {**counts, "path": args.path, **measured},
    )


def existing(url: str, label: str) -> dict[str, Any]:
    """The API's way on a database as it is: its counts (not timed), then the measured run."""
    from sqlalchemy import func, select

    from service.db import make_engine
    from service.tables import events

    engine = make_engine(url)
    e = events.c
    with engine.connect() as conn:
        purchases = e.type == "purchase"
        lines = conn.execute(select(func.count()).where(purchases)).scalar_one()
        customers = conn.execute(select(func.count(func.distinct(e.user_id))).where(purchases))
        users = customers.scalar_one()
    engine.dispose()
    measured = run_database(url)
    name = f"{engine.dialect.name} ({label})"
    counts = {"customers": users, "orders": measured["orders"], "lines": lines}
    return {**counts, "path": name, **measured}


def save_row(out: Path, key: str, row: dict[str, Any]) -> None:
    """Add ``row`` to ``loyalty.json`` under ``key``, keeping the other rows."""
    row["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    row["command"] = this_command()
    print(json.dumps(row), flush=True)
    previous = out / "loyalty.json"
    runs = json.loads(previous.read_text()).get("runs", {}) if previous.is_file() else {}
    runs[key] = row
    save("loyalty", this_command(), {"runs": runs}, out)


if __name__ == "__main__":
    main()
