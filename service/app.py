"""The FastAPI application: ``create_app(settings)`` and its lifespan.

Nothing happens at import time. The lifespan builds the worker's domain objects (one place
assembles model + recent activity + clock: ``service.recommend.service``), opens the database
(migrating it when asked), loads the current model, fills the recent-activity view, and starts
the periodic loops of ``service.background``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import background
from service.activity.ingest import Ingest
from service.activity.repository import Repository
from service.activity.sessions import RedisSessions
from service.activity.store import ActivityStore
from service.api.docs import add_docs, document, operation_id
from service.api.errors import add_exception_handlers
from service.api.fastpath import PlainRoute
from service.api.routes import (
    analytics,
    campaigns,
    coupons,
    events,
    health,
    items,
    manage,
    model,
    offers,
    recommendations,
    segments,
    users,
    webhooks,
)
from service.api.routes import experiments as experiment_routes  # issue 14, item 3
from service.api.routes import feedback as feedback_routes
from service.clock import utc_now
from service.console import add_console
from service.db import make_engine
from service.delivery import outbox
from service.delivery.repository import DeliveryRepository
from service.delivery.sender import Sender, SenderConfig
from service.delivery.service import Webhooks
from service.experiments.repository import ExperimentRepository
from service.experiments.service import Experiments, GuardSettings
from service.feedback.repository import FeedbackRepository
from service.feedback.service import Feedback
from service.health import Health
from service.leader import build_leader
from service.metrics import Metrics
from service.middleware import RequestContext
from service.offers.auto import AutoEvaluator
from service.offers.campaigns import load_campaigns
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.jobs import SweepJobs
from service.offers.limiter import FailureLimiter
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.offers.repository.jobs import SweepJobRepository
from service.offers.repository.store import CampaignRepository
from service.offers.store import CampaignStore, file_campaign_ids
from service.privacy.repository import PrivacyRepository
from service.privacy.service import Privacy
from service.privacy.tombstones import Tombstones
from service.recommend.arrivals import NewArrivals
from service.recommend.holder import ModelHolder
from service.recommend.service import Recommendations
from service.recommend.serving import ServingOptions
from service.segments.repository import SegmentRepository
from service.segments.service import SegmentRefresher, Segments
from service.settings import Settings
from service.state import AppState

log = logging.getLogger(__name__)


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
            max_users=settings.activity_max_users,
            metrics=metrics,
            # with Redis the sessions live there: this worker holds only its own writes
            tail_sessions=settings.redis_url is None,
        )
        tombstones = Tombstones()  # erased users: no personal answer (service.privacy)
        sessions = None  # users' recent events shared by every replica (issue 15, item 5)
        if settings.redis_url is not None:
            sessions = RedisSessions(
                settings.redis_url,
                prefix=settings.redis_prefix,
                per_user=settings.session_events,
                ttl_seconds=settings.session_ttl_seconds,
                timeout_seconds=settings.redis_timeout_seconds,
                retry_seconds=settings.redis_retry_seconds,
                memory=activity,
                database=repository.recent_activity,
                metrics=metrics,
                tombstones=tombstones,  # lists named by the users' hashes; erased: none
                max_connections=settings.redis_max_connections,
                max_fallbacks=max(1, settings.db_pool_size // 2),
            )
        # the time-driven jobs run on one worker of all replicas (issue 15, item 5)
        leader = build_leader(
            ttl_seconds=settings.leader_lock_seconds,
            redis_client=None if sessions is None else sessions.aclient,
            prefix=settings.redis_prefix,
            engine=engine,
            metrics=metrics,
        )
        models = ModelHolder(
            settings.model_dir,
            event_weights=settings.event_weights,
            options=ServingOptions(
                candidates_per_user=settings.candidates_per_user,
                precompute_max_cells=settings.precompute_max_cells,
                precompute_max_users=settings.precompute_max_users,
                use_ann=settings.ann,
                ann_candidates=settings.ann_candidates,
                ann_max_candidates=settings.ann_max_candidates,
                mmap_min_bytes=settings.mmap_min_bytes,
            ),
        )
        arrivals = NewArrivals(  # products the model does not know (issue 14, item 4)
            models,
            activity,
            clock,
            days=settings.new_arrivals_days,
            slots=settings.new_arrivals_slots,
            events=repository,
            event_weights=settings.event_weights,
        )
        served = Recommendations(
            models,
            activity,
            clock,
            metrics,
            erased=tombstones,
            arrivals=arrivals,
            sessions=sessions,
        )
        # impressions, clicks and the lists credited with carts and purchases (issue 14)
        feedback = Feedback.from_settings(
            FeedbackRepository(repository), served.list_ids, clock, settings, metrics
        )
        offer_repository = OfferRepository(repository)
        offer_engine = OfferEngine(
            campaign_set,
            offer_repository,
            clock,
            rank_items=served.rank,
            metrics=metrics,
            top_items=served.top_items,  # the lifecycle kinds' coupons (issue 12, item 2)
        )
        auto_offers = AutoEvaluator(offer_engine, per_user=settings.session_events)
        user_segments = Segments(SegmentRepository(repository), settings.segment, clock)
        segment_refresher = SegmentRefresher(user_segments)
        state = AppState(
            settings=settings,
            repository=repository,
            activity=activity,
            models=models,
            metrics=metrics,
            clock=clock,
            recommendations=served,
            ingest=Ingest(
                repository,
                activity,
                metrics,
                clock,
                max_batch=settings.max_batch_events,
                max_items=settings.max_batch_items,
                views=auto_offers,
                erased=tombstones.is_erased,
                segments=segment_refresher,
                feedback=feedback,
                catalogue=arrivals.on_catalogue,
                sessions=sessions,
            ),
            health=Health(models, metrics),
            offers=offer_engine,
            auto_offers=auto_offers,
            coupons=Coupons(
                offer_repository,
                clock,
                limiter=FailureLimiter(
                    per_client=settings.coupon_failures_per_client,
                    per_address=settings.coupon_failures_per_address,
                    window_seconds=settings.coupon_failure_window_seconds,
                    redis_url=settings.redis_url,
                    prefix=settings.redis_prefix,
                ),
                max_releases=settings.coupon_max_releases,
                metrics=metrics,
            ),
            reports=Reports(campaign_set, offer_repository, clock, metrics=metrics),
            privacy=Privacy(
                PrivacyRepository(repository), tombstones, activity, models, clock, sessions
            ),
            sweeps=SweepJobs(
                offer_engine,
                SweepJobRepository(repository),
                clock,
                stale_after=timedelta(seconds=settings.sweep_stale_seconds),
            ),
            campaign_store=CampaignStore(
                CampaignRepository(repository),
                clock,
                file_campaigns=campaign_set,
                file_ids=file_campaign_ids(settings.campaigns_file),
            ),
            segments=user_segments,
            segment_refresher=segment_refresher,
            feedback=feedback,
            arrivals=arrivals,
            sessions=sessions,
            leader=leader,
        )
        # every holder of the campaigns gets each new map the store installs
        state.campaign_store.on_change(background.campaigns_to(state))
        # webhooks (issue 12, item 6): written and sent only when a URL is configured
        webhook_config = SenderConfig.from_settings(settings)
        if webhook_config is not None:
            outbox.enable(repository, outbox.Outbox(webhook_config.expiring_lead))
        state.webhooks = Webhooks(
            DeliveryRepository(repository), offer_engine, clock, enabled=webhook_config is not None
        )
        # A/B tests of recommenders (issue 14, item 3)
        state.experiments = Experiments(
            ExperimentRepository(repository),
            served,
            clock,
            GuardSettings(
                min_impressions=settings.experiment_guard_min_impressions,
                z=settings.experiment_guard_z,
                srm_p=settings.experiment_srm_p,
            ),
        )
        app.state.recoffer = state
        app.state.recoffer_keys = settings.keys_by_role()
        await background.open_database(state)
        await background.refresh_model(state)
        await background.refresh_campaigns(state)  # the file synced in, the store's applied
        await background.refresh_experiment(state)  # the running experiment's arms (issue 14)
        # everything loaded so far lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again (full collections were latency spikes)
        gc.collect()
        gc.freeze()
        loops = {"recoffer-tail": background.tail_loop(state)}
        if leader.backend is not None:  # a shared lock: keep it or keep trying (issue 15)
            loops["recoffer-leader"] = leader.run()
        if settings.reload_interval_seconds > 0:
            loops["recoffer-models"] = background.model_loop(state)
        if settings.offer_metrics_seconds > 0:
            loops["recoffer-offers"] = background.offer_metrics_loop(state)
        if settings.campaign_poll_seconds > 0:
            loops["recoffer-campaigns"] = background.campaign_loop(state)
        sender = None
        if webhook_config is not None:
            sender = Sender(state.webhooks.repository, webhook_config, clock, metrics=metrics)
            loops["recoffer-webhooks"] = sender.run()
        if settings.campaign_schedule_seconds > 0:  # the time-driven campaigns (issue 12)
            loops["recoffer-schedule"] = background.campaign_schedule_loop(state)
        if settings.experiment_poll_seconds > 0 or settings.experiment_guard_seconds > 0:
            loops["recoffer-experiments"] = background.experiment_loop(state)  # issue 14
        if feedback.retention is not None:  # old impressions, clicks, attributions (issue 14)
            loops["recoffer-feedback-prune"] = background.feedback_prune_loop(state)
        if settings.new_items_refresh_seconds > 0:  # new products' fold-in (issue 14)
            loops["recoffer-new-items"] = background.new_items_loop(state)
        tasks = [asyncio.create_task(loop, name=name) for name, loop in loops.items()]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.auto_offers.drain()
            await state.segment_refresher.drain()
            # sweeps stop after their batch under way and are marked failed (a restart, not a loss)
            await asyncio.to_thread(state.sweeps.stop, 30.0)
            if sender is not None:
                await sender.aclose()
            outbox.disable(repository)
            if sessions is not None:
                await sessions.aclose()
            engine.dispose()

    app = FastAPI(
        title="recoffer",
        version="0.1.0",
        summary="Personalised recommendations and time-limited offers for an online shop.",
        lifespan=lifespan,
        docs_url=None,  # served offline by api/docs.add_docs
        redoc_url=None,
        generate_unique_id_function=operation_id,
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
        manage.router,  # campaigns managed at run time (issue 12, item 5)
        segments.router,
        analytics.router,  # loyalty analytics (issue 13, item 1)
        feedback_routes.router,  # online metrics of recommendations (issue 14)
        model.router,
        health.router,
        webhooks.router,
        webhooks.coupon_router,
        experiment_routes.router,  # A/B tests of recommenders (issue 14, item 3)
    ):
        app.include_router(router)
    add_docs(app)
    add_console(app)  # /console for marketing and ops (issue 13, item 2)
    # each operation's errors, from its dependencies (the hot route checks its key inline)
    page = recommendations.FRONTEND_PAGE
    document(
        app,
        inline_checks={recommendations.recommendations: page},
        dependency_errors={page: (503,)},  # no model, and no events to rank from
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
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
