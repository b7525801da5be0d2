"""Render docs/scaling.md, the capacity page, from benchmarks/results/*.json only.

For 100k, 1M and 10M users and 20k, 200k and 1M items: memory per API worker, artifact size,
training time per engine, requests per second per core, what breaks first and what to deploy.
Every figure is read from a results file; a cell is either **measured** (a probe of that size,
or a size the figure does not depend on, said so) or **derived** from measured per-unit costs
with the formula printed under the table. A results file that is absent gives the cell
"not measured in this run", never a number made up here.

    python -m benchmarks.scaling          # writes docs/scaling.md
    python -m benchmarks.scaling --check  # exit 1 when docs/scaling.md is not what it renders

The keys read from each file (a file or key that is absent: "not measured in this run"):

- ``capacity.json`` (``python -m benchmarks.capacity``): ``probes[]`` with ``users``,
  ``items``, ``history_per_user``, ``artifact_bytes``, ``rss_before_mib``, ``rss_after_mib``,
  ``peak_mib``, ``load_seconds``, ``precomputed``, ``candidates_bytes``,
  ``precompute_max_cells``, ``known.cpu_us``, ``known.p50_ms``, ``known.p99_ms``,
  ``session.cpu_us``; and ``factors``.
- ``experiment_serving.json``: ``cpu_us_per_request.one.known`` (list; median taken): the
  server's CPU per known-user request through HTTP on the Online Retail model (``users``,
  ``items``), the per-request cost outside the scoring.
- ``serving_memory.json``: ``medians["this tree (owned)"]["1"].worker_rss_mib`` and
  ``model_files_mib``: one real worker's resident set, for comparison.
- ``train_synthetic.json`` (the pandas engine): ``sizes[]`` with ``users``, ``items``,
  ``interactions`` (purchase lines), ``train_wall_seconds``, ``train_peak_rss_mib``; and
  ``machine.memory_gib``.
- ``spark_engine.json`` (issue 15, item 1): ``sizes[]`` with ``purchases`` and ``runs[]``,
  each with ``engine`` (``pandas``, ``spark-implicit``, ``spark-mllib``), ``wall_seconds`` and
  ``peak_rss_mib`` (the driver's and its JVM's together); the pandas run measured beside the
  Spark ones is preferred to ``train_synthetic.json`` for the same size.
- ``eval_scale.json`` (issue 15, item 2): ``sizes[]`` with ``items``, ``of_users``,
  ``old_cap_users``, ``users``, ``cpu_seconds`` (one recipe, both protocols), ``peak_rss_mib``.
- ``ann_index.json`` (issue 15, item 4): ``users``, ``items``, ``ann.library``,
  ``artifact_arrays_mib``, ``index_mib``, ``in_process.recall_at_10.known`` / ``.session``,
  ``in_process.<mode>.known|session.cpu_p50_ms|cpu_p99_ms`` and
  ``results.<mode>.known.p50_ms|p99_ms`` and ``results.<mode>.workers[0].rss_mib|own_mib`` for
  the modes ``exact`` and ``index``.
- ``replicas.json`` (issue 15, item 5): ``propagation.acked_to_used_ms.p99``,
  ``propagation.ingest_to_used_ms.p99``, ``redemptions.attempts``, ``redemptions.successes``,
  ``failed_lookups.limit``, ``failed_lookups.looked_up``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT

DOC = ROOT / "docs" / "scaling.md"
USERS = (100_000, 1_000_000, 10_000_000)
ITEMS = (20_000, 200_000, 1_000_000)
POD_LIMIT_MIB = 2048.0  # deploy/kubernetes/api.yaml: the API container's memory limit
P99_TARGET_MS = 5.0  # issue 15: p99 per known-user request on one core
# precomputing is advised only where a worker prepares a new version within this (each worker
# prepares its own copy after every promotion)
PREPARE_BUDGET_S = 600.0
NOT_MEASURED = "not measured in this run"
FILES = (
    "capacity",
    "experiment_serving",
    "serving_memory",
    "train_synthetic",
    "spark_engine",
    "eval_scale",
    "ann_index",
    "replicas",
)


def load(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The results files present, by name."""
    out = {}
    for name in FILES:
        path = results / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _get(doc: dict[str, Any] | None, *keys: str) -> Any:
    value: Any = doc
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _n(count: float) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= size:
            return f"{count / size:g}{suffix}"
    return f"{count:g}"


