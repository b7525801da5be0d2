"""The periodic work of one worker: picking up new models, tailing events, refreshing gauges.

Each loop runs on the event loop and hops to a thread only for blocking work; a failure is
logged and the loop goes on (the service keeps serving what it has).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import timedelta

from starlette.concurrency import run_in_threadpool

from service.db import migrate
from service.offers.campaigns import Campaign
from service.offers.schedule import CampaignSchedule
from service.state import AppState

log = logging.getLogger(__name__)
STARTUP_EVENT_DAYS = 30
STARTUP_EVENT_LIMIT = 500_000


def is_leader(state: AppState) -> bool:
    """Whether this worker runs the time-driven jobs now (``service.leader``)."""
    return state.leader is None or state.leader.held


async def leads_now(state: AppState) -> bool:
    """``is_leader``, with the lock checked again in the store right before a job ticks."""
    return state.leader is None or await state.leader.confirm()


async def open_database(state: AppState) -> None:
    """Migrate when asked, fill the recent-activity view and the catalogue overlay."""
    engine = state.repository.engine
    try:
        if state.settings.migrate_on_start:
            await run_in_threadpool(migrate, engine)
        if state.activity.watermark == 0:
            # first contact: the recent past; after an outage the tail resumes from its mark
            since = state.clock() - timedelta(days=STARTUP_EVENT_DAYS)
            recent = await run_in_threadpool(
                state.repository.events_since, since, STARTUP_EVENT_LIMIT
            )
            state.activity.add(recent)
            # erased users, before serving anyone and before filling Redis (never with them)
            await run_in_threadpool(state.privacy.refresh)
            if state.sessions is not None:  # an empty Redis: filled by one worker
                await run_in_threadpool(state.sessions.seed, recent)
            state.activity.purchases = await run_in_threadpool(state.repository.purchase_popularity)
        await run_in_threadpool(state.privacy.refresh)  # erased users, before serving anyone
        state.activity.update_catalogue(
            await run_in_threadpool(state.repository.items_updated_since, None)
        )
        state.health.database(True)
    except Exception as exc:  # the service still serves recommendations without a database
        state.health.database(False)
        log.error("database_unavailable_at_start", extra={"error": str(exc).splitlines()[0]})


async def refresh_model(state: AppState) -> None:
    """Load the registry's current version when it changed (in a thread), counted; then the
    vectors of the products it does not know (issue 14)."""
    outcome = await run_in_threadpool(state.models.refresh)
    state.metrics.model_load(outcome)
    if state.arrivals is not None and (outcome.changed or state.arrivals.index is None):
        await refresh_new_items(state, rebuild=True)


async def refresh_new_items(state: AppState, *, rebuild: bool = False) -> None:
    """The new products' vectors again (in a thread); a failure keeps the ones there are."""
    if state.arrivals is None:
        return
    try:
        await run_in_threadpool(state.arrivals.rebuild if rebuild else state.arrivals.refresh)
    except Exception as exc:
        log.warning("new_items_refresh_failed", extra={"error": str(exc).splitlines()[0]})


async def new_items_loop(state: AppState) -> None:
    """Fold the new products' events since training into their vectors, periodically."""
    while True:
        await asyncio.sleep(state.settings.new_items_refresh_seconds)
        await refresh_new_items(state)


async def model_loop(state: AppState) -> None:
    """Pick up a newly promoted model."""
    while True:
        await asyncio.sleep(state.settings.reload_interval_seconds)
        # a stat on the loop; the load (in a thread) only when the registry file changed, as
        # every thread hop competes with requests for the interpreter
        if not state.models.registry_changed():
            continue
        try:
            await refresh_model(state)
        except Exception:
            log.exception("model_refresh_failed")


async def sessions_upkeep(state: AppState) -> None:
    """With sessions in Redis: merge the lists this worker could not write (``repair``), and on
    the leader fill Redis again when its marker is gone (restarted empty, or more users went
    stale than a worker remembers), from the recent events in the database."""
    sessions = state.sessions
    if sessions is None:
        return
    if sessions.stale_users:
        await run_in_threadpool(sessions.repair)
    # every worker looks (one that lost track of stale users deletes the marker); the leader fills
    if await run_in_threadpool(sessions.needs_seed) and is_leader(state):
        since = state.clock() - timedelta(days=STARTUP_EVENT_DAYS)
        recent = await run_in_threadpool(state.repository.events_since, since, STARTUP_EVENT_LIMIT)
        await run_in_threadpool(sessions.seed, recent)


async def tail_loop(state: AppState) -> None:
    """Read new events and catalogue changes into this worker's view; reopen after outages."""
    repo, activity = state.repository, state.activity
    seen: tuple[int, ...] | None = None
    while True:
        await asyncio.sleep(state.settings.event_poll_seconds)
        try:
            if not state.health.database_ready:
                await open_database(state)
                continue
            await sessions_upkeep(state)  # before the shortcut below: Redis may need it
            signature = repo.change_signature()  # taken before reading: no change is missed
            if signature is not None and signature == seen:
                continue
            seen = signature
            rows = await run_in_threadpool(repo.events_after, activity.tail_from())
            activity.add(rows)
            changed = await run_in_threadpool(repo.items_updated_since, activity.catalogue_since())
            fresh = activity.update_catalogue(changed)
            if fresh and state.arrivals is not None:  # content vectors of new products
                await run_in_threadpool(state.arrivals.on_catalogue, fresh)
            # erasures made by other workers and replicas: honoured here within one poll
            await run_in_threadpool(state.privacy.refresh)
            state.health.database(True)
        except Exception as exc:
            seen = None  # read again next time
            if state.health.database_ready:
                log.warning("event_tail_failed", extra={"error": str(exc).splitlines()[0]})
            state.health.database(False)


