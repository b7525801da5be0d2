"""Predicted lifetime value (``recoffer clv``): the holdout check and the fit times on Online
Retail and on the demo shop, and with ``--install`` what the ``clv`` extra costs to install.

* Online Retail (``../shared/data/online-retail``, read as ``recoffer import --format
  online-retail --currency GBP`` would store it): ``recoffer clv --json`` in a fresh process,
  once with an empty PyTensor compile cache (the first run on a machine: PyTensor compiles its
  C code) and once with that cache filled; the holdout figures are the second run's.
* In this process, on Online Retail and on the ``demo`` synthetic shop (what ``recoffer demo``
  serves): ``training.clv.fit`` (BG/NBD + Gamma-Gamma by MAP) ``--repeats`` times on the whole
  data; each fit builds and compiles the models' graphs (from PyTensor's C cache in
  ``~/.pytensor`` as it is), the first in the process loads that cache too. The demo shop's
  holdout check too.
* The table behind the API at scale: ``--rows`` (default 1,000,000) predictions written by
  ``service.analytics.value.write`` into a fresh SQLite database (one transaction, the users'
  rows checked), then ``read_summary`` (what ``GET /v1/analytics/customer-value`` runs), the
  median of 3.
* ``--install``: a new virtual environment gets the project's base dependencies, then the
  ``clv`` extra's; the seconds and the growth of the environment on disk (pip's own indexes
  and caches as this machine has them).

Writes ``benchmarks/results/clv.json``.

    python -m benchmarks.clv [--repeats 3] [--rows 1000000] [--install]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import venv
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, WORK, measure, save, this_command

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
OR_ARGS = ["--data", str(DATA), "--format", "online-retail", "--currency", "GBP"]


def _size_mib(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 2**20


def _cli(args: list[str], compiledir: Path) -> tuple[float, dict[str, Any]]:
    env = {"PYTENSOR_FLAGS": f"base_compiledir={compiledir}"}
    run = measure([PYTHON, "-m", "training.cli", "clv", *args, "--json"], env=env)
    if run.returncode != 0:
        raise SystemExit(f"recoffer clv failed: {run.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(run.stdout)
    return run.seconds, doc


def _fits(lines: list[Any], repeats: int) -> dict[str, Any]:
    from training import clv

    data = clv.transactions(lines)
    summary = clv.summary_of(data.frame, data.end)
    seconds = [clv.fit(summary).seconds for _ in range(repeats)]
    return {
        "customers": len(summary),
        "orders": data.orders,
        "first_fit_seconds": seconds[0],
        "warm_fit_seconds": statistics.median(seconds[1:]) if repeats > 1 else None,
        "fit_seconds": seconds,
    }


def _demo_lines() -> list[Any]:
    from service.analytics.loyalty import Line
    from training.synthetic.shop import generate_shop
    from training.synthetic.spec import spec_for

    shop = generate_shop(spec_for("demo"))
    return [
        Line(
            user_id=str(r.user_id),
            order_key=str(r.order_id),
            ts=r.timestamp.to_pydatetime(),
            item_id=str(r.item_id),
            amount=Decimal(f"{float(r.price):.2f}") * int(r.quantity),
            currency="EUR",
        )
        for r in shop.purchases.itertuples(index=False)
    ]


def _install() -> dict[str, Any]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, extra = project["dependencies"], project["optional-dependencies"]["clv"]
    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="clv-venv-", dir=WORK))
    try:
        venv.create(folder, with_pip=True)
        pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run([*pip, *base], check=True, capture_output=True)
        base_seconds = time.perf_counter() - started
        base_mib = _size_mib(folder)
        started = time.perf_counter()
        subprocess.run([*pip, *extra], check=True, capture_output=True)
        extra_seconds = time.perf_counter() - started
        return {
            "requirement": extra,
            "base_seconds": base_seconds,
            "base_mib": base_mib,
            "extra_seconds": extra_seconds,
            "extra_mib": _size_mib(folder) - base_mib,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _table(rows: int) -> dict[str, Any]:
    """Write ``rows`` synthetic predictions and read the API's summary of them (SQLite)."""
    import random
    from datetime import UTC, datetime

    from benchmarks.harness import fresh_sqlite
    from service.analytics.value import CustomerValue, Run, read_summary, write
    from service.db import make_engine, migrate
    from service.tables import users

    rng = random.Random(13)
    now = datetime.now(UTC)
    values = [
        CustomerValue(
            f"u{n:07d}",
            round(rng.expovariate(1.0), 6),
            round(rng.random(), 6),
            Decimal(rng.randrange(100, 100_000)) / 100,
            Decimal(rng.randrange(0, 1_000_000)) / 100,
        )
        for n in range(rows)
    ]
    with fresh_sqlite("recoffer-clv-table") as url:
        engine = make_engine(url, timeout_seconds=60)
        try:
            migrate(engine)
            with engine.begin() as conn:
                for start in range(0, rows, 50_000):
                    conn.execute(
                        users.insert(),
                        [
                            {"user_id": v.user_id, "first_seen_at": now, "attributes": {},
                             "created_at": now, "updated_at": now}
                            for v in values[start : start + 50_000]
                        ],
                    )  # fmt: skip
            started = time.perf_counter()
            written = write(engine, values, Run("EUR", 90, now, now))
            write_seconds = time.perf_counter() - started
            reads = []
            for _ in range(3):
                started = time.perf_counter()
                summary = read_summary(engine, 10)
                reads.append(time.perf_counter() - started)
        finally:
            engine.dispose()
    assert summary["customers"] == written == rows
    return {
        "rows": rows,
        "write_seconds": write_seconds,
        "read_seconds": statistics.median(reads),
        "reads": reads,
    }


