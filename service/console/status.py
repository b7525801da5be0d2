"""What the console's health page reports (ops): the database, the model and the background
work of this worker, each as a check that says OK or what is wrong in words.

Reuses what the service already knows (``service.health``: readiness and the model holder; the
sweep jobs', segment runs' and webhook outbox's own tables) and adds the loops of this worker
(``service.background``: running, stopped with its error, or turned off by a setting). Every
query is read-only and may fail on its own: the check says so, the page never breaks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.engine import URL, make_url

from service.health import without_paths
from service.offers.repository.jobs import ACTIVE
from service.state import AppState
from service.tables import events, sweep_jobs, webhook_deliveries

OK, FAILING, OFF, WAITING = "OK", "failing", "off", "not yet"
RECENT_SWEEPS = 8

# the loops of ``create_app``'s lifespan, their task names, and the setting that turns each off
LOOPS: tuple[tuple[str, str, str], ...] = (
    ("recoffer-tail", "Event tail", "event_poll_seconds"),
    ("recoffer-models", "Model reload poll", "reload_interval_seconds"),
    ("recoffer-offers", "Coupon and budget gauges", "offer_metrics_seconds"),
    ("recoffer-campaigns", "Campaign changes poll", "campaign_poll_seconds"),
    ("recoffer-schedule", "Campaign schedule", "campaign_schedule_seconds"),
    ("recoffer-webhooks", "Webhook sender", "webhook_url"),
)


@dataclass(frozen=True)
class Check:
    """One thing checked: its status in words, why, and the figures behind it."""

    name: str
    status: str  # OK, failing, off, not yet
    detail: str
    facts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tone(self) -> str:
        """The page's class for the status (its word is always printed too)."""
        return {OK: "good", FAILING: "bad"}.get(self.status, "warn")


@dataclass(frozen=True)
class SweepRow:
    campaign_id: str
    state: str
    requested_at: datetime
    finished_at: datetime | None
    processed: int
    error: str | None


@dataclass(frozen=True)
class HealthReport:
    checked_at: datetime
    seconds: float
    database: Check
    model: Check
    jobs: list[Check]
    sweeps: list[SweepRow]

    @property
    def checks(self) -> list[Check]:
        return [self.database, self.model, *self.jobs]

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAILING]


def loop_states() -> dict[str, str]:
    """This worker's background loops by task name: ``running`` or why it stopped. Call on
    the event loop (the tasks live there)."""
    states: dict[str, str] = {}
    for task in asyncio.all_tasks():
        name = task.get_name()
        if not name.startswith("recoffer-"):
            continue
        if not task.done():
            states[name] = "running"
        elif task.cancelled():
            states[name] = "stopped (cancelled)"
        else:
            exc = task.exception()
            states[name] = f"stopped: {type(exc).__name__}: {exc}" if exc else "stopped"
    return states