def _mib(value: float) -> str:
    return f"{value / 1024:,.1f} GiB" if value >= 1024 else f"{value:,.0f} MiB"


@dataclass(frozen=True)
class Cell:
    value: float | None
    how: str  # "measured", "derived", or NOT_MEASURED

    def text(self, fmt: Any) -> str:
        if self.value is None:
            return NOT_MEASURED
        return f"{fmt(self.value)} ({'m' if self.how == 'measured' else 'd'})"


@dataclass(frozen=True)
class Linear:
    """cost = per_user x users + per_item x items + base, from three probes without
    precomputation: a base one, one with more users, one with more items."""

    per_user: float
    per_item: float
    base: float

    def at(self, users: int, items: int) -> float:
        return self.per_user * users + self.per_item * items + self.base


def _fit(probes: list[dict[str, Any]], value: Any) -> Linear | None:
    plain = [p for p in probes if not p["precomputed"]]
    by = {(p["users"], p["items"]): p for p in plain}
    for (u0, i0), base in sorted(by.items()):
        users = [p for (u, i), p in by.items() if i == i0 and u > u0]
        items = [p for (u, i), p in by.items() if u == u0 and i > i0]
        if users and items:
            pu, pi = max(users, key=lambda p: p["users"]), max(items, key=lambda p: p["items"])
            per_user = (value(pu) - value(base)) / (pu["users"] - u0)
            per_item = (value(pi) - value(base)) / (pi["items"] - i0)
            return Linear(per_user, per_item, value(base) - per_user * u0 - per_item * i0)
    return None


