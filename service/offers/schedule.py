"""The schedule of the time-driven campaigns (issue 12, item 2): a sweep when one is due.

Win-back, anniversary, birthday, frequent-buyer and abandoned-cart customers qualify as time
passes, not on a page view, so the service sweeps each such campaign every
``Campaign.run_every`` (``run_every_minutes``; an hour for carts, a day for the others). The
loop (``service.background.campaign_schedule_loop``) asks on the leader only (``service.leader``:
one worker of all replicas with Redis or on PostgreSQL; every worker on SQLite), its lock
checked right before each tick; when the leader stops another takes over within the lock's TTL,
and while no worker can hold the lock (a Redis outage) the schedule pauses and catches up at the
next tick, each due campaign swept once. The database still lets one job through per interval
(``SweepJobs.start_due``: the insert of the job carries "none requested since") and the index
of active jobs keeps two from overlapping, so two leaders for a moment start nothing twice. A
sweep decides once per user per occurrence, so even a sweep run twice decides nothing twice.

A shop that prefers its own scheduler sets ``RECOFFER_CAMPAIGN_SCHEDULE_SECONDS=0`` and calls
``POST /v1/campaigns/{campaign_id}/run`` from it (cron, a Kubernetes CronJob).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from service.errors import RecofferError
from service.offers.campaigns import Campaign
from service.offers.jobs import SweepJob, SweepJobs

log = logging.getLogger(__name__)


class CampaignSchedule:
    """Starts the sweeps of the time-driven campaigns that are due, on this worker."""

    def __init__(self, sweeps: SweepJobs, clock: Callable[[], datetime]) -> None:
        self.sweeps = sweeps
        self.clock = clock

    def scheduled(self) -> list[Campaign]:
        """The active time-driven campaigns, in the order of the campaigns file."""
        now = self.clock()
        return [
            c for c in self.sweeps.engine.campaigns.values() if c.time_driven and c.is_active(now)
        ]

    def tick(self) -> list[SweepJob]:
        """Start every scheduled campaign's sweep whose last run is older than its interval.

        Returns the jobs started here (another worker may have started the others). A
        campaign that cannot be started is logged and the others still are.
        """
        started = []
        for campaign in self.scheduled():
            every = campaign.run_every
            assert every is not None  # time-driven
            try:
                job = self.sweeps.start_due(campaign.campaign_id, every)
            except RecofferError as exc:  # e.g. archived between the read and the start
                log.warning(
                    "scheduled_sweep_refused",
                    extra={"campaign": campaign.campaign_id, "error": str(exc)},
                )
                continue
            if job is not None:
                log.info(
                    "scheduled_sweep_started",
                    extra={"campaign": campaign.campaign_id, "job_id": job.record.job_id},
                )
                started.append(job)
        return started
