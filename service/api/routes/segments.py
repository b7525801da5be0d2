"""User segments for marketing: one user's profile, and the counts per segment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from service.api.deps import AnalyticsDep, SegmentsDep
from service.api.docs import documented
from service.api.schemas import Id, PredictedValueOut, ProfileOut, SegmentsOut

router = APIRouter(tags=["segments"])
UserPath = Annotated[Id, Path(description="The shop's user id.")]


@router.get("/v1/users/{user_id}/profile", response_model=ProfileOut, responses=documented(404))
async def get_profile(
    user_id: UserPath, segments: SegmentsDep, analytics: AnalyticsDep
) -> ProfileOut:
    """RFM figures and scores, lifecycle stage and loyalty type (computed now if missing), and
    the predicted lifetime value of the latest `recoffer clv --write` when it has one."""
    p = await run_in_threadpool(segments.profile, user_id)
    value = await run_in_threadpool(analytics.value_of, user_id)
    return ProfileOut(
        user_id=p.user_id,
        lifecycle_stage=p.lifecycle_stage,
        loyalty_type=p.loyalty_type,
        recency_days=p.recency_days,
        frequency=p.orders,
        monetary=p.monetary,
        currency=p.currency,
        r_score=p.r_score,
        f_score=p.f_score,
        m_score=p.m_score,
        orders=p.orders,
        coupon_orders=p.coupon_orders,
        coupon_share=p.coupon_share,
        first_order_at=p.first_order_at,
        last_order_at=p.last_order_at,
        views=p.views,
        active_days=p.active_days,
        computed_at=p.computed_at,
        predicted_lifetime_value=None if value is None else PredictedValueOut(**value),
    )


@router.get("/v1/segments", response_model=SegmentsOut)
async def list_segments(segments: SegmentsDep) -> SegmentsOut:
    """Users per lifecycle stage, per loyalty type and per stage x type."""
    c = await run_in_threadpool(segments.counts)
    run = c.last_run
    stages = c.per_stage()
    return SegmentsOut(
        users=sum(stages.values()),
        stages=stages,
        loyalty_types=c.per_type(),
        matrix=c.matrix,
        computed_from=c.oldest,
        computed_until=c.newest,
        last_run_at=run["finished_at"] if run else None,
        last_run_as_of=run["as_of"] if run else None,
        typical_interval_days=run["typical_interval_days"] if run else None,
    )
