"""Prometheus metrics of the service: one registry per app, and one sum over a server's workers.

A process started without ``PROMETHEUS_MULTIPROC_DIR`` (tests, a plain ``uvicorn`` worker) keeps
its metrics in memory and exposes them with its own ``process_*`` and ``python_*`` metrics.
``python -m service`` sets that variable to a fresh directory before any worker starts
(``service.__main__``); prometheus_client then keeps every value in a file per process there, and
any worker that answers ``/metrics`` reads them all (``Metrics.render``): counters and histograms
are summed over every worker the server has had (a restarted worker's counts are kept, so they
never go backwards), each gauge is merged by its ``multiprocess_mode``, ``process_*`` is read for
each live worker with a ``pid`` label, and ``python_gc_*`` is the answering worker's, with its
``pid`` (a collector cannot read another process's interpreter, and a ``gc`` callback must not
write to the files: it may run while their one lock is held).
Whoever adds a gauge gives it a ``multiprocess_mode`` that means what it says across workers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, read at its import

# the reasons of recoffer_event_write_failures_total (service.activity.ingest.write_failure)
EVENT_WRITE_FAILURES = ("database_unavailable", "refused", "error")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoadResult(Protocol):
    @property
    def changed(self) -> bool: ...
    @property
    def version(self) -> str | None: ...
    @property
    def attempted(self) -> bool: ...


def shared_directory() -> Path | None:
    """The directory this process shares its metrics through, or None (in-memory metrics).

    Decided by prometheus_client when it was first imported, from ``PROMETHEUS_MULTIPROC_DIR``.
    """
    if values.ValueClass is values.MutexValue:
        return None
    return Path(os.environ[MULTIPROC_DIR])


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    shared: Path | None = field(default_factory=shared_directory)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram(
            "recoffer_http_request_duration_seconds",
            "Request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "recoffer_recommendations_total",
            "Recommendation responses by source (model, session, popular)",
            ["source"],
            registry=r,
        )
        self.events = Counter(
            "recoffer_events_ingested_total", "Events stored, by type", ["type"], registry=r
        )
        self.event_duplicates = Counter(
            "recoffer_event_duplicates_total",
            "Events skipped because their client_event_id was already stored",
            registry=r,
        )
        self.model_info = Gauge(
            "recoffer_model_info",
            "The served model version (value 1; 0 for a version no worker serves any more)",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",  # 1 while any live worker serves it
        )
        self.model_age = Gauge(
            "recoffer_model_age_seconds",
            "Seconds since the served model was trained",
            registry=r,
            multiprocess_mode="livemostrecent",  # set by the worker answering the scrape
        )
        self.model_loads = Counter(
            "recoffer_model_loads_total", "Model loads by outcome", ["outcome"], registry=r
        )
        self.database_up = Gauge(
            "recoffer_database_up",
            "1 when the last database call succeeded (in every live worker)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.offer_decisions = Counter(
            "recoffer_offer_decisions_total",
            "Offer evaluations by campaign and decision (issued, holdout, not_eligible, ...)",
            ["campaign", "decision"],
            registry=r,
        )
        self.coupons_redeemed = Counter(
            "recoffer_coupons_redeemed_total",
            "Coupons redeemed through this process",
            ["campaign"],
            registry=r,
        )
        self.coupon_refusals = Counter(
            "recoffer_coupon_refusals_total",
            "Coupon lookups refused: not_found, not_yours, rate_limited, limiter_unavailable",
            ["reason"],
            registry=r,
        )
        self.coupons = Gauge(
            "recoffer_coupons",
            "Coupons in the database by campaign and state (active, redeemed, expired)",
            ["campaign", "state"],
            registry=r,
            multiprocess_mode="livemostrecent",  # every worker counts the same database
        )
        # issue 11, item 10: the activity store's memory (service/activity/store.py)
        self.activity_users = Gauge(
            "recoffer_activity_users",
            "Users whose recent events the workers hold in memory (summed over live workers)",
            registry=r,
            multiprocess_mode="livesum",  # each worker holds its own store
        )
        self.activity_bytes = Gauge(
            "recoffer_activity_bytes_estimated",
            "Estimated memory of the recent events held (bytes, summed over live workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.activity_evictions = Counter(
            "recoffer_activity_evictions_total",
            "Users forgotten by the activity store to stay within activity_max_users",
            registry=r,
        )
        self.budget_left = Gauge(
            "recoffer_campaign_budget_left",
            "Coupons a campaign may still issue, today and in total (capped campaigns only)",
            ["campaign", "period"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # money budgets (issue 12, item 3): read from the database by whichever worker
        # refreshes, so every worker reports the same figure: the most recent one is right
        self.discount_given = Gauge(
            "recoffer_campaign_discount_given",
            "Discount actually given at redemption, today and in total, by currency "
            "(released redemptions taken back)",
            ["campaign", "period", "currency"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.budget_money_left = Gauge(
            "recoffer_campaign_budget_money_left",
            "Discount a campaign may still give before its money cap stops new coupons, today "
            "and in total, in its currency (campaigns with a money budget only)",
            ["campaign", "period", "currency"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # issue 12, item 6: webhooks (service/delivery)
        self.webhook_deliveries = Counter(
            "recoffer_webhook_deliveries_total",
            "Webhook deliveries tried, by outcome (delivered, failed: retried later, dead)",
            ["outcome"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "recoffer_webhook_backlog",
            "Webhook events in the outbox not delivered, by state (pending, dead)",
            ["state"],
            registry=r,
            multiprocess_mode="livemostrecent",  # every worker counts the same database
        )
        # issue 13, item 4: what the alert rules under deploy/prometheus/ need besides the above
        self.event_write_failures = Counter(
            "recoffer_event_write_failures_total",
            "Events not stored because their write failed, by reason (database_unavailable, "
            "refused: a value the database refused, error: anything else)",
            ["reason"],
            registry=r,
        )
        for reason in EVENT_WRITE_FAILURES:  # at 0 from the start, so rate() sees the first
            self.event_write_failures.labels(reason)
        self.webhook_oldest_pending = Gauge(
            "recoffer_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook event not delivered yet and not dead (0: none pending)",
            registry=r,
            multiprocess_mode="livemostrecent",  # every worker reads the same outbox
        )
        self.campaign_active_until = Gauge(
            "recoffer_campaign_active_until_timestamp_seconds",
            "When a campaign stops (its active_until, Unix time; 0: no end)",
            ["campaign"],
            registry=r,
            multiprocess_mode="livemostrecent",  # every worker reads the same definitions
        )
        # issue 14, items 1 and 2: recommendation feedback as it is stored (labels bounded:
        # the four sources and "unknown"; add_to_cart and purchase; click and impression)
        self.rec_impressions = Counter(
            "recoffer_rec_impressions_total",
            "Recommended items reported shown (the items of the lists stored), by each item's "
            "source",
            ["source"],
            registry=r,
        )
        self.rec_clicks = Counter(
            "recoffer_rec_clicks_total",
            "Clicks on recommended items stored, by source (unknown: not in its list's row)",
            ["source"],
            registry=r,
        )
        self.rec_attributed = Counter(
            "recoffer_rec_attributed_total",
            "Add-to-carts and purchases credited to a recommendation list, by kind and by what "
            "they were credited through (click, impression)",
            ["kind", "via"],
            registry=r,
        )
        # issue 15, item 5: sessions in Redis (service/activity/sessions.py) and the leader
        self.session_store_errors = Counter(
            "recoffer_session_store_errors_total",
            "Session calls to Redis that failed (read, write, delete) or were skipped while "
            "Redis was down (write_skipped)",
            ["op"],
            registry=r,
        )
        self.session_fallbacks = Counter(
            "recoffer_session_fallbacks_total",
            "Session reads answered without Redis, by where from (database, memory)",
            ["source"],
            registry=r,
        )
        self.leader = Gauge(
            "recoffer_leader",
            "1 on the worker that holds the leader lock and runs the time-driven jobs",
            registry=r,
            multiprocess_mode="livesum",  # summed over live workers: 1 per deployment
        )
        if self.shared is None:  # this process alone: its own process and interpreter figures
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._served_version: str | None = None

    def model_load(self, outcome: LoadResult) -> None:
        """Count an attempted model load and, on success, switch the version label."""
        if not outcome.attempted:
            return
        self.model_loads.labels("ok" if outcome.changed else "failed").inc()
        if outcome.changed and outcome.version:
            if self._served_version is not None:
                # a worker's file keeps every label it ever had: the old version reads 0 there
                self.model_info.labels(self._served_version).set(0)
            if self.shared is None:  # one process: drop the old label (multiprocess mode
                self.model_info.clear()  # cannot, and warns at every start if asked)
            self.model_info.labels(outcome.version).set(1)
            self._served_version = outcome.version

    def render(self) -> bytes:
        """The Prometheus text: this process's registry, or the sum over the server's workers."""
        if self.shared is None:
            return generate_latest(self.registry)
        live = forget_dead_workers(self.shared)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared))  # type: ignore[no-untyped-call]
        registry.register(WorkerProcesses(live))
        PlatformCollector(registry=registry)
        registry.register(_Labelled(GCCollector(registry=CollectorRegistry()), os.getpid()))
        return generate_latest(registry)


# --- several workers ----------------------------------------------------------------------

_PID = re.compile(r"_(\d+)\.db$")  # prometheus_client names each file <kind>[_<mode>]_<pid>.db


def forget_dead_workers(directory: Path) -> list[int]:
    """The pids of the live workers that wrote to ``directory``; dead ones' live gauges removed.

    A dead worker's counters stay (the sums must not go backwards); its ``live*`` gauges go.
    """
    pids = {int(m.group(1)) for f in directory.glob("*.db") if (m := _PID.search(f.name))}
    live = []
    for pid in sorted(pids):
        if _alive(pid):
            live.append(pid)
        else:
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return live


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkerProcesses(Collector):
    """``process_*`` of each live worker, read from ``/proc`` by whichever worker is scraped."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.pids:
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            _add_pid(families, reader.collect(), pid)
        return list(families.values())


class _Labelled(Collector):
    """Another collector's metrics with a ``pid`` label."""

    def __init__(self, collector: Collector, pid: int) -> None:
        self.collector, self.pid = collector, pid

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        _add_pid(families, self.collector.collect(), self.pid)
        return list(families.values())


def _add_pid(families: dict[str, Metric], metrics: Iterable[Metric], pid: int) -> None:
    for metric in metrics:
        family = families.setdefault(
            metric.name, Metric(metric.name, metric.documentation, metric.type)
        )
        for sample in metric.samples:
            family.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