def measure_all(repeats: int, rows: int, install: bool) -> dict[str, Any]:
    from training.report import file_lines

    result: dict[str, Any] = {"repeats": repeats}
    if rows:
        result["table"] = _table(rows)
    if install:
        result["install"] = _install()
    WORK.mkdir(parents=True, exist_ok=True)
    compiledir = Path(tempfile.mkdtemp(prefix="clv-pytensor-", dir=WORK))
    try:  # the two commands share a compile cache of their own, empty for the first
        cold, _ = _cli(OR_ARGS, compiledir)
        warm, doc = _cli(OR_ARGS, compiledir)
    finally:
        shutil.rmtree(compiledir, ignore_errors=True)
    # in this process: PyTensor's own cache (~/.pytensor, as for any run of the command)
    or_lines = file_lines(DATA, fmt="online-retail", currency="GBP")
    result["online_retail"] = {
        "command_cold_seconds": cold,
        "command_warm_seconds": warm,
        "holdout": doc["holdout"],
        "summary": doc["summary"],
        "model": doc["model"],
        **_fits(or_lines, repeats),
    }
    del or_lines
    from training import clv

    lines = _demo_lines()
    data = clv.transactions(lines)
    started = time.perf_counter()
    check = clv.holdout_check(data)
    result["demo"] = {
        "holdout": check,
        "holdout_seconds": time.perf_counter() - started,
        **_fits(lines, repeats),
    }
    return result


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _holdout_rows(check: dict[str, Any]) -> list[str]:
    out = [
        "| | predicted | actual | predicted / actual | MAE per customer | RMSE | correlation |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("BG/NBD", "model"), ("baseline: calibration rate", "baseline")):
        f = check[key]
        out.append(
            f"| {label} | {_f(f['predicted'], 1)} | {_f(check['actual'], 0)} | "
            f"{_f(f['ratio'])} | {_f(f['mae'])} | {_f(f['rmse'])} | {_f(f['correlation'])} |"
        )
    out += [
        "",
        "| calibration repeat days | customers | actual (mean) | BG/NBD | baseline |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b in check["by_frequency"]:
        out.append(
            f"| {b['frequency']} | {b['customers']:,} | {_f(b['actual'])} | {_f(b['model'])} | "
            f"{_f(b['baseline'])} |"
        )
    return out


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    o, d = doc["online_retail"], doc["demo"]
    check, summary = o["holdout"], o["summary"]
    bg = o["model"]["parameters"]["bg_nbd"]
    gg = o["model"]["parameters"]["gamma_gamma"]
    out = [
        "## Predicted lifetime value: holdout check and fit time",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}, shared with other agents' work "
        f"(a loaded machine). Command: `{doc['command']}`; pymc-marketing "
        f"{o['model']['version']}, BG/NBD + Gamma-Gamma by MAP.",
        "",
        f"**Online Retail** (`recoffer clv {' '.join(OR_ARGS[2:])} --data ...`): fitted on "
        f"{check['calibration_start']} .. {check['calibration_end']}, purchase days of its "
        f"{check['customers']:,} customers in the holdout {check['holdout_start']} .. "
        f"{check['holdout_end']} ({check['holdout_days']} days):",
        "",
        *_holdout_rows(check),
        "",
        f"Holdout value (predicted purchase days x expected order value): BG/NBD + Gamma-Gamma "
        f"GBP {check['value']['model']:,.0f}, baseline GBP {check['value']['baseline']:,.0f}, "
        f"actual GBP {check['value']['actual']:,.0f}.",
        "",
        f"Whole data (orders up to {check['holdout_end']}): {summary['customers']:,} customers, "
        f"BG/NBD r = {bg['r']:.3f}, alpha = {bg['alpha']:.2f}, a = {bg['a']:.4g}, "
        f"b = {bg['b']:.4g}; Gamma-Gamma p = {gg['p']:.3f}, q = {gg['q']:.3f}, v = {gg['v']:.1f}. "
        f"Predicted value over the next {summary['horizon_days']} days: total GBP "
        f"{Decimal(summary['total']):,}, mean {summary['mean']}, median "
        f"{summary['quantiles']['p50']}, p90 {summary['quantiles']['p90']}, p99 "
        f"{summary['quantiles']['p99']}.",
        "",
        "| data | customers | orders | first fit s | later fits s (median) | whole command s |",
        "|---|---:|---:|---:|---:|---|",
        f"| Online Retail | {o['customers']:,} | {o['orders']:,} | {o['first_fit_seconds']:.1f} "
        f"| {_f(o['warm_fit_seconds'], 1)} | {o['command_cold_seconds']:.0f} with an empty "
        f"compile cache, {o['command_warm_seconds']:.0f} with it filled (two fits and the "
        "file's reading included) |",
        f"| demo shop | {d['customers']:,} | {d['orders']:,} | {d['first_fit_seconds']:.1f} | "
        f"{_f(d['warm_fit_seconds'], 1)} | - |",
        "",
    ]
    dc = d["holdout"]
    out += [
        f"Demo shop holdout ({dc['holdout_start']} .. {dc['holdout_end']}, "
        f"{dc['customers']:,} customers): BG/NBD predicted {dc['model']['predicted']:,.0f} "
        f"purchase days against {dc['actual']:,.0f} (ratio {dc['model']['ratio']:.3f}, MAE "
        f"{dc['model']['mae']:.3f}, correlation {_f(dc['model']['correlation'])}); baseline "
        f"{dc['baseline']['predicted']:,.0f} (ratio {dc['baseline']['ratio']:.3f}, MAE "
        f"{dc['baseline']['mae']:.3f}, correlation {_f(dc['baseline']['correlation'])}).",
        "",
    ]
    if "table" in doc:
        t = doc["table"]
        out += [
            f"The table behind `GET /v1/analytics/customer-value` (SQLite): {t['rows']:,} "
            f"predictions written in one transaction in {t['write_seconds']:.1f} s; the "
            f"endpoint's summary of them (count, sums, the six quantiles' ranks by the index, "
            f"the top 10) read in {t['read_seconds'] * 1000:,.0f} ms (median of 3).",
            "",
        ]
    if "install" in doc:
        i = doc["install"]
        out += [
            f"The `clv` extra (`{', '.join(i['requirement'])}`) on top of the base "
            f"dependencies: {i['extra_seconds']:.0f} s to install, "
            f"{i['extra_mib']:.0f} MiB more in the environment (the base: "
            f"{i['base_seconds']:.0f} s, {i['base_mib']:.0f} MiB).",
            "",
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="0: skip the table")
    parser.add_argument("--install", action="store_true", help="measure the extra's install")
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"Online Retail not found at {DATA}")
    result = measure_all(max(args.repeats, 1), args.rows, args.install)
    path = save("clv", this_command(), result)
    print(json.dumps({k: v for k, v in result.items() if k != "demo"}, indent=2, default=str))
    print(f"wrote {path}")
    sys.exit(0)


if __name__ == "__main__":
    main()
