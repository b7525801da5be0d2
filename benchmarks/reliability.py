"""Reliability under faults, against a real uvicorn worker on 127.0.0.1.

1. PostgreSQL stopped and restarted under load. The service reaches a fresh database through a
   TCP proxy started here; "stopping PostgreSQL" closes the proxy's listener (new connections
   are refused) and resets every live connection, "restarting" it listens again on the same
   port. The real server is never touched. Open-loop load of recommendations (some with the
   page offer), event batches with unique ``client_event_id`` and offer evaluations. Checked:
   recommendations answer 200 throughout; event writes answer 503 (never 500) during the
   outage and 2xx again after it; every event acknowledged with 2xx is in the database;
   events refused with 503 are sent again afterwards and stored exactly once.
2. Sustained mixed load (recommendations, events, offer evaluations) for 60 s per backend:
   zero errors, every acknowledged event stored, and the worker's resident memory sampled every
   second (start, end, maximum, slope).
3. The trainer (``python -m training.cli train``, tiny synthetic shop) killed with SIGKILL at
   seeded random moments, half of them aimed at the writing of the artifact, while the worker
   hot-reloads every 50 ms and a client asks for recommendations: no failed request, every
   version served was complete and promoted, and a normal run afterwards is picked up.

    python -m benchmarks.reliability            # full: about 6 minutes
    python -m benchmarks.reliability --quick    # CI: about 2 minutes

Writes benchmarks/results/reliability.json and exits 1 when a figure that must be zero is not.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, save, this_command
from benchmarks.harness import (
    BACKENDS,
    FRONTEND_KEY,
    Server,
    TcpProxy,
    fresh_database,
    fresh_postgres,
    seed_sessions,
    server_command,
    session_users,
)
from benchmarks.loadgen import encode_request
from service.artifact import REGISTRY, TEMP_PREFIX, ModelStore, load_artifact

SEED = 20261124
EVENTS_PER_BATCH = 5
MIX = {"recommendations": 0.7, "events": 0.2, "offers": 0.1}
# memory counts as stable when it grows at most this much over the second half of the run
# (a leak of 1 KB a request at 150 requests/s adds 4.4 MiB in 30 s)
STABLE_GROWTH_MIB = 3.0


# --- the worker and its database ----------------------------------------------------------

# every worker here: quiet, one BLAS thread; keep-alive long, as the load client does not
# reconnect idle connections
SERVICE_ENV = {
    "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
    "RECOFFER_LOG_LEVEL": "WARNING",
    "RECOFFER_ACCESS_LOG": "false",
    "OPENBLAS_NUM_THREADS": "1",
}
COMMAND = functools.partial(server_command, keep_alive_seconds=600)
DATABASE_PREFIX = "recoffer_bench_rel"


def stored_event_ids(url: str, prefix: str) -> tuple[set[str], int]:
    """The distinct client_event_ids starting with ``prefix``, and how many rows carry one."""
    from sqlalchemy import create_engine, select

    from service.tables import events

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ids = conn.execute(
                select(events.c.client_event_id).where(events.c.client_event_id.like(f"{prefix}%"))
            ).scalars()
            rows = [str(i) for i in ids]
    finally:
        engine.dispose()
    return set(rows), len(rows)


# --- the model the worker serves ----------------------------------------------------------


@dataclass
class Population:
    known: list[str]
    items: list[str]
    sessions: list[str] = field(default_factory=list)  # users known only from their events


def build_model(root: Path, sessions: int) -> Population:
    """Train the "small" synthetic shop (2,000 users, 1,000 items) into ``root``."""
    from training.data.formats import purchases_from_frame
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run
    from training.synthetic.shop import generate_shop
    from training.synthetic.spec import spec_for

    shop = generate_shop(spec_for("small"))
    meta = shop.items[["item_id", "category", "name"]]
    purchases = purchases_from_frame(shop.purchases.merge(meta, on="item_id", how="left"))
    params = ModelParams(factors=16, iterations=10, regularization=0.1, threads=1)
    run(TrainConfig(model_dir=root, params=params, force=True), purchases=purchases)
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    return Population(
        known=[str(u) for u in artifact.arrays["user_ids"]],
        items=[str(i) for i in artifact.arrays["item_ids"]],
        sessions=session_users(sessions),
    )


# --- open-loop load -----------------------------------------------------------------------


@dataclass
class Request:
    due: float  # seconds after the start
    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    ids: tuple[str, ...] = ()


@dataclass
class Outcome:
    request: Request
    sent: float
    done: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    error: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def plan_load(
    rate: float, seconds: float, people: Population, prefix: str, rng: np.random.Generator
) -> list[Request]:
    """``rate * seconds`` requests, evenly spaced, kinds drawn with the shares of ``MIX``."""
    kinds = rng.choice(list(MIX), size=int(rate * seconds), p=list(MIX.values()))
    plan = []
    for n, kind in enumerate(str(k) for k in kinds):
        due = n / rate
        if kind == "recommendations":
            draw = rng.random()
            if draw < 0.7:
                user = people.known[rng.integers(len(people.known))]
            elif draw < 0.9:
                user = people.sessions[rng.integers(len(people.sessions))]
            else:
                user = f"nobody-{rng.integers(100_000)}"
            query = "?include_offer=true" if rng.random() < 0.2 else ""
            plan.append(Request(due, kind, "GET", f"/v1/users/{user}/recommendations{query}"))
        elif kind == "events":
            user = people.sessions[rng.integers(len(people.sessions))]
            batch = []
            for k in range(EVENTS_PER_BATCH):
                event_type = ("view", "view", "view", "add_to_cart", "purchase")[rng.integers(5)]
                batch.append(
                    {
                        "user_id": user,
                        "type": event_type,
                        "item_id": people.items[rng.integers(len(people.items))],
                        "client_event_id": f"{prefix}{n}-{k}",
                    }
                )
            ids = tuple(e["client_event_id"] for e in batch)
            plan.append(Request(due, kind, "POST", "/v1/events", {"events": batch}, ids))
        else:
            user = people.sessions[rng.integers(len(people.sessions))]
            plan.append(Request(due, kind, "POST", "/v1/offers/evaluate", {"user_id": user}))
    return plan


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: bytes, timeout: float
) -> tuple[int, bytes, bool]:
    """One request on a keep-alive connection: (status, body, whether the server closes it)."""
    writer.write(wire)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head[9:12])
    length, chunked, closing = 0, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            closing = value == b"close"
    if not chunked:
        return status, await asyncio.wait_for(reader.readexactly(length), timeout), closing
    body = b""
    while size := int((await asyncio.wait_for(reader.readline(), timeout)).strip(), 16):
        body += await asyncio.wait_for(reader.readexactly(size + 2), timeout)
    await reader.readline()
    return status, body, closing


def _error_code(body: bytes) -> str | None:
    try:
        return str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return "unparsable"


async def drive(
    port: int,
    plan: list[Request],
    *,
    actions: list[tuple[float, Callable[[], object]]] | None = None,
    connections: int = 32,
    timeout: float = 30.0,
) -> tuple[list[Outcome], dict[str, float]]:
    """Send ``plan`` open loop over keep-alive connections; run each action at its moment.

    Request i is handed to the first free connection at its due time; latency runs from the
    due time, so queueing counts. A request without an HTTP answer (refused, reset, timed out)
    has status 0 and is never retried. Returns the outcomes and when each action ran.
    """
    outcomes: list[Outcome] = []
    moments: dict[str, float] = {}
    queue: asyncio.Queue[Request | None] = asyncio.Queue()
    start = time.perf_counter() + 0.2
    headers = {"X-API-Key": FRONTEND_KEY}

    async def connection() -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (request := await queue.get()) is not None:
            sent = time.perf_counter() - start
            wire = encode_request("127.0.0.1", request.method, request.path, request.body, headers)
            try:
                if stream is None:
                    stream = await asyncio.open_connection("127.0.0.1", port)
                status, body, closing = await _exchange(*stream, wire, timeout)
                error = _error_code(body) if status >= 400 else None
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                status, error, closing = 0, type(exc).__name__, True
            outcomes.append(Outcome(request, sent, time.perf_counter() - start, status, error))
            if closing and stream is not None:
                stream[1].close()
                stream = None
        if stream is not None:
            stream[1].close()

    async def act() -> None:
        for at, action in actions or []:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            action()
            moments[getattr(action, "__name__", str(at))] = time.perf_counter() - start

    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    tasks.append(asyncio.create_task(act()))
    for request in plan:
        delay = start + request.due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(request)
    for _ in range(connections):
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return outcomes, moments


def latency_ms(outcomes: list[Outcome]) -> dict[str, float]:
    """Percentiles from each request's due time to its answer (queueing included)."""
    if not outcomes:
        return {}
    ms = np.array([o.done - o.request.due for o in outcomes]) * 1000
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "max": round(float(ms.max()), 2),
    }


