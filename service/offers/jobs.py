"""Campaign sweeps as background jobs: started by a request, run by a thread, kept in the database.

``POST /v1/campaigns/{id}/run`` creates a job and answers at once (202); a thread of the same
worker runs ``OfferEngine.sweep`` and reports after every batch, and any worker or replica
answers ``GET .../runs/{job_id}`` from the ``sweep_jobs`` row. One sweep per campaign at a time
is the database's partial unique index, not a lock in one process.

A worker that dies mid-sweep cannot say so, so a running job writes a heartbeat with every
batch, and a job silent for ``stale_after`` is **failed**, not resumed: it is reported failed
at once and recorded failed when the next run of the campaign is asked for. Nothing is lost by
failing it: every batch it committed stays decided, and a sweep only looks at users without a
final decision, so running the campaign again finishes the work, exactly once per user. A
worker that shuts down cleanly stops its sweeps after the batch under way and marks them
failed with that reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.errors import CampaignInactive, SweepRunning, UnknownSweepJob
from service.offers.decisions import OfferEngine
from service.offers.repository.jobs import (
    ACTIVE,
    SweepJobRecord,
    SweepJobRepository,
    SweepState,
)

log = logging.getLogger(__name__)
STOPPED = "stopped: the worker shut down; run the campaign again to finish (decisions are kept)"
SILENT = "no heartbeat since {since}: its worker stopped; run the campaign again to finish"
DECIDED = ("issued", "holdout", "budget_exhausted", "already_decided", "not_targeted")


class _Stopped(Exception):
    """Raised from a sweep's progress report when the worker is shutting down."""


@dataclass(frozen=True)
class SweepJob:
    """A sweep job as the API shows it: its row, with a silent worker's job seen as failed."""

    record: SweepJobRecord
    state: SweepState
    error: str | None

    @property
    def counts(self) -> dict[str, int]:
        """Decisions so far by kind, and ``eligible``: the users the rule accepted."""
        counts = {k: int(v) for k, v in self.record.counts.items()}
        return {"eligible": sum(counts.get(k, 0) for k in DECIDED), **counts}

    @property
    def progress(self) -> float | None:
        """The share of the candidates done (None until they are counted)."""
        r = self.record
        if r.evaluated is None:
            return None
        return 1.0 if r.evaluated == 0 else round(r.processed / r.evaluated, 4)


def worker_name() -> str:
    """This process, as a job records who runs it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SweepJobs:
    """Starts sweeps in background threads and reports on them from the database."""

    def __init__(
        self,
        engine: OfferEngine,
        repository: SweepJobRepository,
        clock: Callable[[], datetime],
        *,
        stale_after: timedelta,
        worker: str | None = None,
    ) -> None:
        self.engine = engine
        self.repository = repository
        self.clock = clock
        self.stale_after = stale_after
        self.worker = worker or worker_name()
        self._threads: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, campaign_id: str) -> SweepJob:
        """Queue a sweep of ``campaign_id`` and start it in this process.

        Raises:
            UnknownCampaign: no such campaign (404); CampaignInactive: nothing to sweep now;
            SweepRunning: a sweep of the campaign is queued or running anywhere (409).
        """
        campaign = self.engine.campaign(campaign_id)
        now = self.clock()
        if not campaign.is_active(now):
            raise CampaignInactive(campaign_id)
        silent_since = now - self.stale_after
        for _ in range(3):  # the active job may end between the insert and the read
            created, active = self.repository.create(
                campaign_id,
                self.worker,
                now,
                silent_since=silent_since,
                error=SILENT.format(since=silent_since.isoformat()),
            )
            if created is not None:
                break
            if active is not None:
                raise SweepRunning(campaign_id, active.job_id)
        else:
            raise SweepRunning(campaign_id, "(one that just ended)")
        return self._launch(created, now)

    def start_due(self, campaign_id: str, every: timedelta) -> SweepJob | None:
        """Start a sweep of ``campaign_id`` unless one was requested within ``every`` (by any
        worker or replica) or one is active; None then. The schedule's call
        (``service.offers.schedule``); an inactive campaign is not due."""
        campaign = self.engine.campaign(campaign_id)
        now = self.clock()
        if not campaign.is_active(now):
            return None
        silent_since = now - self.stale_after
        created = self.repository.create_due(
            campaign_id,
            self.worker,
            now,
            since=now - every,
            silent_since=silent_since,
            error=SILENT.format(since=silent_since.isoformat()),
        )
        return None if created is None else self._launch(created, now)

    def _launch(self, created: SweepJobRecord, now: datetime) -> SweepJob:
        """Run the queued job ``created`` in a thread of this process."""
        campaign_id = created.campaign_id
        thread = threading.Thread(
            target=self._run, args=(created.job_id, campaign_id), name=f"sweep-{campaign_id}"
        )
        with self._lock:
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            self._threads[created.job_id] = thread
        thread.start()
        log.info("sweep_queued", extra={"campaign": campaign_id, "job_id": created.job_id})
        return self._seen(created, now)

    def job(self, campaign_id: str, job_id: str) -> SweepJob:
        """The job ``job_id`` of ``campaign_id``; raises UnknownSweepJob (404) otherwise."""
        self.engine.campaign(campaign_id)
        record = self.repository.job(campaign_id, job_id)
        if record is None:
            raise UnknownSweepJob(campaign_id, job_id)
        return self._seen(record, self.clock())

    def recent(self, campaign_id: str, limit: int = 20) -> list[SweepJob]:
        """The campaign's latest jobs, the latest requested first."""
        self.engine.campaign(campaign_id)
        now = self.clock()
        return [self._seen(r, now) for r in self.repository.recent(campaign_id, limit)]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for this process's sweeps to end; False if one is still running."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)

    def stop(self, timeout: float) -> bool:
        """Shutting down: stop every sweep after its current batch, and wait for them."""
        self._stopping.set()
        return self.wait(timeout)

    def _seen(self, record: SweepJobRecord, now: datetime) -> SweepJob:
        silent_since = now - self.stale_after
        if record.state in ACTIVE and record.heartbeat_at < silent_since:
            return SweepJob(record, "failed", SILENT.format(since=record.heartbeat_at.isoformat()))
        return SweepJob(record, record.state, record.error)

    def _run(self, job_id: str, campaign_id: str) -> None:
        repository = self.repository

        def report(processed: int, evaluated: int, counts: Counter[str]) -> None:
            if self._stopping.is_set():
                raise _Stopped
            repository.report(job_id, self.clock(), processed, evaluated, counts)

        try:
            now = self.clock()
            repository.update(job_id, state="running", started_at=now, heartbeat_at=now)
            result = self.engine.sweep(campaign_id, report)
            repository.update(
                job_id,
                state="done",
                finished_at=self.clock(),
                heartbeat_at=self.clock(),
                evaluated=result.evaluated,
                processed=result.evaluated,
                counts=dict(result.decisions),
                seconds=round(result.seconds, 3),
            )
            log.info("sweep_done", extra={"campaign": campaign_id, "job_id": job_id})
        except _Stopped:
            self._fail(job_id, STOPPED)
        except Exception as exc:
            log.exception("sweep_failed", extra={"campaign": campaign_id, "job_id": job_id})
            first_line = (str(exc).splitlines() or [""])[0]
            self._fail(job_id, f"{type(exc).__name__}: {first_line[:300]}")

    def _fail(self, job_id: str, error: str) -> None:
        try:
            self.repository.update(job_id, state="failed", finished_at=self.clock(), error=error)
        except Exception:  # the database is gone too: the silent heartbeat will say it
            log.exception("sweep_failure_not_recorded", extra={"job_id": job_id})
