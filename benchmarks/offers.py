"""Offers: latency of ``POST /v1/offers/evaluate``, and the campaign sweep over 100,000 new users.

Both parts run on SQLite and on PostgreSQL, each on a fresh database (a temporary directory
under var/bench, or a new PostgreSQL database dropped afterwards), seeded directly with
SQLAlchemy Core bulk inserts relative to the real clock (the service decides with real time).
Seeding is not part of any figure.

- evaluate: one uvicorn worker on CPU 0 with no model (the built-in campaign is store-wide),
  benchmarks.loadgen on CPU 1, open loop at 100 req/s for 30 s, every request for a different
  seeded user: a quarter eligible, the rest with too few views, already bought, or not new.
  The decisions answered are checked against the ones the seed implies.
- sweep: 100,000 users signed up over the last 23 h with Taobao-like view streams (distinct
  products on day one: median 5; about a quarter with more than 10 views), some of whom bought; then
  ``POST /v1/campaigns/new_user_high_intent/run`` against the served instance (same pinning),
  timed from the client, then checked in the database (one decision and at most one coupon per
  user, a coupon for every ``issued``, exactly the eligible users decided), then run again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
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

from benchmarks.api_latency import start
from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, save, this_command
from service.offers.campaigns import BUILT_IN
from service.offers.rules import in_holdout

FRONTEND_KEY = "bench-frontend-key-0123456789"
MARKETING_KEY = "bench-marketing-key-0123456789"
PG_ADMIN = os.environ.get(
    "RECOFFER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")
EVALUATE_P99_MS = 25.0
CATALOGUE = 20_000  # products
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_US = 3_600 * 10**6
EVALUATE_KINDS = ("eligible", "too_few_views", "already_purchased", "not_new")
EVALUATE_MIX = (0.25, 0.35, 0.20, 0.20)


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


# --- databases and the server -------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[str | None]:
    """A new empty database (None when PostgreSQL is unreachable), removed afterwards."""
    if backend == "sqlite":
        WORK.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="offers-", dir=WORK))
        try:
            yield f"sqlite:///{folder / 'recoffer.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"recoffer_bench_offers_{secrets.token_hex(4)}"
    try:
        admin = create_engine(
            PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no PostgreSQL here: that part is skipped and said so
        print(f"PostgreSQL unavailable, skipping: {str(exc).splitlines()[0]}", flush=True)
        yield None
        return
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def served(url: str, port: int) -> Iterator[None]:
    """One uvicorn worker on CPU 0 over ``url``, with no model (an empty model directory)."""
    models = Path(tempfile.mkdtemp(prefix="offers-models-", dir=WORK))
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(models),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
    }
    server = start("service.app:create_app_from_env", port, env)
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(models, ignore_errors=True)


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

        kinds = dict(
            conn.execute(
                select(d.c.decision, func.count())
                .where(d.c.campaign_id == campaign_id)
                .group_by(d.c.decision)
            ).all()
        )
        out = {
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
    now = datetime.now(UTC)
    population = seed_mixed_users(url, args.eval_users, now)
    print(backend, "seeded", population.describe(), flush=True)
    total = int(args.rate * args.seconds)
    if total + args.warmup > len(population.user_ids):
        raise SystemExit("--eval-users must exceed rate x seconds + warm-up (one user a request)")
    order = np.random.default_rng(5).permutation(len(population.user_ids))
    asked = population.user_ids[order[:total]].tolist()
    warm = population.user_ids[order[total : total + args.warmup]].tolist()
    expected = population.expected()
    path = "/v1/offers/evaluate"
    requests_file = WORK / "offers-requests.jsonl"
    requests_file.write_text(
        "".join(
            json.dumps(
                {"method": "POST", "path": path, "body": {"user_id": u, "campaign_id": BUILT_IN}}
            )
            + "\n"
            for u in asked
        )
    )
    with served(url, port):
        for user in warm:  # connections, statement caches and the thread pool warmed up
            call(port, "POST", path, FRONTEND_KEY, {"user_id": user, "campaign_id": BUILT_IN})
        command = ["taskset", "-c", "1", PYTHON, "-m", "benchmarks.loadgen", "--port", str(port)]
        command += ["--requests-file", str(requests_file), "--rate", str(args.rate)]
        command += ["--seconds", str(args.seconds), "--group-field", "decision"]
        command += ["--header", f"X-API-Key: {FRONTEND_KEY}"]
        proc = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=args.seconds + 120,
        )
        if proc.returncode != 0:
            raise SystemExit(f"load generator failed:\n{proc.stderr[-3000:]}")
        latency = json.loads(proc.stdout)
    checks = integrity(url)
    decided = checks.pop("_decided")
    expected_asked = {u: expected[u] for u in asked + warm}
    answered = {k: v["requests"] for k, v in latency["groups"].items()}
    wanted = Counter(expected[u] for u in asked)
    checks.update(_against_seed(decided, expected_asked))
    checks["answers_as_expected"] = answered == dict(wanted)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": this_command(),
        "database": population.describe(),
        "warmup_requests": len(warm),
        "latency": latency,
        "decisions_answered": answered,
        "decisions_expected": dict(wanted),
        "checks": checks,
        "met": latency["p99_ms"] <= EVALUATE_P99_MS
        and latency["errors"] == 0
        and latency["requests"] == total
        and checks["ok"]
        and checks["answers_as_expected"],
    }


def sweep_figures(
    backend: str, url: str, args: argparse.Namespace, port: int = 8112
) -> dict[str, Any]:
    now = datetime.now(UTC)
    population = seed_new_users(url, args.sweep_users, now)
    print(backend, "seeded", population.describe(), flush=True)
    expected = population.expected()
    run_path = f"/v1/campaigns/{BUILT_IN}/run"
    with served(url, port):
        status, first, wall = call(port, "POST", run_path, MARKETING_KEY, timeout=args.max_sweep)
        if status != 200:
            raise SystemExit(f"sweep answered {status}: {first}")
        print(backend, "first sweep", first, f"{wall:.1f} s", flush=True)
        checks = integrity(url)
        decided = checks.pop("_decided")
        checks.update(_against_seed(decided, expected))
        status, second, wall2 = call(port, "POST", run_path, MARKETING_KEY, timeout=args.max_sweep)
        if status != 200:
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
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": this_command(),
        "how": f"POST {run_path} to one uvicorn worker (CPU 0), timed by the client",
        "database": population.describe(),
        "expected_eligible": eligible,
        "first": {**first, "wall_seconds": round(wall, 3)},
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("evaluate", "sweep"), default=None)
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=200, help="evaluations before the load")
    parser.add_argument("--eval-users", type=int, default=20_000)
    parser.add_argument("--sweep-users", type=int, default=100_000)
    parser.add_argument(
        "--max-sweep", type=float, default=1_800.0, help="client timeout of one sweep (s)"
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "offers.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    for key in ("name", "date", "command", "machine"):
        results.pop(key, None)
    backends = [args.backend] if args.backend else list(BACKENDS)
    parts = [args.only] if args.only else ["evaluate", "sweep"]
    for part in parts:
        for backend in backends:
            with fresh_database(backend) as url:
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