class Capacity:
    """Every cell of the page from the results present."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        cap = docs.get("capacity")
        self.probes: list[dict[str, Any]] = list(_get(cap, "probes") or [])
        self.memory = _fit(self.probes, lambda p: p["rss_after_mib"] - p["rss_before_mib"])
        self.files = _fit(self.probes, lambda p: p["artifact_bytes"] / 2**20)
        self.loading = _fit(self.probes, lambda p: p["peak_mib"] - p["rss_before_mib"])
        befores = [p["rss_before_mib"] for p in self.probes]
        self.worker_base = statistics.median(befores) if befores else None
        cpu = _get(docs.get("experiment_serving"), "cpu_us_per_request", "one", "known")
        self.http_us = statistics.median(cpu) if cpu else None
        self.train = sorted(
            _get(docs.get("train_synthetic"), "sizes") or [], key=lambda s: s["interactions"]
        )
        self.spark = sorted(
            (_engines(size) for size in _get(docs.get("spark_engine"), "sizes") or []),
            key=lambda s: s["purchases"],
        )

    def _side_by_side_pandas(self, purchases: int, what: str) -> float | None:
        """The pandas engine's figure measured beside the Spark engine's (``spark_engine``)."""
        key = {"train_wall_seconds": "wall_seconds", "train_peak_rss_mib": "peak_rss_mib"}[what]
        for row in self.spark:
            if row["purchases"] == purchases and _get(row, "pandas", key) is not None:
                return float(row["pandas"][key])
        return None

    def _probe(self, users: int, items: int) -> dict[str, Any] | None:
        for p in self.probes:
            if (p["users"], p["items"]) == (users, items) and not p["precomputed"]:
                return p
        return None

    def _items_probe(self, items: int) -> dict[str, Any] | None:
        """The probe of that catalogue size with the most users (a request's cost depends on
        the items it scores, not on the users, which probes of two user counts show)."""
        found = [p for p in self.probes if p["items"] == items and not p["precomputed"]]
        return max(found, key=lambda p: p["users"]) if found else None

    def worker_mib(self, users: int, items: int) -> Cell:
        probe = self._probe(users, items)
        if probe is not None:
            return Cell(probe["rss_after_mib"], "measured")
        if self.memory is None or self.worker_base is None:
            return Cell(None, NOT_MEASURED)
        return Cell(self.worker_base + self.memory.at(users, items), "derived")

    def swap_mib(self, users: int, items: int) -> Cell:
        """A worker's peak while it swaps versions: it serves one while it loads the next."""
        served = self.worker_mib(users, items)
        if served.value is None or self.loading is None:
            return Cell(None, NOT_MEASURED)
        return Cell(served.value + self.loading.at(users, items), "derived")

    def artifact_mib(self, users: int, items: int) -> Cell:
        probe = self._probe(users, items)
        if probe is not None:
            return Cell(probe["artifact_bytes"] / 2**20, "measured")
        if self.files is None:
            return Cell(None, NOT_MEASURED)
        return Cell(self.files.at(users, items), "derived")

    def request(self, items: int, kind: str = "known") -> dict[str, float] | None:
        probe = self._items_probe(items)
        return None if probe is None else dict(probe[kind])

    def cpu_us(self, items: int, kind: str = "known") -> Cell:
        """Server CPU per request of ``kind`` (``known``, ``session``): the HTTP part plus the
        scoring in process."""
        scoring = self.request(items, kind)
        if scoring is None or self.http_us is None:
            return Cell(None, NOT_MEASURED)
        return Cell(self.http_us + scoring["cpu_us"], "derived")

    def rps_per_core(self, items: int, kind: str = "known") -> Cell:
        cpu = self.cpu_us(items, kind)
        return Cell(None if cpu.value is None else 1e6 / cpu.value, cpu.how)

    def p99_ms(self, items: int) -> Cell:
        scoring = self.request(items)
        return Cell(None, NOT_MEASURED) if scoring is None else Cell(scoring["p99_ms"], "measured")

    def purchases_per_user(self) -> float | None:
        if not self.train:
            return None
        largest = self.train[-1]
        return float(largest["interactions"]) / float(largest["users"])

    def _train_line(self, rows: list[dict[str, Any]], x: str, y: Any) -> Linear | None:
        if len(rows) < 2:
            return None
        a, b = rows[-2], rows[-1]
        slope = (y(b) - y(a)) / (b[x] - a[x])
        return Linear(slope, 0.0, y(b) - slope * b[x])

    def pandas_train(self, users: int, what: str) -> Cell:
        """``what``: ``train_wall_seconds`` or ``train_peak_rss_mib`` of the pandas engine."""
        ratio = self.purchases_per_user()
        if ratio is None:
            return Cell(None, NOT_MEASURED)
        beside = self._side_by_side_pandas(round(users * ratio), what)
        if beside is not None:  # the current trainer, measured beside the Spark engine
            return Cell(beside, "measured")
        for row in self.train:
            if row["users"] == users:
                return Cell(float(row[what]), "measured")
        line = self._train_line(self.train, "interactions", lambda r: float(r[what]))
        if line is None:
            return Cell(None, NOT_MEASURED)
        return Cell(line.at(round(users * ratio), 0), "derived")

    def spark_train(self, users: int, what: str) -> Cell:
        """``what``: ``wall_seconds`` or ``peak_rss_mib`` of the Spark engine."""
        ratio = self.purchases_per_user()
        rows = [r for r in self.spark if _get(r, "spark", what) is not None]
        if ratio is None or not rows:
            return Cell(None, NOT_MEASURED)
        purchases = round(users * ratio)
        for row in rows:
            if row["purchases"] == purchases:
                return Cell(float(row["spark"][what]), "measured")
        line = self._train_line(rows, "purchases", lambda r: float(r["spark"][what]))
        if line is None:
            return Cell(None, NOT_MEASURED)
        return Cell(line.at(purchases, 0), "derived")

    def _precomputed(self) -> dict[str, Any] | None:
        done = [p for p in self.probes if p["precomputed"] and p.get("candidates_bytes")]
        return done[0] if done else None

    def precompute_bytes_per_user(self) -> float | None:
        done = self._precomputed()
        return None if done is None else float(done["candidates_bytes"]) / done["users"]

    def precompute_seconds_per_cell(self) -> float | None:
        """Load and prepare time of the precomputed probe over its users x items."""
        done = self._precomputed()
        return (
            None if done is None else float(done["load_seconds"]) / (done["users"] * done["items"])
        )

    def machine_mib(self) -> float | None:
        gib = _get(self.docs.get("train_synthetic"), "machine", "memory_gib")
        return None if gib is None else float(gib) * 1024

    def breaks(self, users: int, items: int) -> list[tuple[float, str]]:
        """(how far past its limit, what) for each limit this size passes, worst first."""
        out = []
        worker = self.swap_mib(users, items).value
        if worker is not None and worker > POD_LIMIT_MIB:
            out.append(
                (worker / POD_LIMIT_MIB, f"worker memory in a swap ({_mib(worker)} > pod limit)")
            )
        scoring = self.request(items)
        if scoring is not None and scoring["cpu_us"] / 1000 > P99_TARGET_MS:
            ms = scoring["cpu_us"] / 1000
            out.append((ms / P99_TARGET_MS, f"exact scoring ({ms:.1f} ms CPU median > 5 ms)"))
        train = self.pandas_train(users, "train_peak_rss_mib").value
        machine = self.machine_mib()
        if train is not None and machine is not None and train > machine:
            out.append((train / machine, f"pandas training memory ({_mib(train)})"))
        return sorted(out, reverse=True)


