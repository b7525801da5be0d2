"""Campaigns for marketing: definitions, a sweep over the window, and results with uplift."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from service.api.deps import CampaignsDep, ReportsDep
from service.api.docs import documented
from service.api.schemas import (
    CampaignOut,
    CampaignRef,
    CampaignsOut,
    CampaignStatsOut,
    IntervalOut,
    SweepOut,
)
from service.offers.stats import Interval

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
CampaignPath = Annotated[CampaignRef, Path(description="The campaign's id.")]


def _interval(value: Interval | None) -> IntervalOut | None:
    if value is None:
        return None
    return IntervalOut(
        estimate=round(value.estimate, 6), low=round(value.low, 6), high=round(value.high, 6)
    )


@router.get("", response_model=CampaignsOut)
async def list_campaigns(offers: CampaignsDep) -> CampaignsOut:
    """Every campaign with all its parameters, and whether it is active now."""
    now = offers.clock()
    return CampaignsOut(
        campaigns=[
            CampaignOut(
                campaign_id=c.campaign_id, active_now=c.is_active(now), definition=c.public()
            )
            for c in offers.campaigns.values()
        ]
    )


@router.post("/{campaign_id}/run", response_model=SweepOut, responses=documented(404, 503))
async def run_campaign(campaign_id: CampaignPath, offers: CampaignsDep) -> SweepOut:
    """Evaluate every user inside the campaign's window; safe to repeat and to run at once."""
    result = await run_in_threadpool(offers.sweep, campaign_id)
    return SweepOut(
        campaign_id=result.campaign_id,
        active=result.active,
        evaluated=result.evaluated,
        decisions=dict(result.decisions),
        seconds=round(result.seconds, 3),
    )


@router.get("/{campaign_id}/stats", response_model=CampaignStatsOut, responses=documented(404))
async def campaign_stats(campaign_id: CampaignPath, reports: ReportsDep) -> CampaignStatsOut:
    """Eligible, issued, holdout, redeemed, expired; conversion and uplift with 95 % intervals."""
    s = await run_in_threadpool(reports.stats, campaign_id)
    return CampaignStatsOut(
        campaign_id=s.campaign_id,
        at=s.at,
        eligible=s.eligible,
        decisions=s.decisions,
        coupons=s.coupons,
        budget=s.budget,
        converted=s.converted,
        conversion={k: _interval(v) for k, v in s.conversion.items()},
        uplift=_interval(s.uplift),
        open_windows=s.open_windows,
        discount_cost=s.discount_cost,
        discount_cost_estimated=s.discount_cost_estimated,
        unpriced_orders=s.unpriced_orders,
        notes=s.notes,
    )