def statuses(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = {}
    for o in outcomes:
        table.setdefault(o.request.kind, Counter())[str(o.status)] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in sorted(table.items())}


def resend_refused(base_url: str, refused: list[Outcome], attempts: int = 5) -> Counter[int]:
    """Send refused event batches again with the same ids, as a client would; final statuses."""
    final: Counter[int] = Counter()
    with httpx.Client(base_url=base_url, headers={"X-API-Key": FRONTEND_KEY}, timeout=30) as client:
        for outcome in refused:
            status = 0
            for attempt in range(attempts):
                try:
                    status = client.post("/v1/events", json=outcome.request.body).status_code
                except httpx.HTTPError:
                    status = 0
                if 200 <= status < 300:
                    break
                time.sleep(0.5 * (attempt + 1))
            final[status] += 1
    return final


# --- 1. PostgreSQL stopped and restarted under load ---------------------------------------


def outage_figures(args: argparse.Namespace, root: Path, people: Population) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    before, down, after = args.outage_phases
    with fresh_postgres(DATABASE_PREFIX) as direct:
        if direct is None:
            return {"skipped": "PostgreSQL unreachable"}
        target = make_url(direct)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        via_proxy = target.set(host="127.0.0.1", port=proxy.port)
        env = {
            "RECOFFER_MODEL_DIR": str(root),
            "RECOFFER_DATABASE_URL": via_proxy.render_as_string(hide_password=False),
        }
        try:
            with Server(
                {**SERVICE_ENV, **env}, command=COMMAND, log=WORK / "reliability-outage.log"
            ) as server:
                prefix = f"outage-{secrets.token_hex(3)}-"
                rng = np.random.default_rng(SEED)
                plan = plan_load(args.outage_rate, before + down + after, people, prefix, rng)
                rss_start = server.rss_mib()

                def stop_postgres() -> None:
                    proxy.stop()

                def start_postgres() -> None:
                    proxy.start()

                outcomes, moments = asyncio.run(
                    drive(
                        server.port,
                        plan,
                        actions=[(before, stop_postgres), (before + down, start_postgres)],
                    )
                )
                stored_before_retry, _ = stored_event_ids(direct, prefix)
                refused = [o for o in outcomes if o.request.kind == "events" and not o.ok]
                retried = resend_refused(server.url, refused)
                stored, rows = stored_event_ids(direct, prefix)
                rss_end = server.rss_mib()
                log_tail = server.log_tail(5)
        finally:
            proxy.stop()
    cut, restore = moments["stop_postgres"], moments["start_postgres"]

    def phase(o: Outcome) -> str:
        if o.done <= cut:
            return "before"
        if o.sent >= restore:
            return "after"
        if o.sent >= cut and o.done <= restore:
            return "outage"
        return "straddling"

    by_phase: dict[str, dict[str, dict[str, int]]] = {}
    for name in ("before", "outage", "straddling", "after"):
        by_phase[name] = statuses([o for o in outcomes if phase(o) == name])
    event_outcomes = sorted(
        (o for o in outcomes if o.request.kind == "events"), key=lambda o: o.sent
    )
    after_restore = [o for o in event_outcomes if o.sent >= restore]
    first_ok = next((o for o in after_restore if o.ok), None)
    acked = {i for o in event_outcomes if o.ok for i in o.request.ids}
    sent_ids = {i for o in event_outcomes for i in o.request.ids}
    unexpected = [
        o
        for o in outcomes
        if o.status not in (200, 503) or (o.status == 503 and o.error != "database_unavailable")
    ]
    return {
        "backend": "postgresql",
        "how": "TCP proxy: listener closed and connections reset, then listening again",
        "rate": args.outage_rate,
        "phases_seconds": {"before": before, "outage": down, "after": after},
        "cut_at_s": round(cut, 3),
        "restored_at_s": round(restore, 3),
        "requests": len(outcomes),
        "statuses_by_phase": by_phase,
        "recommendations_failed": sum(
            1 for o in outcomes if o.request.kind == "recommendations" and o.status != 200
        ),
        "recommendations_during_outage": sum(
            1 for o in outcomes if o.request.kind == "recommendations" and phase(o) == "outage"
        ),
        "events_503_during_outage": sum(
            1 for o in event_outcomes if phase(o) == "outage" and o.status == 503
        ),
        "events_2xx_during_outage": sum(1 for o in event_outcomes if phase(o) == "outage" and o.ok),
        "events_refused_before_outage": sum(
            1 for o in event_outcomes if phase(o) == "before" and not o.ok
        ),
        "unexpected_statuses": len(unexpected),
        "unexpected_examples": sorted(
            {f"{o.request.kind} {o.status} {o.error}" for o in unexpected}
        )[:5],
        "events_recovered_after_s": (
            None if first_ok is None else round(first_ok.done - restore, 3)
        ),
        "events_refused_after_recovery": (
            0
            if first_ok is None
            else sum(1 for o in after_restore if o.sent > first_ok.sent and not o.ok)
        ),
        "events_sent": len(sent_ids),
        "events_acknowledged": len(acked),
        "events_lost": len(acked - stored_before_retry),
        "events_refused_but_stored": len((sent_ids - acked) & stored_before_retry),
        "refused_batches_resent": len(refused),
        "resent_final_statuses": {str(k): v for k, v in sorted(retried.items())},
        "events_stored_after_resend": len(stored),
        "events_missing_after_resend": len(sent_ids - stored),
        "event_rows_duplicated": rows - len(stored),
        "latency_ms": {
            kind: latency_ms([o for o in outcomes if o.request.kind == kind]) for kind in MIX
        },
        "rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
        "server_log_tail": log_tail,
    }


