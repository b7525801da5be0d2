"""The loyalty metrics of ``recoffer report`` on a purchase file of 1,000,000 customers and
10,000,000 orders: wall time and the peak RSS of the process that computes them.

The file (Parquet, generated once per size and seed under ``var/bench/``, not timed) is drawn
with ``numpy.random.default_rng(--seed)``: every customer has a first order on a day spread
over two years (2023-2024) and the other orders go to customers in proportion to a lognormal
weight (sigma 2), so that at 10 orders per customer on average the median customer has 2 (55 %
have one or two, 1 % more than 130, the largest about 15,000); a customer's orders fall between
their first day and the end of 2024. An order has 1 line (60 %),
2 (30 %) or 3 (10 %), 1.5 on average; items are drawn from 20,000 with a Zipf-like skew;
quantities 1-3; prices 0.50-200.00 with two decimals; 2 % of the customers pay in GBP, the
rest in EUR.

Each measured run is a fresh process (``benchmarks.common.measure``) that does what
``recoffer report --data FILE --json`` does without the printing: read and check the file as
the import would (``training.report``), then the monthly metrics and the cohort matrix
(``service.analytics``); it prints its times and its own peak RSS (``VmHWM``).

    python -m benchmarks.loyalty                                  # 1M customers, 10M orders
    python -m benchmarks.loyalty --customers 100000 --orders 1000000 --path reference
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, RESULTS, WORK, measure, save, this_command

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


def run(path: Path, which: str) -> dict[str, Any]:
    done = measure([PYTHON, "-c", CHILD, str(path), which])
    if done.returncode != 0:
        raise SystemExit(f"report run failed:\n{done.stderr[-3000:]}")
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
        "what `recoffer report --data` runs (`training/loyalty_columns.py`), `reference` the "
        "core on `Line` objects that the API runs on the database's lines.",
        "",
        "| customers | orders | lines | path | seconds | of which reading | metrics | "
        "peak RSS MiB | measured | command |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in sorted(doc["runs"].values(), key=lambda r: (r["orders"], r["path"])):
        t = row["timings"]
        out.append(
            f"| {row['customers']:,} | {row['orders']:,} | {row['lines']:,} | {row['path']} | "
            f"{row['seconds']:.1f} | {t['read']:.1f} | {t['metrics']:.1f} | "
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
    slow = [r for r in runs if r["path"] == "reference"]
    if slow and not any(r["orders"] >= 10_000_000 for r in slow):
        big = max(slow, key=lambda r: r["orders"])
        times = 10_000_000 / big["orders"]
        out.append(
            f"- Not run on the reference path at 10,000,000 orders: at {big['orders']:,} it "
            f"took {big['seconds']:.0f} s and {big['peak_rss_mib']:,.0f} MiB, and both grow with "
            f"the lines, so about {big['seconds'] * times / 60:.0f} min and "
            f"{big['peak_rss_mib'] * times / 1024:.0f} GiB there. The API "
            "(`/v1/analytics/*`) computes on the database's lines with that core: fine for a "
            "shop's first million orders, not for ten (not measured on a database here)."
        )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--path", choices=("columns", "reference"), default="columns")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where loyalty.json goes")
    args = parser.parse_args()
    if args.orders < args.customers:
        parser.error("--orders must be at least --customers (every customer has an order)")
    data = WORK / f"loyalty-{args.customers}-{args.orders}-{args.seed}.parquet"
    counts: dict[str, Any] = {"customers": args.customers, "orders": args.orders}
    if not data.is_file():
        print("generating", data, flush=True)
        counts = generate(data, args.customers, args.orders, args.seed)
    import pyarrow.parquet as pq

    counts["lines"] = pq.ParquetFile(data).metadata.num_rows
    row = {**counts, "path": args.path, **run(data, args.path)}
    row["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    row["command"] = this_command()
    print(json.dumps(row), flush=True)
    previous = args.out / "loyalty.json"
    runs = json.loads(previous.read_text()).get("runs", {}) if previous.is_file() else {}
    runs[f"{args.customers}/{args.orders}/{args.path}"] = row
    save("loyalty", this_command(), {"runs": runs}, args.out)


if __name__ == "__main__":
    main()