def _ago(now: datetime, moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _age(age: timedelta) -> str:
    days = age.total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{age.total_seconds() / 3600:.1f} hours"


def _moment(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@functools.cache
def _head_revision() -> str | None:
    """The newest migration this build has (read once: the files do not change)."""
    from alembic.script import ScriptDirectory

    from service.db import alembic_config

    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def safe_url(url: str) -> str:
    """The database URL without its password (and a SQLite file by its name only)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = (parsed.database or ":memory:").rsplit("/", 1)[-1]
        return f"sqlite:///…/{name}"
    bare = URL.create(  # ``URL.set(password=None)`` would keep it
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False)


def database_check(state: AppState) -> Check:
    engine = state.repository.engine
    facts = [("Dialect", engine.dialect.name), ("URL", safe_url(state.settings.database_url))]
    t0 = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            latency = (time.perf_counter() - t0) * 1000
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:  # unreachable, locked, or not migrated
        return Check(
            "Database", FAILING, without_paths(_first_line(exc), state.settings.model_dir), facts
        )
    head = _head_revision()
    facts += [
        ("Answers in", f"{latency:.1f} ms"),
        ("Migration", str(revision)),
        ("Newest migration", str(head)),
    ]
    if revision != head:
        return Check(
            "Database",
            FAILING,
            f"migrated to {revision}, this build expects {head}: run recoffer migrate",
            facts,
        )
    if not state.health.database_ready:
        return Check(
            "Database", FAILING, "reachable now, but the event tail last saw it fail", facts
        )
    return Check("Database", OK, "reachable and migrated", facts)


def model_check(state: AppState) -> Check:
    holder, now = state.models, state.clock()
    try:
        wanted: str | None = holder.store.current()
        registry = wanted or "none promoted yet"
    except Exception as exc:
        wanted, registry = None, f"unreadable: {state.health.public(_first_line(exc))}"
    current = holder.current
    facts = [("Registry's current", registry)]
    if current is None:
        why = (
            "no model trained yet: recommendations come from the event log"
            if holder.last_error is None
            else state.health.public(holder.last_error)
        )
        return Check("Model", WAITING if holder.last_error is None else FAILING, why, facts)
    manifest = current.model.artifact.manifest
    trained = manifest.trained_at
    age = now - trained
    facts += [
        ("Serving", current.model.version),
        ("Trained", f"{_moment(trained)} ({_ago(now, trained)})"),
        ("Data until", _moment(manifest.data_until)),
        ("Age", _age(age)),
        ("Users × items", f"{manifest.counts.users:,} × {manifest.counts.items:,}"),
    ]
    if holder.last_error is not None:
        return Check("Model", FAILING, state.health.public(holder.last_error), facts)
    if wanted is not None and wanted != current.model.version:
        return Check(
            "Model", WAITING, f"{wanted} is current; this worker loads it at its next poll", facts
        )
    return Check("Model", OK, f"serving {current.model.version}", facts)


def _loop_checks(state: AppState, loops: dict[str, str]) -> list[Check]:
    checks = []
    for task, label, setting in LOOPS:
        value = getattr(state.settings, setting)
        turned_off = value is None or (isinstance(value, int | float) and value <= 0)
        if setting == "event_poll_seconds":
            turned_off = False
        every = f"every {value:g} s" if isinstance(value, int | float) and not turned_off else None
        found = loops.get(task)
        facts = [("Setting", f"RECOFFER_{setting.upper()}")] + ([("Runs", every)] if every else [])
        if found is None:
            status, detail = (
                (OFF, "turned off by its setting") if turned_off else (FAILING, "not running")
            )
        elif found == "running":
            status, detail = OK, "running"
        else:
            status, detail = FAILING, state.health.public(found)
        checks.append(Check(label, status, detail, facts))
    return checks


def _tail_check(state: AppState) -> Check:
    facts = [("Events read up to id", f"{state.activity.watermark:,}")]
    try:
        with state.repository.engine.connect() as conn:
            newest = conn.execute(select(func.max(events.c.received_at))).scalar()
    except Exception as exc:
        return Check("Event store", FAILING, _first_line(exc), facts)
    facts.append(("Newest event received", f"{_moment(newest)} ({_ago(state.clock(), newest)})"))
    if not state.health.database_ready:
        return Check("Event store", FAILING, "the tail cannot read the database", facts)
    return Check("Event store", OK, "events are read", facts)


def _segments_check(state: AppState) -> Check:
    try:
        run = state.segments.repository.latest_run()
    except Exception as exc:
        return Check("Segment runs", FAILING, _first_line(exc), [])
    if run is None:
        return Check("Segment runs", WAITING, "never run: recoffer segments run", [])
    now = state.clock()
    facts = [
        ("Last run", f"{_moment(run['finished_at'])} ({_ago(now, run['finished_at'])})"),
        ("Users", f"{run['users']:,}"),
        ("Took", f"{run['seconds']:.1f} s"),
    ]
    return Check("Segment runs", OK, f"last run {_ago(now, run['finished_at'])}", facts)


def _webhook_check(state: AppState) -> Check:
    hooks = state.webhooks
    if hooks is None or not hooks.enabled:
        return Check("Webhook outbox", OFF, "no RECOFFER_WEBHOOK_URL: nothing is sent", [])
    try:
        backlog = hooks.repository.backlog()
        with state.repository.engine.connect() as conn:
            last = conn.execute(
                select(
                    webhook_deliveries.c.at,
                    webhook_deliveries.c.status_code,
                    webhook_deliveries.c.error,
                )
                .order_by(webhook_deliveries.c.id.desc())
                .limit(1)
            ).first()
    except Exception as exc:
        return Check("Webhook outbox", FAILING, _first_line(exc), [])
    now = state.clock()
    facts = [("Pending", f"{backlog['pending']:,}"), ("Dead", f"{backlog['dead']:,}")]
    if last is None:
        facts.append(("Last delivery", "none yet"))
    else:
        answer = (
            f"HTTP {last.status_code}"
            if last.status_code is not None
            else (last.error or "no answer")
        )
        facts.append(("Last delivery", f"{_moment(last.at)} ({_ago(now, last.at)}): {answer}"))
    if backlog["dead"]:
        return Check(
            "Webhook outbox", FAILING, f"{backlog['dead']} event(s) dead: replay them", facts
        )
    if last is not None and (last.status_code is None or last.status_code >= 300):
        return Check("Webhook outbox", FAILING, "the last delivery failed", facts)
    return Check("Webhook outbox", OK, f"{backlog['pending']} pending", facts)


def _sweeps(state: AppState) -> tuple[Check, list[SweepRow]]:
    try:
        with state.repository.engine.connect() as conn:
            rows = conn.execute(
                select(sweep_jobs).order_by(sweep_jobs.c.requested_at.desc()).limit(RECENT_SWEEPS)
            ).all()
    except Exception as exc:
        return Check("Campaign sweeps", FAILING, _first_line(exc), []), []
    now = state.clock()
    silent_since = now - timedelta(seconds=state.settings.sweep_stale_seconds)
    out = []
    for r in rows:
        stalled = r.state in ACTIVE and r.heartbeat_at < silent_since
        out.append(
            SweepRow(
                r.campaign_id,
                "failed" if stalled else r.state,
                r.requested_at,
                r.finished_at,
                r.processed,
                "its worker stopped (no heartbeat)" if stalled else r.error,
            )
        )
    if not out:
        return Check("Campaign sweeps", WAITING, "no sweep run yet", []), out
    latest: dict[str, SweepRow] = {}
    for row in out:
        latest.setdefault(row.campaign_id, row)
    failed = [c for c, row in latest.items() if row.state == "failed"]
    facts = [
        ("Last requested", f"{_moment(out[0].requested_at)} ({_ago(now, out[0].requested_at)})")
    ]
    if failed:
        return Check(
            "Campaign sweeps", FAILING, f"last sweep failed: {', '.join(failed)}", facts
        ), out
    return Check("Campaign sweeps", OK, f"{len(out)} recent", facts), out


def gather(
    state: AppState, loops: dict[str, str], clock: Callable[[], float] = time.perf_counter
) -> HealthReport:
    """Every check (blocking: call in a thread); ``loops`` from :func:`loop_states`."""
    t0 = clock()
    sweeps_check, sweeps = _sweeps(state)
    jobs = [
        _tail_check(state),
        sweeps_check,
        _segments_check(state),
        _webhook_check(state),
        *_loop_checks(state, loops),
    ]
    database, model = database_check(state), model_check(state)
    return HealthReport(state.clock(), clock() - t0, database, model, jobs, sweeps)