def outage_failures(o: dict[str, Any]) -> list[str]:
    if "skipped" in o:
        return []
    problems = []
    if o["recommendations_failed"]:
        problems.append(f"{o['recommendations_failed']} recommendations failed")
    if not o["recommendations_during_outage"]:
        problems.append("no recommendation was sent during the outage")
    if o["unexpected_statuses"]:
        problems.append(
            f"{o['unexpected_statuses']} answers other than 200/503 database_unavailable"
        )
    if not o["events_503_during_outage"]:
        problems.append("no event write was refused with 503 during the outage")
    if o["events_2xx_during_outage"]:
        problems.append(f"{o['events_2xx_during_outage']} event writes accepted during the outage")
    if o["events_refused_before_outage"]:
        problems.append(f"{o['events_refused_before_outage']} event writes refused before it")
    if o["events_recovered_after_s"] is None:
        problems.append("event writes did not succeed again after the restart")
    if o["events_refused_after_recovery"]:
        problems.append(f"{o['events_refused_after_recovery']} event writes refused after recovery")
    for key in ("events_lost", "events_missing_after_resend", "event_rows_duplicated"):
        if o[key]:
            problems.append(f"{key.replace('_', ' ')}: {o[key]}")
    return problems


# --- 2. sustained load --------------------------------------------------------------------