def _sources(c: Capacity) -> list[str]:
    out = ["| results file | measured | command |", "|---|---|---|"]
    for name in FILES:
        doc = c.docs.get(name)
        if doc is None:
            out.append(f"| `{name}.json` | {NOT_MEASURED} | |")
        else:
            out.append(f"| `{name}.json` | {doc.get('date', '?')} | `{doc.get('command', '?')}` |")
    return out


def _grid(title: str, cell: Any, fmt: Any) -> list[str]:
    out = [f"**{title}**", "", "| users \\ items | " + " | ".join(_n(i) for i in ITEMS) + " |"]
    out.append("|---|" + "---:|" * len(ITEMS))
    for users in USERS:
        row = [cell(users, items).text(fmt) for items in ITEMS]
        out.append(f"| {_n(users)} | " + " | ".join(row) + " |")
    return [*out, ""]


def _row(title: str, cells: list[tuple[str, Cell]], fmt: Any) -> list[str]:
    out = [f"**{title}**", "", "| " + " | ".join(k for k, _ in cells) + " |"]
    out.append("|" + "---:|" * len(cells))
    return [*out, "| " + " | ".join(v.text(fmt) for _, v in cells) + " |", ""]


def _formulas(c: Capacity) -> list[str]:
    out = ["Per-unit costs (measured; the derived cells use them):", ""]
    if c.memory is not None and c.worker_base is not None:
        out.append(
            f"- worker memory = {c.worker_base:,.0f} MiB (a worker's imports) + "
            f"{c.memory.per_user * 2**20:,.0f} B x users + {c.memory.per_item * 2**20:,.0f} B x "
            f"items + {c.memory.base:,.1f} MiB, fitted on the `capacity.json` probes without "
            "precomputation (a base probe, one with more users, one with more items)"
        )
        for p in c.probes:
            if p["precomputed"] or c.worker_base is None:
                continue
            formula = c.worker_base + c.memory.at(p["users"], p["items"])
            if abs(formula - p["rss_after_mib"]) > 0.5:  # a probe the fit did not go through
                out.append(
                    f"  (check: at the {_n(p['users'])} x {_n(p['items'])} probe the formula "
                    f"gives {_mib(formula)}, measured {_mib(p['rss_after_mib'])})"
                )
    else:
        out.append(f"- worker memory per user and per item: {NOT_MEASURED}")
    if c.loading is not None:
        out.append(
            f"- loading a version adds, until it is swapped in, {c.loading.per_user * 2**20:,.0f}"
            f" B x users + {c.loading.per_item * 2**20:,.0f} B x items + "
            f"{c.loading.base:,.1f} MiB (the probes' peak `VmHWM` over their imports): the "
            "swap's peak is the served version's memory plus that"
        )
    if c.files is not None:
        out.append(
            f"- artifact = {c.files.per_user * 2**20:,.0f} B x users + "
            f"{c.files.per_item * 2**20:,.0f} B x items + {c.files.base:,.2f} MiB"
        )
    if c.http_us is not None:
        es = c.docs["experiment_serving"]
        out.append(
            f"- server CPU per known-user request = {c.http_us:,.0f} µs (HTTP, key check, JSON: "
            f"`experiment_serving.json`, median server CPU per request on the "
            f"{es.get('users', '?'):,} x {es.get('items', '?'):,} Online Retail model, "
            "precomputed) + the in-process scoring of that catalogue size (`capacity.json`, "
            "the probe with the most users); requests per second per core = 1,000,000 / that "
            "(the session users' rows add the same HTTP part)"
        )
    ratio = c.purchases_per_user()
    if ratio is not None and len(c.train) >= 2:
        a, b = c.train[-2], c.train[-1]
        out.append(
            f"- pandas training: {ratio:g} purchase lines per user (the synthetic shop's largest "
            f"preset); time and peak memory linear in purchase lines through the two largest "
            f"measured presets ({a['interactions']:,} and {b['interactions']:,} lines: "
            f"{a['train_wall_seconds']:.1f} s / {_mib(a['train_peak_rss_mib'])} and "
            f"{b['train_wall_seconds']:.1f} s / {_mib(b['train_peak_rss_mib'])})"
        )
    if len(c.spark) >= 2:
        out.append(
            "- Spark training: linear in purchase lines through the two largest sizes of "
            "`spark_engine.json`"
        )
    precomputed = [p for p in c.probes if p["precomputed"] and p.get("candidates_bytes")]
    if precomputed:
        p = precomputed[0]
        out.append(
            f"- precomputed candidates, when users x items <= {p['precompute_max_cells']:,} "
            f"(`RECOFFER_PRECOMPUTE_MAX_CELLS`): {p['candidates_bytes'] / p['users']:,.0f} B per "
            f"user in every worker, and {p['load_seconds'] / (p['users'] * p['items']) * 1e9:,.0f} "
            f"s per 10^9 users x items to prepare (load included; measured at {_n(p['users'])} "
            f"x {_n(p['items'])}); every size above is past that limit, so each request scores "
            "the whole catalogue; precomputing is advised only where a worker prepares a version "
            f"within {PREPARE_BUDGET_S:,.0f} s and it fits the pod"
        )
    return [*out, ""]


