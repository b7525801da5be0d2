"""The FastAPI application: ``create_app(settings)`` and its lifespan.

Nothing happens at import time. The lifespan opens the database (migrating it when asked),
loads the current model, fills this worker's recent-activity view, and starts two background
loops: one looks for a newly promoted model, one reads new events and catalogue changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from service.api.deps import AppState
from service.api.errors import ERROR_RESPONSES, add_exception_handlers
from service.api.fastpath import PlainRoute
from service.api.routes import (
    campaigns,
    coupons,
    events,
    health,
    items,
    model,
    offers,
    recommendations,
    users,
)
from service.clock import utc_now
from service.db import make_engine, migrate
from service.events import ActivityStore, Repository
from service.metrics import Metrics
from service.middleware import RequestContext
from service.model_holder import ModelHolder
from service.offers.auto import AutoEvaluator
from service.offers.campaigns import load_campaigns
from service.offers.coupons import Coupons, LookupGuard
from service.offers.decisions import OfferEngine
from service.offers.limiter import FailureLimiter
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.settings import Settings

log = logging.getLogger(__name__)
STARTUP_EVENT_DAYS = 30
STARTUP_EVENT_LIMIT = 500_000


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now
) -> FastAPI:
    """Build the app; ``settings`` default to the environment (RECOFFER_*)."""
    settings = settings or Settings()
    metrics = Metrics()
    campaign_set = load_campaigns(settings.campaigns_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database_url,
            timeout_seconds=settings.db_timeout_seconds,
            pool_size=settings.db_pool_size,
        )
        repository = Repository(engine, clock)
        activity = ActivityStore(
            per_user=settings.session_events,
            lookback=0 if settings.is_sqlite else None,
        )
        models = ModelHolder(
            settings.model_dir,
            candidates_per_user=settings.candidates_per_user,
            precompute_max_cells=settings.precompute_max_cells,
            event_weights=settings.event_weights,
        )

        def rank_items(user_id: str, item_ids: Sequence[str]) -> list[str]:
            recommender = models.current
            if recommender is None:
                return list(item_ids)
            return recommender.rank(user_id, item_ids, activity.recent(user_id), clock())

        offer_repository = OfferRepository(repository)
        offer_engine = OfferEngine(
            campaign_set,
            offer_repository,
            clock,
            rank_items=rank_items,
            metrics=metrics,
        )
        state = AppState(
            settings=settings,
            repository=repository,
            activity=activity,
            models=models,
            metrics=metrics,
            clock=clock,
            offers=offer_engine,
            auto_offers=AutoEvaluator(offer_engine, per_user=settings.session_events),
            coupons=Coupons(
                offer_repository,
                clock,
                guard=LookupGuard(
                    FailureLimiter(settings.coupon_failure_window_seconds),
                    per_user=settings.coupon_failures_per_user,
                    per_client=settings.coupon_failures_per_client,
                ),
                metrics=metrics,
            ),
            reports=Reports(campaign_set, offer_repository, clock, metrics=metrics),
        )
        app.state.recoffer = state
        app.state.recoffer_keys = settings.keys_by_role()
        await _open_database(state)
        await _refresh_model(state)
        # everything loaded so far lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again (full collections were latency spikes)
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(_tail_loop(state), name="recoffer-tail")]
        if settings.reload_interval_seconds > 0:
            tasks.append(asyncio.create_task(_model_loop(state), name="recoffer-models"))
        if settings.offer_metrics_seconds > 0:
            tasks.append(asyncio.create_task(_offer_metrics_loop(state), name="recoffer-offers"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.auto_offers.drain()
            engine.dispose()

    app = FastAPI(
        title="recoffer",
        version="0.1.0",
        summary="Personalised recommendations and time-limited offers for an online shop.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,  # every error body is {"error", "detail"} (api/errors.py)
    )
    add_exception_handlers(app)
    # the hot route first, as a plain Starlette route (see service.api.fastpath.PlainRoute)
    app.router.routes.append(
        PlainRoute(recommendations.PATH, recommendations.recommendations, methods=["GET"])
    )
    for router in (
        users.router,
        events.router,
        items.router,
        recommendations.router,
        offers.router,
        coupons.router,
        campaigns.router,
        model.router,
        health.router,
    ):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        max_body=settings.max_body_bytes,
        log=settings.access_log,
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:create_app_from_env`` (several workers)."""
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


async def _open_database(state: AppState) -> None:
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
            state.activity.purchases = await run_in_threadpool(state.repository.purchase_popularity)
        state.activity.update_catalogue(
            await run_in_threadpool(state.repository.items_updated_since, None)
        )
        _database(state, True)
    except Exception as exc:  # the service still serves recommendations without a database
        _database(state, False)
        log.error("database_unavailable_at_start", extra={"error": str(exc).splitlines()[0]})


def _database(state: AppState, up: bool) -> None:
    state.database_ready = up
    state.metrics.database_up.set(1 if up else 0)


async def _refresh_model(state: AppState) -> None:
    state.metrics.model_load(await run_in_threadpool(state.models.refresh))


async def _model_loop(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.settings.reload_interval_seconds)
        # a stat on the loop; the load (in a thread) only when the registry file changed, as
        # every thread hop competes with requests for the interpreter
        if not state.models.registry_changed():
            continue
        try:
            await _refresh_model(state)
        except Exception:
            log.exception("model_refresh_failed")


async def _tail_loop(state: AppState) -> None:
    repo, activity = state.repository, state.activity
    seen: tuple[int, ...] | None = None
    while True:
        await asyncio.sleep(state.settings.event_poll_seconds)
        try:
            if not state.database_ready:
                await _open_database(state)
                continue
            signature = repo.change_signature()  # taken before reading: no change is missed
            if signature is not None and signature == seen:
                continue
            seen = signature
            rows = await run_in_threadpool(repo.events_after, activity.tail_from())
            activity.add(rows)
            changed = await run_in_threadpool(
                repo.items_updated_since, activity.catalogue_watermark
            )
            activity.update_catalogue(changed)
            _database(state, True)
        except Exception as exc:
            seen = None  # read again next time
            if state.database_ready:
                log.warning("event_tail_failed", extra={"error": str(exc).splitlines()[0]})
            _database(state, False)


async def _offer_metrics_loop(state: AppState) -> None:
    while True:
        if state.database_ready:
            try:
                await run_in_threadpool(state.reports.refresh_gauges)
            except Exception as exc:  # the gauges keep their last values; the tail sees outages
                log.warning("offer_metrics_failed", extra={"error": str(exc).splitlines()[0]})
        await asyncio.sleep(state.settings.offer_metrics_seconds)