def _slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    t, mib = np.array(samples).T
    return float(np.polyfit(t, mib, 1)[0] * 60)


def sustained_figures(
    args: argparse.Namespace, root: Path, people: Population, backend: str, url: str
) -> dict[str, Any]:
    # every session user starts with a full window (the worker keeps a user's last 50 events in
    # memory): its memory under load then shows steady-state growth, not the windows filling up
    seeded = seed_sessions(
        url, people.sessions, people.items, views=50, newest_ago=timedelta(hours=2), seed=SEED + 2
    )
    env = {"RECOFFER_MODEL_DIR": str(root), "RECOFFER_DATABASE_URL": url}
    log = WORK / f"reliability-sustained-{backend}.log"
    with Server({**SERVICE_ENV, **env}, command=COMMAND, log=log) as server:
        prefix = f"load-{secrets.token_hex(3)}-"
        plan = plan_load(args.rate, args.seconds, people, prefix, np.random.default_rng(SEED + 1))
        samples: list[tuple[float, float]] = [(0.0, server.rss_mib())]
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - started, server.rss_mib()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        try:
            outcomes, _ = asyncio.run(drive(server.port, plan))
        finally:
            stop.set()
            sampler.join(5)
        server_cpu = server.cpu_seconds() - server_cpu
        client_cpu = time.process_time() - client_cpu
        stored, rows = stored_event_ids(url, prefix)
        log_tail = server.log_tail(5)
    acked = {i for o in outcomes if o.request.kind == "events" and o.ok for i in o.request.ids}
    errors = [o for o in outcomes if not o.ok]
    elapsed = max(o.done for o in outcomes)
    rss = [mib for _, mib in samples]
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    return {
        "backend": backend,
        "seconds": args.seconds,
        "rate": args.rate,
        "mix": MIX,
        "session_users": len(people.sessions),
        "events_seeded": seeded,
        "requests": len(outcomes),
        "achieved_rate": round(len(outcomes) / elapsed, 1),
        "cpu_seconds": {"worker": round(server_cpu, 1), "load_client": round(client_cpu, 1)},
        "errors": len(errors),
        "error_examples": sorted({f"{o.request.kind} {o.status} {o.error}" for o in errors})[:5],
        "statuses": statuses(outcomes),
        "latency_ms": {
            kind: latency_ms([o for o in outcomes if o.request.kind == kind]) for kind in MIX
        },
        "events_acknowledged": len(acked),
        "events_lost": len(acked - stored),
        "event_rows_duplicated": rows - len(stored),
        "rss_mib": {
            "start": round(rss[0], 1),
            "end": round(rss[-1], 1),
            "max": round(max(rss), 1),
            "slope_mib_per_min": round(_slope_mib_per_min(samples), 2),
            "second_half_slope_mib_per_min": round(_slope_mib_per_min(half), 2),
            "second_half_growth_mib": round(half[-1][1] - half[0][1], 1),
            "samples": [[round(t, 1), round(m, 1)] for t, m in samples],
        },
        "stable_limit_mib": STABLE_GROWTH_MIB,
        "server_log_tail": log_tail,
    }