def _measured_probes(c: Capacity) -> list[str]:
    if not c.probes:
        return [f"Probes: {NOT_MEASURED}.", ""]
    out = [
        "| probe (users x items) | artifact | worker RSS | peak while loading | load | "
        "precomputed | known cpu / p50 / p99 | session cpu |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in c.probes:
        k, s = p["known"], p["session"]
        out.append(
            f"| {_n(p['users'])} x {_n(p['items'])} | {_mib(p['artifact_bytes'] / 2**20)} | "
            f"{_mib(p['rss_after_mib'])} | {_mib(p['peak_mib'])} | {p['load_seconds']:.1f} s | "
            f"{'yes' if p['precomputed'] else 'no'} | {k['cpu_us']:,.0f} µs / "
            f"{k['p50_ms']:.2f} / {k['p99_ms']:.2f} ms | {s['cpu_us']:,.0f} µs |"
        )
    return [*out, ""]


def _ann(c: Capacity) -> list[str]:
    doc = c.docs.get("ann_index")
    out = ["## With an ANN index (1M items)", ""]
    if doc is None:
        return [*out, f"`ann_index.json`: {NOT_MEASURED}.", ""]
    ann = doc["ann"]
    out += [
        f"`ann_index.json`, {ann['library']}, {_n(doc['users'])} users x "
        f"{_n(doc['items'])} items, recall@10 of the served lists against exact "
        f"{doc['in_process']['recall_at_10']['known']:.3f} (known users), "
        f"{doc['in_process']['recall_at_10']['session']:.3f} (sessions); model arrays "
        f"{_mib(doc['artifact_arrays_mib'])}, index {_mib(doc['index_mib'])} (measured):",
        "",
        "| mode | known: CPU p50 / p99 in process (ms) | known: HTTP p50 / p99 (ms) | "
        "session: CPU p50 / p99 (ms) | one worker: RSS / own |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("exact", "index"):
        inner = _get(doc, "in_process", mode)
        http = _get(doc, "results", mode)
        if inner is None or http is None:
            out.append(f"| {mode} | {NOT_MEASURED} | | | |")
            continue
        worker = http["workers"][0]
        out.append(
            f"| {mode} | {inner['known']['cpu_p50_ms']:.2f} / {inner['known']['cpu_p99_ms']:.2f} | "
            f"{http['known']['p50_ms']:.2f} / {http['known']['p99_ms']:.2f} | "
            f"{inner['session']['cpu_p50_ms']:.2f} / {inner['session']['cpu_p99_ms']:.2f} | "
            f"{_mib(worker['rss_mib'])} / {_mib(worker['own_mib'])} |"
        )
    return [*out, ""]


def _replicas(c: Capacity) -> list[str]:
    doc = c.docs.get("replicas")
    out = ["## Two replicas with Redis", ""]
    if doc is None:
        return [*out, f"`replicas.json`: {NOT_MEASURED}.", ""]
    seen = doc["propagation"]
    return [
        *out,
        "- a session's events used by the other replica's next recommendation: "
        f"{seen['acked_to_used_ms']['p99']:.1f} ms p99 after the first replica's answer, "
        f"{seen['ingest_to_used_ms']['p99']:.1f} ms p99 from sending the POST (measured);",
        f"- {doc['redemptions']['attempts']} parallel redemptions of one code over both: "
        f"{doc['redemptions']['successes']} success(es);",
        f"- failed coupon lookups looked up across both: {doc['failed_lookups']['looked_up']} "
        f"for a limit of {doc['failed_lookups']['limit']}.",
        "",
    ]


def _engines(size: dict[str, Any]) -> dict[str, Any]:
    """A ``spark_engine.json`` size with its runs by engine: ``spark`` is the MLlib fit (the one
    that scales past the driver; implicit on the driver where only that was measured),
    ``pandas`` the pandas engine beside it."""
    runs = {run["engine"]: run for run in size.get("runs", [])}
    spark = runs.get("spark-mllib") or runs.get("spark-implicit")
    return {**size, "spark": spark, "pandas": runs.get("pandas")}


def _evaluation(c: Capacity) -> list[str]:
    doc = c.docs.get("eval_scale")
    out = ["## Evaluation at scale", ""]
    if doc is None:
        return [*out, f"`eval_scale.json`: {NOT_MEASURED}.", ""]
    out += [
        "| items | test users | scored before (the old cell cap) | scored now | CPU per "
        "recipe and protocol | peak memory |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc.get("sizes", []):
        out.append(
            f"| {row['items']:,} | {row['of_users']:,} | {row['old_cap_users']:,} | "
            f"{row['users']:,} | {row['cpu_seconds']:.1f} s | {_mib(row['peak_rss_mib'])} |"
        )
    return [*out, ""]


def _deploy(c: Capacity, users: int, items: int) -> str:
    parts = []
    worker = c.swap_mib(users, items).value
    rps = c.rps_per_core(items).value
    scoring = c.request(items)
    per_user = c.precompute_bytes_per_user()
    per_cell = c.precompute_seconds_per_cell()
    slow = scoring is not None and scoring["cpu_us"] / 1000 > P99_TARGET_MS
    if worker is not None:
        if worker > POD_LIMIT_MIB:
            parts.append(
                f"no worker fits the {_mib(POD_LIMIT_MIB)} pod: the ANN index and bounded "
                "precomputation (item 4)"
            )
        elif slow and per_user is not None and per_cell is not None:
            with_lists = worker + per_user * users / 2**20
            seconds = per_cell * users * items
            if with_lists <= POD_LIMIT_MIB and seconds <= PREPARE_BUDGET_S:
                parts.append(
                    f"precompute every known user (`RECOFFER_PRECOMPUTE_MAX_CELLS` >= "
                    f"{users * items:,}): {_mib(with_lists)} per worker, {seconds:,.0f} s to "
                    "prepare each version"
                )
            else:
                parts.append(
                    f"precomputing every user would need {_mib(with_lists)} per worker and "
                    f"{seconds:,.0f} s to prepare each version: the ANN index (item 4)"
                )
        else:
            parts.append(f"{_mib(worker)} per worker at its peak, one worker per core")
    if rps is not None and not slow:
        parts.append(f"{1000 / rps:.1f} cores per 1,000 known-user requests/s")
    elif rps is not None:
        parts.append(f"exact scoring: {1000 / rps:.1f} cores per 1,000 requests/s")
    train = c.pandas_train(users, "train_peak_rss_mib").value
    machine = c.machine_mib()
    if train is not None and machine is not None:
        parts.append(
            "train with the pandas engine"
            if train <= machine
            else "train with the Spark engine (`recoffer train --engine spark`)"
        )
    return "; ".join(parts) or NOT_MEASURED


def render(docs: dict[str, dict[str, Any]]) -> str:
    c = Capacity(docs)
    cap = docs.get("capacity", {})
    out = [
        "# Capacity",
        "",
        "What recoffer costs at 100k, 1M and 10M users and 20k, 200k and 1M items, and what "
        "breaks first. Generated by `python -m benchmarks.scaling` from "
        "`benchmarks/results/*.json`: do not edit by hand (a test checks it is up to date). "
        "Each cell says **(m)** measured (a probe of that size, or of the size the figure "
        "depends on: a request's cost depends on the catalogue, training on the purchase "
        "lines) or **(d)** derived from measured per-unit costs, with the formula below. "
        f'"{NOT_MEASURED}": its results file is absent. Measured on a shared, busy '
        f"{_get(cap, 'machine', 'cpus') or '?'}-core machine "
        f"({_get(cap, 'machine', 'cpu') or '?'}): take ratios and orders of magnitude, not "
        f"the last digit. Factors: {cap.get('factors', '?')}; history: "
        f"{c.probes[0]['history_per_user'] if c.probes else '?'} items per user.",
        "",
        "## Sources",
        "",
        *_sources(c),
        "",
        "## Per worker and per version",
        "",
        *_grid("Memory per API worker (resident, model prepared)", c.worker_mib, _mib),
        *_grid(
            "Peak per API worker while it swaps versions (the served one, plus loading the next)",
            c.swap_mib,
            _mib,
        ),
        *_grid("Artifact size (the version's files)", c.artifact_mib, _mib),
        *_row(
            "Requests per second per core, known users (exact scoring)",
            [(f"{_n(i)} items", c.rps_per_core(i)) for i in ITEMS],
            lambda v: f"{v:,.0f}",
        ),
        *_row(
            "Requests per second per core, session users (3 recent views folded in)",
            [(f"{_n(i)} items", c.rps_per_core(i, "session")) for i in ITEMS],
            lambda v: f"{v:,.0f}",
        ),
        *_row(
            "p99 (wall, this busy machine) of the in-process scoring, known users, one core",
            [(f"{_n(i)} items", c.p99_ms(i)) for i in ITEMS],
            lambda v: f"{v:.1f} ms",
        ),
        "## Training time per engine",
        "",
        *_row(
            "pandas engine (`recoffer train`), wall",
            [(f"{_n(u)} users", c.pandas_train(u, "train_wall_seconds")) for u in USERS],
            lambda v: f"{v:,.0f} s",
        ),
        *_row(
            "pandas engine, peak memory",
            [(f"{_n(u)} users", c.pandas_train(u, "train_peak_rss_mib")) for u in USERS],
            _mib,
        ),
        *_row(
            "Spark engine (`--engine spark`), wall",
            [(f"{_n(u)} users", c.spark_train(u, "wall_seconds")) for u in USERS],
            lambda v: f"{v:,.0f} s",
        ),
        *_row(
            "Spark engine, driver peak memory",
            [(f"{_n(u)} users", c.spark_train(u, "peak_rss_mib")) for u in USERS],
            _mib,
        ),
        *_formulas(c),
        "## What breaks first, and what to deploy",
        "",
        "| users x items | breaks first (then) | deploy |",
        "|---|---|---|",
    ]
    for users in USERS:
        for items in ITEMS:
            broken = c.breaks(users, items)
            what = "; ".join(b for _, b in broken) if broken else "nothing measured breaks"
            out.append(f"| {_n(users)} x {_n(items)} | {what} | {_deploy(c, users, items)} |")
    out += [
        "",
        f"Limits: the API pod's {_mib(POD_LIMIT_MIB)} (`deploy/kubernetes/api.yaml`), the "
        f"{P99_TARGET_MS:g} ms p99 target per known-user request on one core (judged on the "
        "median CPU per request, a floor under any p99: this machine's wall-clock p99 is "
        "inflated by its other users), and the training machine's memory "
        "(`train_synthetic.json`'s machine).",
        "",
        *_ann(c),
        *_evaluation(c),
        *_replicas(c),
        "## The probes (`capacity.json`)",
        "",
        *_measured_probes(c),
    ]
    serving = docs.get("serving_memory")
    rss = _get(serving, "medians", "this tree (owned)", "1", "worker_rss_mib")
    if rss is not None:
        out += [
            f"For comparison, a whole `python -m service` worker serving the Online Retail model "
            f"({_get(serving, 'model_files_mib')} MiB of files; `serving_memory.json`) holds "
            f"{_mib(rss)} resident.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = render(load())
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: python -m benchmarks.scaling")
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
