"""The two training engines side by side: pandas and Spark (issue 15, item 1).

For each synthetic shop size (``training.synthetic``, Parquet, generated untimed), in fresh
processes one after the other: ``recoffer train --tune-seconds 0`` with ``--engine pandas``,
``--engine spark --spark-fit implicit`` (implicit on the driver) and, where asked,
``--engine spark --spark-fit mllib`` (Spark MLlib ALS). Each reports its wall time, its time
per stage (the run's ``timings``), its peak memory (the Python process's peak RSS; for Spark
also the JVM's peak RSS, sampled from /proc, and their sum) and its served test NDCG@10.
``--large`` adds one bigger shop trained by the Spark engine alone, with the driver's JVM heap
bounded (``--spark-driver-memory``); the pandas engine's peak there is extrapolated from its
measured peaks (linear in purchases), not run.

Every run uses the same ``--eval-users`` (a seeded sample of test users; both engines) and
2 threads / ``local[2]``: the machine is a shared 2-core one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, save, this_command
from training.synthetic.shop import generate_shop, write_shop
from training.synthetic.spec import ShopSpec, spec_for

ENGINES = ("pandas", "spark-implicit", "spark-mllib")
# the larger shop: 20M purchases (spec_for("10m") scaled by 2 in users and purchases)
LARGE = {"20m": 2}


def shop_spec(preset: str) -> ShopSpec:
    if preset in LARGE:
        base = spec_for("10m")
        k = LARGE[preset]
        return replace(base, n_users=base.n_users * k, n_interactions=base.n_interactions * k)
    return spec_for(preset)


def shop_file(preset: str) -> Path:
    data = WORK / f"shop-{preset}" / "purchases.parquet"
    if not data.is_file():
        write_shop(generate_shop(shop_spec(preset)), data.parent, fmt="parquet")
    return data


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def measure_tree(command: list[str]) -> dict[str, Any]:
    """Run ``command``; wall time, its stdout, and the peak RSS of it and of its children
    (sampled every 0.2 s: a child's ``VmHWM`` is its own peak, read while it lives)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks: dict[int, tuple[str, int]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in [proc.pid, *_descendants(proc.pid)]:
                kib = _peak_kib(pid)
                if kib:
                    peaks[pid] = (_name(pid), max(kib, peaks.get(pid, ("", 0))[1]))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {err[-3000:]}")
    python_mib = peaks.get(proc.pid, ("", 0))[1] / 1024
    jvm_mib = sum(kib for name, kib in peaks.values() if name == "java") / 1024
    workers_mib = (
        sum(kib for pid, (name, kib) in peaks.items() if name != "java" and pid != proc.pid) / 1024
    )
    return {
        "wall_seconds": round(seconds, 2),
        "python_peak_rss_mib": round(python_mib, 1),
        "jvm_peak_rss_mib": round(jvm_mib, 1),
        "workers_peak_rss_mib": round(workers_mib, 1),
        "peak_rss_mib": round(python_mib + jvm_mib + workers_mib, 1),
        "doc": json.loads(out),
    }


def train(engine: str, data: Path, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        PYTHON,
        "-m",
        "training.cli",
        "train",
        "--data",
        str(data),
        "--model-dir",
        str(models),
        "--tune-seconds",
        "0",
        "--threads",
        "2",
        "--eval-users",
        str(args.eval_users),
        "--json",
    ]
    if engine.startswith("spark"):
        command += [
            "--engine",
            "spark",
            "--spark-master",
            "local[2]",
            "--spark-fit",
            engine.split("-", 1)[1],
            "--spark-driver-memory",
            args.driver_memory,
        ]
    subprocess.run(["rm", "-rf", str(models)], check=True)
    result = measure_tree(command)
    doc = result.pop("doc")
    served = doc["served_by_protocol"]
    row = {
        "engine": engine,
        **result,
        "pipeline_seconds": doc["timings"]["total"],
        "timings": doc["timings"],
        "served": served,
        "ndcg@10": {p: doc["metrics"][p][served[p]]["ndcg@10"] for p in served},
        "als_ndcg@10": {p: doc["metrics"][p]["als"]["ndcg@10"] for p in served},
        "eval_users": {p: doc["metrics"][p]["als"]["users"] for p in served},
    }
    print(
        f"{data.parent.name} {engine}: {row['wall_seconds']:.1f} s, peak {row['peak_rss_mib']:.0f}"
        f" MiB (python {row['python_peak_rss_mib']:.0f}, jvm {row['jvm_peak_rss_mib']:.0f}), "
        f"ndcg {row['ndcg@10']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2m,10m")
    parser.add_argument("--mllib-sizes", default="2m", help="sizes also fitted with MLlib")
    parser.add_argument("--large", default="", help="a shop for the Spark engine alone: 20m")
    # each run's sizes are merged into the results already written (by size)
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--driver-memory", default="3g")
    args = parser.parse_args()
    sizes: list[dict[str, Any]] = []
    mllib = set(filter(None, args.mllib_sizes.split(",")))
    for preset in filter(None, args.sizes.split(",")):
        data = shop_file(preset)
        spec = shop_spec(preset)
        runs = [
            train(engine, data, WORK / f"spark-engine-{preset}-{engine}", args)
            for engine in ENGINES
            if engine != "spark-mllib" or preset in mllib
        ]
        sizes.append(
            {
                "preset": preset,
                "users": spec.n_users,
                "items": spec.n_items,
                "purchases": spec.n_interactions,
                "runs": runs,
            }
        )
        _save(args, sizes, None)  # each size as it completes
    previous = RESULTS / "spark_engine.json"
    if not sizes and previous.is_file():  # --sizes '': the sizes measured before
        sizes = json.loads(previous.read_text())["sizes"]
    large = None
    if args.large:
        data = shop_file(args.large)
        spec = shop_spec(args.large)
        row = train("spark-implicit", data, WORK / f"spark-engine-{args.large}", args)
        pandas_peaks = [
            (s["purchases"], r["peak_rss_mib"])
            for s in sizes
            for r in s["runs"]
            if r["engine"] == "pandas"
        ]
        per_line = max(p / n for n, p in pandas_peaks) if pandas_peaks else None
        large = {
            "preset": args.large,
            "users": spec.n_users,
            "items": spec.n_items,
            "purchases": spec.n_interactions,
            "run": row,
            "pandas_peak_extrapolated_mib": None
            if per_line is None
            else round(per_line * spec.n_interactions, 0),
        }
    _save(args, sizes, large)


def _save(args: argparse.Namespace, sizes: list[dict[str, Any]], large: Any) -> None:
    """Write the results, merged by size into those already there (sizes run apart)."""
    previous = RESULTS / "spark_engine.json"
    if previous.is_file():
        before = json.loads(previous.read_text())
        mine = {s["preset"] for s in sizes}
        kept = [
            {"command": before["command"], **s} for s in before["sizes"] if s["preset"] not in mine
        ]
        sizes = kept + [{"command": this_command(), **s} for s in sizes]
        large = large if large is not None else before.get("large")
    order = ["2m", "10m"]
    sizes.sort(key=lambda s: order.index(s["preset"]) if s["preset"] in order else 99)
    save(
        "spark_engine",
        this_command(),
        {
            "eval_users": args.eval_users,
            "driver_memory": args.driver_memory,
            "sizes": sizes,
            "large": large,
        },
    )


def render(doc: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md (``benchmarks.report``)."""
    m = doc["machine"]
    out = [
        "## Training engines: pandas and Spark side by side",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}: a shared, busy machine (other "
        "work ran beside it), so compare the engines within one size, not with other sections.",
        "",
        "Commands: "
        + ", ".join(
            f"`{c}`" for c in dict.fromkeys(s.get("command", doc["command"]) for s in doc["sizes"])
        )
        + (f", `{doc['command']}` (the larger shop)" if doc.get("large") else ""),
        "",
        "Each engine in a fresh process, one after the other, on the same synthetic shop "
        "(Parquet): `recoffer train --tune-seconds 0 --threads 2 --eval-users "
        f"{doc['eval_users']}`, Spark with `--spark-master local[2] --spark-driver-memory "
        f"{doc['driver_memory']}`. Peak memory: the Python process's peak RSS, plus for Spark "
        "the driver JVM's (local mode: the executors live in it), sampled from /proc.",
        "",
        "| shop | purchases | engine | wall (s) | peak RSS (MiB) | of which JVM | served "
        "NDCG@10 all / novel | ALS NDCG@10 all / novel | time per stage (s) |",
        "|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for size in doc["sizes"]:
        for r in size["runs"]:
            stages = ", ".join(
                f"{k} {v:.1f}" for k, v in r["timings"].items() if k != "total" and v >= 0.05
            )
            out.append(
                f"| {size['preset']} | {size['purchases']:,} | {r['engine']} | "
                f"{r['wall_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['jvm_peak_rss_mib']:.0f} "
                f"| {r['ndcg@10']['all']:.4f} / {r['ndcg@10']['novel']:.4f} | "
                f"{r['als_ndcg@10']['all']:.4f} / {r['als_ndcg@10']['novel']:.4f} | {stages} |"
            )
    out.append("")
    for size in doc["sizes"]:
        by = {r["engine"]: r for r in size["runs"]}
        if "pandas" in by and "spark-implicit" in by:
            ratio = by["spark-implicit"]["wall_seconds"] / by["pandas"]["wall_seconds"]
            out.append(
                f"- {size['preset']}: Spark (implicit on the driver) takes {ratio:.2f}x the "
                "pandas engine's wall time."
            )
        if "spark-mllib" in by and "spark-implicit" in by:
            fit_m = sum(
                v for k, v in by["spark-mllib"]["timings"].items() if k == "spark_fit_mllib"
            )
            fit_i = sum(
                v for k, v in by["spark-implicit"]["timings"].items() if k == "spark_fit_implicit"
            )
            if fit_i > 0:
                out.append(
                    f"- {size['preset']}: fits of the three stages, MLlib {fit_m:.1f} s against "
                    f"implicit on the driver {fit_i:.1f} s ({fit_m / fit_i:.1f}x)."
                )
    measured = {size["preset"] for size in doc["sizes"]}
    missing = [preset for preset in ("2m", "10m") if preset not in measured]
    if missing:
        out.append(f"- Not in these results: the {', '.join(missing)} shop (see docs/spark.md).")
    out.append(
        "- The test users are seeded samples drawn in each engine's own user order (pandas: "
        "first purchase; Spark: sorted ids), so the two engines' figures here rest on different "
        "users; the quality comparison on the same users is docs/spark.md's (Online Retail)."
    )
    large = doc.get("large")
    if not large:
        out.append("- No shop larger than those above was trained here (see docs/spark.md).")
    if large:
        r = large["run"]
        out += [
            "",
            f"Larger shop, Spark engine only: {large['purchases']:,} purchases "
            f"({large['users']:,} users, {large['items']:,} items), `--spark-fit implicit`: "
            f"{r['wall_seconds']:.0f} s, peak {r['peak_rss_mib']:.0f} MiB (Python "
            f"{r['python_peak_rss_mib']:.0f}, JVM {r['jvm_peak_rss_mib']:.0f}). The pandas "
            "engine was not run at this size; its peak extrapolated linearly from the sizes "
            f"above: {large['pandas_peak_extrapolated_mib']:,.0f} MiB.",
        ]
    out.append("")
    return out


if __name__ == "__main__":
    main()