async def offer_metrics_loop(state: AppState) -> None:
    """Refresh the coupon and budget gauges from the database."""
    while True:
        if state.health.database_ready:
            try:
                await run_in_threadpool(state.reports.refresh_gauges)
            except Exception as exc:  # the gauges keep their last values; the tail sees outages
                log.warning("offer_metrics_failed", extra={"error": str(exc).splitlines()[0]})
        await asyncio.sleep(state.settings.offer_metrics_seconds)


# --- campaigns managed at run time (issue 12, item 5) -------------------------------------


def campaigns_to(state: AppState) -> Callable[[dict[str, Campaign]], None]:
    """What a new map of campaigns replaces in this worker: each holder's map, swapped whole
    (an attribute assignment: a request reading the old map finishes with it)."""

    def install(campaigns: dict[str, Campaign]) -> None:
        state.offers.campaigns = campaigns  # evaluations, the page's offer, sweeps
        state.reports.campaigns = campaigns  # stats and the gauges
        state.auto_offers.campaigns = [c for c in campaigns.values() if c.evaluate_on_view]

    return install


async def refresh_campaigns(state: AppState) -> None:
    """Sync the campaigns file into the store (once) and apply the store's campaigns when
    they changed; a failure is logged and the worker keeps the campaigns it has."""
    try:
        await run_in_threadpool(state.campaign_store.refresh)
    except Exception as exc:
        log.warning("campaign_refresh_failed", extra={"error": str(exc).splitlines()[0]})


async def campaign_loop(state: AppState) -> None:
    """Apply campaign changes made by other workers and replicas within one poll."""
    while True:
        await asyncio.sleep(state.settings.campaign_poll_seconds)
        if state.health.database_ready:
            await refresh_campaigns(state)


async def campaign_schedule_loop(state: AppState) -> None:
    """Start the sweeps of the time-driven campaigns that are due (``service.offers.schedule``).

    The leader runs it (``service.leader``: one worker of all replicas, with Redis or on
    PostgreSQL); the database lets one sweep through per interval in any case.
    """
    schedule = CampaignSchedule(state.sweeps, state.clock)
    while True:
        await asyncio.sleep(state.settings.campaign_schedule_seconds)
        if not state.health.database_ready or not await leads_now(state):
            continue
        try:
            await run_in_threadpool(schedule.tick)
        except Exception as exc:  # the next tick tries again
            log.warning("campaign_schedule_failed", extra={"error": str(exc).splitlines()[0]})


# --- A/B tests of recommenders (issue 14, item 3) -----------------------------------------


async def refresh_experiment(state: AppState) -> None:
    """Load or release the running experiment's arms (in a thread); a failure is logged and
    the worker keeps what it serves."""
    if state.experiments is None or not state.health.database_ready:
        return
    try:
        await run_in_threadpool(state.experiments.refresh)
    except Exception as exc:
        log.warning("experiment_refresh_failed", extra={"error": str(exc).splitlines()[0]})


async def experiment_loop(state: AppState) -> None:
    """Pick up experiments started, stopped or promoted anywhere within one poll, stop one
    whose control is no longer ``current`` at each poll, and run the guard every
    ``experiment_guard_seconds`` (every worker looks; one acts)."""
    settings = state.settings
    poll = settings.experiment_poll_seconds
    guard_every = settings.experiment_guard_seconds
    step = min(s for s in (poll, guard_every) if s > 0)
    since_guard = 0.0
    while True:
        await asyncio.sleep(step)
        if state.experiments is None or not state.health.database_ready:
            continue
        since_guard += step
        guard = guard_every > 0 and since_guard >= guard_every
        if guard:
            since_guard = 0.0
        try:  # the control-changed check every time, the guard's figures when due
            await run_in_threadpool(functools.partial(state.experiments.check, guard=guard))
        except Exception as exc:  # the next look tries again
            log.warning("experiment_guard_failed", extra={"error": str(exc).splitlines()[0]})
        if poll > 0:
            await refresh_experiment(state)


# --- recommendation feedback (issue 14, item 4) -------------------------------------------


async def feedback_prune_loop(state: AppState) -> None:
    """Delete impressions, clicks and attributions past RECOFFER_FEEDBACK_RETENTION_DAYS,
    every RECOFFER_FEEDBACK_PRUNE_SECONDS, on the leader (idempotent deletes: on SQLite without
    a shared lock every worker runs them)."""
    while True:
        await asyncio.sleep(state.settings.feedback_prune_seconds)
        if state.feedback is None or not state.health.database_ready:
            continue
        if not await leads_now(state):
            continue
        try:
            deleted = await run_in_threadpool(state.feedback.prune)
            if deleted:
                log.info("feedback_pruned", extra={"rows": deleted})
        except Exception as exc:  # the next round tries again
            log.warning("feedback_prune_failed", extra={"error": str(exc).splitlines()[0]})