def sustained_failures(s: dict[str, Any]) -> list[str]:
    problems = []
    name = f"sustained {s['backend']}"
    if s["errors"]:
        problems.append(f"{name}: {s['errors']} errors {s['error_examples']}")
    if s["events_lost"] or s["event_rows_duplicated"]:
        problems.append(
            f"{name}: {s['events_lost']} events lost, {s['event_rows_duplicated']} duplicated"
        )
    if s["rss_mib"]["second_half_growth_mib"] > STABLE_GROWTH_MIB:
        problems.append(
            f"{name}: memory grew {s['rss_mib']['second_half_growth_mib']} MiB in the second half"
        )
    return problems


# --- 3. the trainer killed at random moments ----------------------------------------------

# small model, no tuning: one run is about a second of work after the imports
FAST_TRAIN = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]
# every version served during the kills is checked whole afterwards, so none may be pruned
# meanwhile (a run keeps the newest 10 by default; pruning has its own tests)
FAST_TRAIN += ["--keep-versions", "1000"]
MARKERS = (
    ("loaded", "purchases loaded from"),
    ("validation", "(validation stage)"),
    ("test", "(test stage)"),
    ("serving", "(serving stage)"),
    ("written", "artifact_written"),
    ("promoted", "promoted to current"),
)


class Trainer:
    """One ``recoffer train`` child process; notes when each progress marker reached stderr."""

    def __init__(self, data: Path, root: Path) -> None:
        command = [PYTHON, "-m", "training.cli", "train", "--data", str(data)]
        command += ["--model-dir", str(root), *FAST_TRAIN, "--force", "-v"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
        )
        self.seen: dict[str, float] = {}
        self.tail: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.tail = [*self.tail[-20:], line.rstrip()]
                for name, text in MARKERS:
                    if name not in self.seen and text in line:
                        self.seen[name] = time.monotonic() - self.started
                self._changed.notify_all()
        with self._changed:
            self.seen["eof"] = time.monotonic() - self.started
            self._changed.notify_all()

    def wait_for(self, marker: str, timeout: float = 60.0) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: marker in self.seen or "eof" in self.seen, timeout)
            return marker in self.seen

    def kill_at(self, moment: float) -> None:
        time.sleep(max(0.0, self.started + moment - time.monotonic()))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def kill_somewhere(
        self, rng: random.Random, attempt: int, duration: float, publish: float
    ) -> None:
        """SIGKILL at a random moment: on odd attempts anywhere in a run of ``duration``
        seconds (imports included), on even ones within ``publish`` seconds (and a quarter) of
        the serving fit's start, aimed at writing and promoting."""
        if attempt % 2:
            moment = rng.uniform(0.0, duration)
        elif self.wait_for("serving"):
            moment = self.seen["serving"] + rng.uniform(0.0, 1.25 * publish)
        else:
            moment = 0.0
        self.kill_at(moment)

    def finish(self, timeout: float = 120.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(10)
        return code

    def last_marker(self) -> str:
        reached = [name for name, _ in MARKERS if name in self.seen]
        return reached[-1] if reached else "start"


def temporaries(root: Path) -> set[str]:
    store = ModelStore(root)
    folders = [root, store.versions_dir] if store.versions_dir.is_dir() else [root]
    return {str(p) for d in folders for p in d.iterdir() if p.name.startswith(TEMP_PREFIX)}


def landed_in(root: Path, versions: set[str], leftovers: set[str], trainer: Trainer) -> str:
    """Where a killed run was, from what it left on disk (new leftovers, versions) and printed."""
    store = ModelStore(root)
    fresh = [Path(p).name for p in temporaries(root) - leftovers]
    if fresh:
        registry = any(REGISTRY in name for name in fresh)
        return "writing the registry" if registry else "writing the version directory"
    new = set(store.versions()) - versions
    if new:
        return "after promotion" if store.current() in new else "written, not yet promoted"
    return {
        "start": "start-up (imports)",
        "loaded": "validation fit",
        "validation": "validation fit",
        "test": "test fit and evaluation",
        "serving": "serving fit",
        "written": "written, not yet promoted",
    }.get(trainer.last_marker(), trainer.last_marker())


class Watcher:
    """A thread asking the worker for recommendations (bounded in time and count)."""

    def __init__(self, base_url: str, user_id: str, seconds: float) -> None:
        self.url = f"{base_url}/v1/users/{user_id}/recommendations"
        self.deadline = time.monotonic() + seconds
        self.statuses: Counter[str] = Counter()
        # each version with the (wall clock) time it was first served, in order
        self.versions: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(headers={"X-API-Key": FRONTEND_KEY}, timeout=30) as client:
            for _ in range(2_000_000):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                try:
                    r = client.get(self.url)
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.statuses[status] += 1
                if status == "200":
                    version = r.json()["model_version"]
                    if not self.versions or self.versions[-1][0] != version:
                        self.versions.append((version, time.time()))
                time.sleep(0.005)  # leave the trainer a core

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def kill_figures(kills: int, seed: int) -> dict[str, Any]:
    from training.synthetic.shop import generate_shop, write_shop
    from training.synthetic.spec import spec_for

    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="reliability-kills-", dir=WORK))
    try:
        data = write_shop(generate_shop(spec_for("tiny")), folder / "shop")["purchases"]
        root = folder / "models"
        first = Trainer(data, root)
        if first.finish() != 0:
            raise RuntimeError("the first training run failed:\n" + "\n".join(first.tail))
        duration = first.seen["eof"]
        publish = max(0.02, first.seen["written"] - first.seen["serving"])
        store = ModelStore(root)
        user = str(load_artifact(store.current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]
        env = {
            "RECOFFER_MODEL_DIR": str(root),
            "RECOFFER_DATABASE_URL": f"sqlite:///{folder / 'recoffer.db'}",
            "RECOFFER_RELOAD_INTERVAL_SECONDS": "0.05",
        }
        rng = random.Random(seed)
        phases: Counter[str] = Counter()
        done = attempts = 0
        started = time.monotonic()
        log = WORK / "reliability-kills.log"
        with Server({**SERVICE_ENV, **env}, command=COMMAND, log=log) as server:
            watcher = Watcher(server.url, user, seconds=60 + 10 * kills)
            try:
                while done < kills and attempts < 3 * kills:
                    attempts += 1
                    versions, leftovers = set(store.versions()), temporaries(root)
                    trainer = Trainer(data, root)
                    trainer.kill_somewhere(rng, attempts, duration, publish)
                    code = trainer.finish()
                    if code == 0:
                        phases["finished before the kill"] += 1
                        continue
                    if code != -signal.SIGKILL:
                        raise RuntimeError(f"trainer exited {code}:\n" + "\n".join(trainer.tail))
                    done += 1
                    phases[landed_in(root, versions, leftovers, trainer)] += 1
                kill_seconds = time.monotonic() - started
                last = Trainer(data, root)
                last_code = last.finish()
                finished = time.monotonic()
                newest = store.current()
                while time.monotonic() < finished + 10 and watcher.versions[-1][0] != newest:
                    time.sleep(0.02)
                promoted_at = (root / REGISTRY).stat().st_mtime
                picked_up = (
                    round(watcher.versions[-1][1] - promoted_at, 3)
                    if watcher.versions[-1][0] == newest
                    else None
                )
                metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
            finally:
                watcher.close()
        served = [v for v, _ in watcher.versions]
        promoted = set(store.read_registry()["history"])
        unreadable = 0
        for version in set(served) | set(store.versions()):
            try:
                load_artifact(store.version_path(version), verify_checksums=True)
            except Exception:  # counted and reported: a version that is not whole
                unreadable += 1
        failed_loads = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('recoffer_model_loads_total{outcome="failed"}')
        )
        return {
            "kills": done,
            "attempts": attempts,
            "seed": seed,
            "phases": dict(phases.most_common()),
            "kill_loop_seconds": round(kill_seconds, 1),
            "requests": sum(watcher.statuses.values()),
            "failed_requests": sum(n for s, n in watcher.statuses.items() if s != "200"),
            "statuses": dict(watcher.statuses),
            "versions_served": len(served),
            "served_not_promoted": sum(1 for v in served if v not in promoted),
            "served_out_of_order": int(served != sorted(set(served))),
            "versions_unreadable": unreadable,
            "failed_model_loads": int(failed_loads),
            "final_run_exit_code": last_code,
            "final_run_served_after_promotion_s": picked_up,
            "leftovers_after_final_run": len(temporaries(root)),
            "server_log_tail": server.log_tail(5),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def kill_failures(k: dict[str, Any], wanted: int) -> list[str]:
    problems = []
    if k["kills"] < wanted:
        problems.append(f"only {k['kills']} of {wanted} kills landed")
    for key in (
        "failed_requests",
        "served_not_promoted",
        "served_out_of_order",
        "versions_unreadable",
        "failed_model_loads",
        # every Trainer runs with --force: promoted, so 0; a refusal (3) would be a change here
        "final_run_exit_code",
        "leftovers_after_final_run",
    ):
        if k[key]:
            problems.append(f"trainer kills: {key.replace('_', ' ')} = {k[key]}")
    if k["final_run_served_after_promotion_s"] is None:
        problems.append("trainer kills: the run after the kills was not picked up within 10 s")
    return problems


# --- report -------------------------------------------------------------------------------


def _answers(counts: dict[str, int]) -> str:
    """``{"200": 690}`` -> ``"690 x 200"``."""
    return ", ".join(f"{n:,} x {status}" for status, n in counts.items()) or "none"


def render(doc: dict[str, Any]) -> list[str]:
    """The "Reliability under faults" section of docs/benchmarks.md."""
    m = doc["machine"]
    out = [
        "## Reliability under faults",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}.",
        "",
        f"Command: `{doc['command']}`",
        "",
        "One uvicorn worker on 127.0.0.1, open-loop load from the same machine. In the test "
        "suite as well: `tests/test_reliability.py` (20 trainer kills under an in-process "
        "service), `tests/service/test_outages.py` (PostgreSQL cut, SQLite locked), "
        "`tests/service/test_artifact.py` and `tests/service/test_api.py` (truncated or "
        "corrupt artifacts refused with the file named while the old model keeps serving).",
        "",
        "| scenario | runs | failures | losses |",
        "|---|---|---|---|",
    ]
    k = doc.get("trainer_kills")
    if k:
        wrong = k["served_not_promoted"] + k["versions_unreadable"] + k["failed_model_loads"]
        out.append(
            f"| trainer killed with SIGKILL while the service hot-reloads | {k['kills']} kills, "
            f"{k['requests']:,} requests | {k['failed_requests']} failed requests, {wrong} "
            "partial or unpromoted versions loaded | — |"
        )
    o = doc.get("outage", {})
    if o and "skipped" not in o:
        out.append(
            f"| PostgreSQL stopped {o['phases_seconds']['outage']:g} s and restarted under "
            f"load | {o['requests']:,} requests | {o['recommendations_failed']} failed "
            f"recommendations, {o['unexpected_statuses']} answers other than 200 or 503 | "
            f"{o['events_lost']} of {o['events_acknowledged']:,} acknowledged events |"
        )
    for s in doc.get("sustained", []):
        out.append(
            f"| sustained load {s['seconds']:g} s, {s['backend']} | {s['requests']:,} requests "
            f"| {s['errors']} errors | {s['events_lost']} of {s['events_acknowledged']:,} "
            "acknowledged events |"
        )
    out.append("")
    if k:
        phases = ", ".join(f"{name} {n}" for name, n in k["phases"].items())
        out.append(
            f"- Trainer kills (tiny shop, seed {k['seed']}, every other kill aimed at the "
            f"serving fit and the writes), where they landed: {phases}. All "
            f"{k['versions_served']} versions served were complete and promoted, in order; the "
            f"run after the kills exited {k['final_run_exit_code']} and its version was served "
            f"{k['final_run_served_after_promotion_s']} s after its promotion, with "
            f"{k['leftovers_after_final_run']} leftovers on disk."
        )
    if o and "skipped" not in o:
        down = o["statuses_by_phase"]["outage"]
        out.append(
            f"- PostgreSQL outage ({o['how']}), {o['rate']:g} req/s: while it was down, "
            f"recommendations answered {_answers(down.get('recommendations', {}))}, event "
            f"writes {_answers(down.get('events', {}))}, offer evaluations "
            f"{_answers(down.get('offers', {}))}; event writes succeeded again "
            f"{o['events_recovered_after_s']} s after the restart. The "
            f"{o['refused_batches_resent']} refused batches, sent again with the same ids: "
            f"{_answers(o['resent_final_statuses'])}; {o['events_refused_but_stored']} events "
            f"answered 503 had been stored all the same; {o['event_rows_duplicated']} duplicate "
            "rows."
        )
    elif o:
        out.append(f"- PostgreSQL outage: skipped ({o['skipped']}).")
    for s in doc.get("sustained", []):
        r, lat = s["rss_mib"], s["latency_ms"]
        out.append(
            f"- Sustained {s['backend']}: {s['achieved_rate']:g} req/s of {s['rate']:g} asked "
            f"(70 % recommendations, 20 % batches of {EVENTS_PER_BATCH} events, 10 % offer "
            f"evaluations; {s['session_users']:,} session users whose 50-event windows were "
            f"full at the start); p99 {lat['recommendations'].get('p99')} / "
            f"{lat['events'].get('p99')} / {lat['offers'].get('p99')} ms. Worker RSS "
            f"{r['start']:.1f} MiB at the start, {r['end']:.1f} at the end, {r['max']:.1f} at "
            f"most; slope {r['slope_mib_per_min']:+.1f} MiB/min over the run, "
            f"{r['second_half_slope_mib_per_min']:+.1f} over its second half "
            f"({r['second_half_growth_mib']:+.1f} MiB; stable means at most "
            f"{s['stable_limit_mib']:g} MiB)."
        )
    verdict = "**met**" if not doc["failures"] else "**not met**: " + "; ".join(doc["failures"])
    out += ["", f"- Target: every reliability figure zero (runs, failures, losses): {verdict}.", ""]
    return out


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI: shorter runs, about 2 minutes")
    parser.add_argument("--seconds", type=float, help="sustained load per backend (default 60)")
    parser.add_argument("--rate", type=float, default=150.0, help="sustained requests per second")
    parser.add_argument("--outage-rate", type=float, default=100.0)
    parser.add_argument(
        "--session-users", type=int, default=1000, help="users known only from their events"
    )
    parser.add_argument("--kills", type=int, help="trainer kills (default 50, quick 20)")
    parser.add_argument(
        "--only", choices=("outage", "sustained", "kills"), action="append", default=None
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        action="append",
        help="sustained load on this backend (default: both, quick: sqlite)",
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    args.kills = args.kills or (20 if args.quick else 50)
    args.outage_phases = (4.0, 4.0, 6.0) if args.quick else (8.0, 10.0, 12.0)
    wanted = set(args.only or ("outage", "sustained", "kills"))
    # a CI timeout sends SIGTERM: unwind, so servers stop and the database is dropped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"quick": args.quick}
    failures: list[str] = []
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="reliability-", dir=WORK))
    try:
        if wanted & {"outage", "sustained"}:
            print("training the small synthetic shop", flush=True)
            people = build_model(folder / "models", args.session_users)
        if "outage" in wanted:
            doc["outage"] = outage_figures(args, folder / "models", people)
            failures += outage_failures(doc["outage"])
            print("outage", _brief(doc["outage"]), flush=True)
        if "sustained" in wanted:
            doc["sustained"] = []
            for backend in args.backend or (["sqlite"] if args.quick else BACKENDS):
                with fresh_database(backend, DATABASE_PREFIX) as url:
                    if url is None:
                        continue
                    figures = sustained_figures(args, folder / "models", people, backend, url)
                doc["sustained"].append(figures)
                failures += sustained_failures(figures)
                print("sustained", _brief(figures), flush=True)
        if "kills" in wanted:
            doc["trainer_kills"] = kill_figures(args.kills, SEED)
            failures += kill_failures(doc["trainer_kills"], args.kills)
            print("kills", _brief(doc["trainer_kills"]), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    doc["failures"] = failures
    doc["seconds"] = round(time.monotonic() - started, 1)
    # --quick is CI's check: its figures go under var/bench, the tracked results stay as they are
    path = save("reliability", this_command(), doc, WORK if args.quick else RESULTS)
    print(f"wrote {path.relative_to(ROOT)} in {doc['seconds']} s", flush=True)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in figures.items()
        if k not in ("statuses_by_phase", "rss_mib", "server_log_tail", "latency_ms")
    } | (
        {"rss_mib": {k: v for k, v in figures["rss_mib"].items() if k != "samples"}}
        if "rss_mib" in figures
        else {}
    )


if __name__ == "__main__":
    main()
