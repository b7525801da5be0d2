"""Offers: latency of ``POST /v1/offers/evaluate``, and the campaign sweep over 100,000 new users.

Both parts run on SQLite and on PostgreSQL, each on a fresh database (a temporary directory
under var/bench, or a new PostgreSQL database dropped afterwards), seeded directly with
SQLAlchemy Core bulk inserts relative to the real clock (the service decides with real time).
Seeding is not part of any figure.

- evaluate: one uvicorn worker on CPU 0 with no model (the built-in campaign is store-wide),
  benchmarks.loadgen on CPU 1, open loop at 100 req/s for 30 s, every request for a different
  seeded user: a quarter eligible, the rest with too few views, already bought, or not new.
  Three runs, new users each; the p99 reported is the median run's. The decisions answered are
  checked against the ones the seed implies. Then OfferEngine.evaluate in-process, one user
  after the other, with its database calls counted and timed.
- sweep: 100,000 users signed up over the last 23 h with Taobao-like view streams (distinct
  products on day one: median 5; a quarter with more than 10 views), some of whom bought; then
  ``POST /v1/campaigns/new_user_high_intent/run`` against the served instance (same pinning),
  timed from the client, then checked in the database (one decision and at most one coupon per
  user, a coupon for every ``issued``, exactly the eligible users decided), then run again.
  Then the offer tables are emptied and OfferEngine.sweep runs in-process with every database
  call timed (where the time goes).

This machine is shared: before each measurement the script waits (bounded) for idle CPUs, and
a run during which other processes kept more than ``--max-other-cpus`` busy is done again
(``--retries`` times at most); every run records who used the CPUs and the disk stalls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, save, this_command
from benchmarks.harness import BACKENDS, FRONTEND_KEY, Server, fresh_database
from service.offers.campaigns import BUILT_IN
from service.offers.rules import in_holdout

MARKETING_KEY = "bench-marketing-key-0123456789"
EVALUATE_P99_MS = 25.0
CATALOGUE = 20_000  # products
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600 * 10**6
EVALUATE_KINDS = ("eligible", "too_few_views", "already_purchased", "not_new")
EVALUATE_MIX = (0.25, 0.35, 0.20, 0.20)
CODE_AT_START: dict[str, Any] = {}  # service/ as this process imported it


def uncapped_campaigns(directory: Path) -> Path:
    """A campaigns file that lifts the built-in campaign's default daily cap (issue 12, item 7):
    these benchmarks measure evaluations and sweeps of 100,000 users, not the cap."""
    path = directory / "campaigns.toml"
    path.write_text(f'[campaigns.{BUILT_IN}]\nmax_per_day = "unlimited"\n')
    return path


RUN_FIELDS = (
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "cpus_busy_before",
    "server_cpu_share",
    "postgres_cpus_busy",
    "other_cpus_busy",
    "io_full_stall_seconds",
)


# --- seeding ------------------------------------------------------------------------------


@dataclass
class Population:
    """The seeded users and what the rule must decide for each of them."""

    user_ids: np.ndarray  # str
    kind: np.ndarray  # str: eligible, too_few_views, already_purchased, not_new
    views: np.ndarray  # view events inside the window
    distinct: np.ndarray  # distinct products viewed
    bought: np.ndarray  # bool
    events: int
    seed_seconds: float

    def expected(self) -> dict[str, str]:
        """user_id -> issued | holdout | not_eligible, by the rule and the holdout draw."""
        out = {}
        for user, kind in zip(self.user_ids.tolist(), self.kind.tolist(), strict=True):
            if kind != "eligible":
                out[user] = "not_eligible"
            else:
                out[user] = "holdout" if in_holdout(BUILT_IN, user, 10.0) else "issued"
        return out

    def describe(self) -> dict[str, Any]:
        n = len(self.user_ids)
        return {
            "users": n,
            "events": self.events,
            "median_views": float(np.median(self.views)),
            "median_distinct_products": float(np.median(self.distinct)),
            "p90_distinct_products": float(np.percentile(self.distinct, 90)),
            "share_more_than_10_views": round(float(np.mean(self.views > 10)), 4),
            "share_bought": round(float(np.mean(self.bought)), 4),
            "kinds": dict(Counter(self.kind.tolist())),
            "seed_seconds": round(self.seed_seconds, 1),
        }


def _stream_items(rng: np.random.Generator, views: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """A product for every view: each user's first ``distinct`` views are new products (by
    power-law popularity), the rest look again at one of those."""
    popularity = 1.0 / (np.arange(CATALOGUE) + 10.0) ** 0.9
    fresh = rng.choice(CATALOGUE, size=int(views.sum()), p=popularity / popularity.sum())
    first = np.repeat(np.cumsum(views) - views, views)  # index of the user's first view
    position = np.arange(len(fresh)) - first
    pool = np.repeat(distinct, views)
    again = position >= pool
    fresh[again] = fresh[first[again] + rng.integers(0, pool[again])]
    return fresh


def seed(
    url: str,
    rng: np.random.Generator,
    now: datetime,
    *,
    kind: np.ndarray,
    start_us: np.ndarray,
    end_us: np.ndarray,
    views: np.ndarray,
    distinct: np.ndarray,
    bought: np.ndarray,
) -> Population:
    """Insert users (15 % known only by their first event) and their events; ``*_us`` are
    microseconds since the epoch, views fall uniformly in ``[start, end]``."""
    from service.db import make_engine, migrate
    from service.tables import events, users

    started = time.perf_counter()
    n = len(kind)
    user_ids = np.array([f"u{i:06d}" for i in range(n)])
    signed_up = rng.random(n) >= 0.15
    item = _stream_items(rng, views, distinct)
    owner = np.repeat(np.arange(n), views)
    span = (end_us - start_us)[owner]
    ts = start_us[owner] + (rng.random(len(owner)) * span).astype(np.int64)
    types = np.full(len(owner), "view", dtype=object)
    orders = np.full(len(owner), None, dtype=object)
    first_view = np.cumsum(views) - views
    extra_owner, extra_item, extra_type, extra_ts, extra_order = [], [], [], [], []
    carts = np.flatnonzero((rng.random(n) < 0.2) & (views >= 3))
    buyers = np.flatnonzero(bought)
    for who, what in ((carts, "add_to_cart"), (buyers, "purchase")):
        extra_owner.append(who)
        extra_item.append(item[first_view[who]])
        extra_type.append(np.full(len(who), what, dtype=object))
        at = start_us[who] + (rng.random(len(who)) * (end_us - start_us)[who]).astype(np.int64)
        extra_ts.append(at)
        extra_order.append(
            np.array([f"o-{u}" for u in user_ids[who]], dtype=object)
            if what == "purchase"
            else np.full(len(who), None, dtype=object)
        )
    signups = np.flatnonzero(signed_up)
    extra_owner.append(signups)
    extra_item.append(np.full(len(signups), -1))
    extra_type.append(np.full(len(signups), "sign_up", dtype=object))
    extra_ts.append(start_us[signups])
    extra_order.append(np.full(len(signups), None, dtype=object))
    owner = np.concatenate([owner, *extra_owner])
    item = np.concatenate([item, *extra_item])
    types = np.concatenate([types, *extra_type])
    ts = np.concatenate([ts, *extra_ts])
    orders = np.concatenate([orders, *extra_order])
    order = np.argsort(ts, kind="stable")  # ids ascend with time, as ingestion would have it

    def moment(us: int) -> datetime:
        return EPOCH + timedelta(microseconds=us)

    engine = make_engine(url, timeout_seconds=60)
    migrate(engine)
    user_rows = [
        {
            "user_id": user_ids[i],
            "signed_up_at": moment(int(start_us[i])) if signed_up[i] else None,
            "first_seen_at": moment(int(start_us[i])),
            "attributes": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    chunk = 20_000
    with engine.begin() as conn:
        for at in range(0, n, chunk):
            conn.execute(users.insert(), user_rows[at : at + chunk])
        for at in range(0, len(order), chunk):
            rows = order[at : at + chunk]
            conn.execute(
                events.insert(),
                [
                    {
                        "user_id": user_ids[owner[r]],
                        "item_id": None if item[r] < 0 else f"p{item[r]}",
                        "type": types[r],
                        "ts": moment(int(ts[r])),
                        "order_id": orders[r],
                        "client_event_id": None,
                        "received_at": now,
                    }
                    for r in rows.tolist()
                ],
            )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    engine.dispose()
    return Population(
        user_ids, kind, views, distinct, bought, len(order), time.perf_counter() - started
    )


def _to_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def seed_new_users(url: str, users: int, now: datetime, rng_seed: int = 11) -> Population:
    """The sweep's shop: ``users`` signed up uniformly over the last 23 h (10 min at least).

    Distinct products viewed: log-normal, median 5, 90th percentile about 21, at most 136 (the
    Taobao sample of shared/PRODUCT.md: median 5, 90th percentile 24); one view in twenty looks
    again at a product already seen, so about a quarter have more than 10 views. The more
    views, the likelier a purchase (3 % + 1 % a view, at most 30 %).
    """
    rng = np.random.default_rng(rng_seed)
    now_us = _to_us(now)
    start_us = now_us - rng.integers(HOUR_US // 6, 23 * HOUR_US, users)
    end_us = np.full(users, now_us - 10**6)
    distinct = np.clip(np.rint(rng.lognormal(np.log(5), 1.1, users)), 1, 136).astype(np.int64)
    views = distinct + rng.binomial(distinct, 0.05)
    bought = rng.random(users) < np.minimum(0.30, 0.03 + 0.01 * views)
    kind = np.where(
        bought,
        "already_purchased",
        np.where(views > 10, "eligible", "too_few_views"),
    )
    return seed(
        url,
        rng,
        now,
        kind=kind,
        start_us=start_us,
        end_us=end_us,
        views=views,
        distinct=distinct,
        bought=bought,
    )


def seed_mixed_users(url: str, users: int, now: datetime, rng_seed: int = 13) -> Population:
    """The evaluate part's shop: EVALUATE_MIX of eligible users (new, 11-40 views, no
    purchase), too few views (1-10), already bought (11-40 views and a purchase) and not new
    (signed up 2-20 days ago, 11-40 views in their first 20 h)."""
    rng = np.random.default_rng(rng_seed)
    now_us = _to_us(now)
    kind = rng.choice(np.array(EVALUATE_KINDS), size=users, p=EVALUATE_MIX)
    old = kind == "not_new"
    start_us = now_us - rng.integers(HOUR_US // 6, 23 * HOUR_US, users)
    start_us[old] = now_us - rng.integers(48 * HOUR_US, 480 * HOUR_US, int(old.sum()))
    end_us = np.where(old, start_us + 20 * HOUR_US, now_us - 10**6)
    views = np.where(
        kind == "too_few_views", rng.integers(1, 11, users), rng.integers(11, 41, users)
    )
    distinct = np.maximum(1, np.rint(views * rng.uniform(0.6, 1.0, users))).astype(np.int64)
    bought = kind == "already_purchased"
    return seed(
        url,
        rng,
        now,
        kind=kind,
        start_us=start_us,
        end_us=end_us,
        views=views,
        distinct=distinct,
        bought=bought,
    )


# --- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def served(url: str, port: int) -> Iterator[int]:
    """One uvicorn worker on CPU 0 over ``url``, with no model (an empty model directory)."""
    models = Path(tempfile.mkdtemp(prefix="offers-models-", dir=WORK))
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(models),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_CAMPAIGNS_FILE": str(uncapped_campaigns(models)),
    }
    try:
        with Server(env, port=port, cpus="0", stop_seconds=60) as server:
            yield server.pid
    finally:
        shutil.rmtree(models, ignore_errors=True)


TICK = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def postgres_cpu_seconds(database: str | None) -> float:
    """CPU seconds of the PostgreSQL processes alive now that work for ``database``: its
    backends and the server's shared helpers (WAL writer, checkpointer...), not the backends
    of other databases (other people's benchmarks and tests on this machine)."""
    import pwd

    if database is None:
        return 0.0
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return 0.0
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            # "postgres: 15/main: USER DATABASE HOST(PORT) STATE" for a backend
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().split()
            if "(" in " ".join(title[4:5]) and title[3] != database:
                continue
            total += process_cpu_seconds(int(proc.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return total


class CpuMeter:
    """Who kept the CPUs busy while a measurement ran: our server, PostgreSQL, and the rest
    (anyone else's work on this shared machine; the load generator is left out)."""

    def __init__(self, server: int, url: str) -> None:
        import resource

        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.database = parsed.database if parsed.get_backend_name() == "postgresql" else None
        self.server = server
        self._children = resource.RUSAGE_CHILDREN
        self.started = time.perf_counter()
        self.marks = self._marks()

    def _marks(self) -> tuple[float, float, float, float, float]:
        import resource

        usage = resource.getrusage(self._children)  # the load generator, once waited for
        return (
            busy_cpu_seconds(),
            process_cpu_seconds(self.server),
            postgres_cpu_seconds(self.database),
            usage.ru_utime + usage.ru_stime,
            io_stall_seconds(),
        )

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        busy, server, postgres, children, io_stall = (
            end - start for end, start in zip(self._marks(), self.marks, strict=True)
        )
        return {
            "server_cpu_share": round(server / wall, 3),
            "postgres_cpus_busy": round(postgres / wall, 3),
            "other_cpus_busy": round(max(0.0, busy - server - postgres - children) / wall, 3),
            "io_full_stall_seconds": round(io_stall, 3),
        }


def io_stall_seconds() -> float:
    """Seconds during which every runnable task waited for the disk (Linux PSI), or NaN."""
    try:
        for line in Path("/proc/pressure/io").read_text().splitlines():
            if line.startswith("full"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def wait_for_quiet(limit_seconds: float = 300.0, busy_below: float = 0.3) -> dict[str, float]:
    """Wait (bounded) until the machine is nearly idle: this machine is shared, and another
    process on its 2 CPUs shows up in every latency percentile. Returns what was seen."""
    started = time.monotonic()
    while True:
        before = busy_cpu_seconds()
        time.sleep(2.0)
        busy = (busy_cpu_seconds() - before) / 2.0  # CPUs busy on average
        waited = time.monotonic() - started
        if busy < busy_below or waited >= limit_seconds:
            return {"cpus_busy_before": round(busy, 2), "waited_s": round(waited, 1)}
        time.sleep(5.0)


def call(
    port: int, method: str, path: str, key: str, body: object = None, timeout: float = 60
) -> tuple[int, Any, float]:
    """(status, JSON answer, seconds) of one request to the local server."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw), time.perf_counter() - started


def run_sweep(port: int, path: str, timeout: float) -> tuple[int, Any, float]:
    """POST a campaign's run (202: a job), poll the job until it ends: (status of the POST,
    the job with its counts as ``decisions``, seconds from the POST to the end)."""
    started = time.perf_counter()
    status, job, _ = call(port, "POST", path, MARKETING_KEY)
    while status == 202 and job["state"] in ("queued", "running"):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"sweep still {job['state']} after {timeout:g} s")
        time.sleep(0.2)
        _, job, _ = call(port, "GET", f"{path}s/{job['job_id']}", MARKETING_KEY)
    if status == 202:
        kinds = ("issued", "holdout", "not_eligible", "budget_exhausted", "already_decided")
        job = {**job, "decisions": {k: job[k] for k in kinds if job[k]}}
    return status, job, time.perf_counter() - started


def code_version() -> dict[str, Any]:
    """The commit measured, and a digest of service/ as it was (it may differ from the commit)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "service").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "service_changed_since_commit": bool(git("status", "--porcelain", "--", "service")),
        "service_sha256": digest.hexdigest()[:16],
    }


def integrity(url: str, campaign_id: str = BUILT_IN) -> dict[str, Any]:
    """Invariants of the offer tables: no doubles, a coupon for every issued decision."""
    from sqlalchemy import func, select

    from service.db import make_engine
    from service.tables import coupons, offer_decisions

    d, c = offer_decisions, coupons
    engine = make_engine(url, timeout_seconds=60)
    with engine.connect() as conn:

        def doubles(column: Any, table: Any) -> int:
            grouped = (
                select(column)
                .where(table.c.campaign_id == campaign_id)
                .group_by(column)
                .having(func.count() > 1)
                .subquery()
            )
            return int(conn.execute(select(func.count()).select_from(grouped)).scalar_one())

        kinds: dict[str, int] = dict(
            conn.execute(
                select(d.c.decision, func.count())
                .where(d.c.campaign_id == campaign_id)
                .group_by(d.c.decision)
            ).all()
        )
        out: dict[str, Any] = {
            "decisions": {str(k): int(v) for k, v in kinds.items()},
            "coupons": int(
                conn.execute(
                    select(func.count()).select_from(c).where(c.c.campaign_id == campaign_id)
                ).scalar_one()
            ),
            "users_with_two_decisions": doubles(d.c.user_id, d),
            "users_with_two_coupons": doubles(c.c.user_id, c),
            "coupons_without_issued_decision": int(
                conn.execute(
                    select(func.count())
                    .select_from(c.outerjoin(d, d.c.attribution_id == c.c.attribution_id))
                    .where(
                        c.c.campaign_id == campaign_id,
                        (d.c.decision.is_(None)) | (d.c.decision != "issued"),
                    )
                ).scalar_one()
            ),
        }
        decided = {
            str(u): str(k)
            for u, k in conn.execute(
                select(d.c.user_id, d.c.decision).where(d.c.campaign_id == campaign_id)
            )
        }
    engine.dispose()
    out["ok"] = (
        out["users_with_two_decisions"] == 0
        and out["users_with_two_coupons"] == 0
        and out["coupons_without_issued_decision"] == 0
        and out["coupons"] == out["decisions"].get("issued", 0)
    )
    out["_decided"] = decided
    return out


def _against_seed(decided: dict[str, str], expected: dict[str, str]) -> dict[str, int]:
    """Users decided differently from what the seed implies (0 and 0 when all is right)."""
    wrong = sum(1 for u, k in expected.items() if decided.get(u, "not_eligible") != k)
    unknown = sum(1 for u in decided if u not in expected)
    return {"decided_unlike_the_seed": wrong, "decided_but_not_seeded": unknown}


# --- the two parts ------------------------------------------------------------------------


def evaluate_figures(
    backend: str, url: str, args: argparse.Namespace, port: int = 8111
) -> dict[str, Any]:
    code = code_version()  # what the server will run (service/ may change during a run)
    now = datetime.now(UTC)
    population = seed_mixed_users(url, args.eval_users, now)
    print(backend, "seeded", population.describe(), flush=True)
    total = int(args.rate * args.seconds)
    if args.warmup > total or total * (args.repeats + 1) > len(population.user_ids):
        raise SystemExit("--eval-users must be at least rate x seconds x (repeats + 1)")
    order = population.user_ids[np.random.default_rng(5).permutation(len(population.user_ids))]
    warm = order[: args.warmup].tolist()  # then slices of ``total`` users, one a run
    expected = population.expected()
    path = "/v1/offers/evaluate"
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    asked: list[str] = []
    with served(url, port) as server:
        for user in warm:  # connections, statement caches and the thread pool warmed up
            call(port, "POST", path, FRONTEND_KEY, {"user_id": user, "campaign_id": BUILT_IN})
        fresh = iter(range(1, len(order) // total))  # slices of users not asked yet (0: warm-up)
        for repeat in range(args.repeats):
            for attempt in range(1 + args.retries):
                chunk = next(fresh, None)
                if chunk is None:
                    break
                users = order[chunk * total : (chunk + 1) * total].tolist()
                asked += users
                run = evaluate_run(port, server, url, path, users, args)
                got = {k: v["requests"] for k, v in run["groups"].items()}
                run["expected"] = dict(Counter(expected[u] for u in users))
                run["answers_as_expected"] = got == run["expected"]
                print(backend, "run", repeat + 1, {k: run[k] for k in RUN_FIELDS}, flush=True)
                if run["other_cpus_busy"] <= args.max_other_cpus or attempt == args.retries:
                    runs.append(run)
                    break
                discarded.append({k: run[k] for k in RUN_FIELDS})  # someone else's work
    unused = order[(next(fresh, len(order) // total)) * total :][: args.breakdown_users].tolist()
    checks = integrity(url)
    decided = checks.pop("_decided")
    checks.update(_against_seed(decided, {u: expected[u] for u in asked + warm}))
    checks["answers_as_expected"] = all(r["answers_as_expected"] for r in runs)
    breakdown = evaluate_breakdown(url, unused, args.quiet_wait) if unused else None
    median = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
    answered: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    for run in runs:
        answered.update({k: v["requests"] for k, v in run["groups"].items()})
        wanted.update(run["expected"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": this_command(),
        "code": code,
        "code_in_process": CODE_AT_START,  # what the in-process breakdown ran
        "max_other_cpus": args.max_other_cpus,
        "database": population.describe(),
        "warmup_requests": len(warm),
        "latency": median,  # the run with the median p99
        "runs": [{k: r[k] for k in RUN_FIELDS} for r in runs],
        "discarded_runs": discarded,
        "decisions_answered": dict(answered),
        "decisions_expected": dict(wanted),
        "checks": checks,
        "breakdown": breakdown,
        "met": median["p99_ms"] <= EVALUATE_P99_MS
        and all(r["errors"] == 0 and r["requests"] == total for r in runs)
        and checks["ok"]
        and checks["answers_as_expected"],
    }


def evaluate_run(
    port: int, server: int, url: str, path: str, users: list[str], args: argparse.Namespace
) -> Any:
    """One open-loop run of benchmarks.loadgen on CPU 1, one request per user.

    Also who else kept the CPUs busy meanwhile (see CpuMeter)."""
    requests_file = WORK / "offers-requests.jsonl"
    requests_file.write_text(
        "".join(
            json.dumps(
                {"method": "POST", "path": path, "body": {"user_id": u, "campaign_id": BUILT_IN}}
            )
            + "\n"
            for u in users
        )
    )
    command = ["taskset", "-c", "1", PYTHON, "-m", "benchmarks.loadgen", "--port", str(port)]
    command += ["--requests-file", str(requests_file), "--rate", str(args.rate)]
    command += ["--seconds", str(args.seconds), "--group-field", "decision"]
    command += ["--header", f"X-API-Key: {FRONTEND_KEY}"]
    quiet = wait_for_quiet(args.quiet_wait)
    meter = CpuMeter(server, url)
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=args.seconds + 120,
    )
    usage = meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"load generator failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout), **quiet, **usage}


def sweep_figures(
    backend: str, url: str, args: argparse.Namespace, port: int = 8112
) -> dict[str, Any]:
    code = code_version()  # what the server will run (service/ may change during a run)
    now = datetime.now(UTC)
    population = seed_new_users(url, args.sweep_users, now)
    print(backend, "seeded", population.describe(), flush=True)
    expected = population.expected()
    run_path = f"/v1/campaigns/{BUILT_IN}/run"
    with served(url, port) as server:
        discarded: list[dict[str, Any]] = []
        for attempt in range(1 + args.retries):
            if attempt:
                reset_offers(url)  # every user undecided again, still inside the window
            quiet = wait_for_quiet(args.quiet_wait)
            scans = table_scans(url)
            meter = CpuMeter(server, url)
            status, first, wall = run_sweep(port, run_path, args.max_sweep)
            if status != 202:
                raise SystemExit(f"sweep answered {status}: {first}")
            first = {**first, "wall_seconds": round(wall, 3), **quiet, **meter.stop()}
            first["table_scans"] = scans_between(scans, table_scans(url))
            print(backend, "first sweep", first, flush=True)
            if first["other_cpus_busy"] <= args.max_other_cpus or attempt == args.retries:
                break
            discarded.append(first)  # someone else's work
        checks = integrity(url)
        decided = checks.pop("_decided")
        checks.update(_against_seed(decided, expected))
        wait_for_quiet(args.quiet_wait)
        status, second, wall2 = run_sweep(port, run_path, args.max_sweep)
        if status != 202:
            raise SystemExit(f"second sweep answered {status}: {second}")
        print(backend, "second sweep", second, f"{wall2:.1f} s", flush=True)
        after = integrity(url)
        after.pop("_decided")
        _, stats, stats_seconds = call(
            port, "GET", f"/v1/campaigns/{BUILT_IN}/stats", MARKETING_KEY
        )
    undecided = len(population.user_ids) - len(decided)
    second_ok = (
        after["decisions"] == checks["decisions"]
        and after["coupons"] == checks["coupons"]
        and second["evaluated"] == undecided
        and set(second["decisions"]) <= {"not_eligible"}
    )
    eligible = sum(1 for k in expected.values() if k != "not_eligible")
    breakdown = None if args.no_breakdown else sweep_breakdown(url, args.quiet_wait)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": this_command(),
        "code": code,
        "code_in_process": CODE_AT_START,  # what the in-process breakdown ran
        "max_other_cpus": args.max_other_cpus,
        "how": f"POST {run_path} to one uvicorn worker (CPU 0) and its job polled until done, "
        "timed by the client",
        "database": population.describe(),
        "expected_eligible": eligible,
        "first": first,
        "discarded_first_sweeps": discarded,
        "first_users_per_second": round(first["evaluated"] / wall, 1),
        "second": {**second, "wall_seconds": round(wall2, 3)},
        "second_expected_evaluated": undecided,
        "stats_seconds": round(stats_seconds, 3),
        "stats_eligible": stats.get("eligible"),
        "checks": checks,
        "checks_after_second": {k: v for k, v in after.items() if k != "ok"},
        "second_issued_nothing": second_ok,
        "met": checks["ok"]
        and second_ok
        and checks["decided_unlike_the_seed"] == 0
        and checks["decided_but_not_seeded"] == 0,
        "breakdown": breakdown,
    }


class DatabaseCalls:
    """Client-side time of every database call of an engine, summed by kind.

    Statements by verb and first table (``INSERT coupons``), plus the driver's COMMIT,
    ROLLBACK (the pool's reset on return) and PING (the pool's pre-ping on checkout), and any
    function wrapped with ``timed``.
    """

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.calls: dict[str, list[float]] = {}

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, *_: Any) -> None:
            conn.info["bench_started"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            self.add(
                _statement_kind(statement), time.perf_counter() - conn.info.pop("bench_started")
            )

        for name in ("do_commit", "do_rollback", "do_ping"):
            setattr(
                engine.dialect, name, self.timed(getattr(engine.dialect, name), name[3:].upper())
            )

    def add(self, kind: str, seconds: float) -> None:
        entry = self.calls.setdefault(kind, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def timed(self, function: Any, kind: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(kind, time.perf_counter() - started)

        return wrapper

    def database(self) -> dict[str, list[float]]:
        return {k: v for k, v in self.calls.items() if not k.startswith("phase ")}

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            k: {"calls": int(n), "seconds": round(t, 3)}
            for k, (n, t) in sorted(self.database().items(), key=lambda kv: -kv[1][1])
        }


def _offer_engine(url: str) -> tuple[Any, Any, DatabaseCalls]:
    """An OfferEngine as the service builds it (no model, no metrics), its engine, its timer."""
    from service.activity.repository import Repository
    from service.db import make_engine
    from service.offers.campaigns import load_campaigns
    from service.offers.decisions import OfferEngine
    from service.offers.repository import OfferRepository

    engine = make_engine(url)
    calls = DatabaseCalls(engine)
    repository = OfferRepository(Repository(engine))
    decisions = repository.decisions  # the phases a sweep spends its time in
    for name in ("candidates", "record"):
        setattr(decisions, name, calls.timed(getattr(decisions, name), f"phase {name}"))
    campaigns = load_campaigns(None)  # the built-in without its daily cap (issue 12, item 7)
    campaigns[BUILT_IN] = campaigns[BUILT_IN].model_copy(update={"max_per_day": None})
    offers = OfferEngine(campaigns, repository, lambda: datetime.now(UTC))
    return offers, engine, calls


def table_scans(url: str) -> dict[str, dict[str, int]] | None:
    """PostgreSQL's counters of sequential and index scans per offer table (None on SQLite):
    a cached generic plan that scans a growing table shows here."""
    from sqlalchemy import text

    from service.db import make_engine

    if not url.startswith("postgresql"):
        return None
    engine = make_engine(url, timeout_seconds=60)
    time.sleep(0.7)  # the statistics collector reports every 500 ms
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) "
                "FROM pg_stat_user_tables WHERE relname IN "
                "('offer_decisions', 'coupons', 'campaign_budgets', 'events', 'users')"
            )
        ).all()
        autovacuum = conn.execute(text("SHOW autovacuum")).scalar_one()
    engine.dispose()
    out: dict[str, dict[str, int]] = {
        str(name): {"seq_scan": int(a), "seq_tup_read": int(b), "idx_scan": int(c)}
        for name, a, b, c in rows
    }
    out["autovacuum"] = {"on": int(autovacuum == "on")}
    return out


def scans_between(
    before: dict[str, dict[str, int]] | None, after: dict[str, dict[str, int]] | None
) -> dict[str, dict[str, int]] | None:
    if before is None or after is None:
        return None
    return {
        table: {k: v - before.get(table, {}).get(k, 0) for k, v in counts.items()}
        if table != "autovacuum"
        else counts
        for table, counts in after.items()
    }


def reset_offers(url: str) -> None:
    """Empty the offer tables: every seeded user is undecided again."""
    from sqlalchemy import delete

    from service.db import make_engine
    from service.tables import campaign_budgets, coupons, offer_decisions

    engine = make_engine(url, timeout_seconds=60)
    with engine.begin() as conn:
        for table in (coupons, offer_decisions, campaign_budgets):
            conn.execute(delete(table))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


def sweep_breakdown(url: str, quiet_wait: float) -> dict[str, Any]:
    """Where a sweep's time goes: the offer tables emptied (every user undecided again), then
    ``OfferEngine.sweep`` in this process with the service's engine settings, every database
    call timed on the client side and summed by kind; what is left is Python."""
    reset_offers(url)
    offers, engine, calls = _offer_engine(url)
    quiet = wait_for_quiet(quiet_wait)
    scans = table_scans(url)
    meter = CpuMeter(os.getpid(), url)
    started = time.perf_counter()
    result = offers.sweep(BUILT_IN)
    seconds = time.perf_counter() - started
    usage = meter.stop()
    scans = scans_between(scans, table_scans(url))
    engine.dispose()
    phases = {k[6:]: v for k, v in calls.calls.items() if k.startswith("phase ")}
    database = calls.database()
    database_seconds = sum(v[1] for v in database.values())
    decided = int(phases.get("record", [0, 0.0])[0])
    return {
        "how": "OfferEngine.sweep in-process on the same users, all undecided again",
        **quiet,
        **usage,
        "seconds": round(seconds, 3),
        "evaluated": result.evaluated,
        "decisions": dict(result.decisions),
        "phases": {k: {"calls": int(n), "seconds": round(t, 3)} for k, (n, t) in phases.items()},
        "database_calls": calls.summary(),
        "database_seconds": round(database_seconds, 3),
        "python_seconds": round(seconds - database_seconds, 3),
        "table_scans": scans,
        "recorded": decided,
        "ms_per_recorded_decision": round(
            1000 * phases.get("record", [0, 0.0])[1] / max(1, decided), 3
        ),
        "database_calls_per_recorded_decision": round(
            sum(n for k, (n, _) in database.items() if k != "SELECT users") / max(1, decided), 2
        ),
    }


def evaluate_breakdown(url: str, users: list[str], quiet_wait: float) -> dict[str, Any]:
    """``OfferEngine.evaluate`` in this process, one user after the other (no load, no HTTP):
    time, database calls and database time per evaluation, by the decision made."""
    offers, engine, calls = _offer_engine(url)
    quiet = wait_for_quiet(quiet_wait)
    meter = CpuMeter(os.getpid(), url)
    kinds: dict[str, dict[str, list[float]]] = {}
    for user in users:
        calls.calls.clear()
        started = time.perf_counter()
        decision = offers.evaluate(user, BUILT_IN)
        seconds = time.perf_counter() - started
        database = calls.database()
        row = kinds.setdefault(decision.decision, {"ms": [], "calls": [], "database_ms": []})
        row["ms"].append(1000 * seconds)
        row["calls"].append(sum(n for n, _ in database.values()))
        row["database_ms"].append(1000 * sum(t for _, t in database.values()))
    usage = meter.stop()
    engine.dispose()
    return {
        "how": "OfferEngine.evaluate in-process, sequentially, on users not asked before",
        **quiet,
        **usage,
        "by_decision": {
            kind: {
                "evaluations": len(row["ms"]),
                "median_ms": round(float(np.median(row["ms"])), 3),
                "p99_ms": round(float(np.percentile(row["ms"], 99)), 3),
                "database_calls": round(float(np.mean(row["calls"])), 2),
                "median_database_ms": round(float(np.median(row["database_ms"])), 3),
            }
            for kind, row in sorted(kinds.items())
        },
    }


def _statement_kind(sql: str) -> str:
    """``INSERT coupons``, ``SELECT offer_decisions``, ``BEGIN``: the verb and first table."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    table = re.search(r"\b(?:INTO|UPDATE|FROM)\s+(\w+)", sql, re.IGNORECASE)
    return f"{verb} {table.group(1)}" if table else verb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("evaluate", "sweep"), default=None)
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3, help="evaluate runs (median p99)")
    parser.add_argument("--warmup", type=int, default=200, help="evaluations before the load")
    parser.add_argument("--eval-users", type=int, default=30_000)
    parser.add_argument(
        "--max-other-cpus",
        type=float,
        default=0.25,
        help="a run during which others kept more CPUs busy than this is done again",
    )
    parser.add_argument("--retries", type=int, default=3, help="such repeats at most, per run")
    parser.add_argument("--sweep-users", type=int, default=100_000)
    parser.add_argument(
        "--max-sweep", type=float, default=1_800.0, help="client timeout of one sweep (s)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="wait at most this long (s) for an idle machine before each measurement",
    )
    parser.add_argument(
        "--breakdown-users", type=int, default=1_000, help="in-process evaluations timed after"
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the in-process sweep that times its parts"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop servers, drop databases
    CODE_AT_START.update(code_version())
    WORK.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "offers.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    for key in ("name", "date", "command", "machine"):
        results.pop(key, None)
    backends = [args.backend] if args.backend else list(BACKENDS)
    parts = [args.only] if args.only else ["evaluate", "sweep"]
    for part in parts:
        for backend in backends:
            with fresh_database(backend, "recoffer_bench_offers") as url:
                if url is None:
                    continue
                figures = (evaluate_figures if part == "evaluate" else sweep_figures)(
                    backend, url, args
                )
            print(part, backend, json.dumps(figures, default=str), flush=True)
            results.setdefault(part, {})[backend] = figures
            save("offers", this_command(), results)  # after every part: nothing measured is lost


if __name__ == "__main__":
    main()
