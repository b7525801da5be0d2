"""Campaigns for marketing: definitions, a sweep over the window (a background job), and
results with uplift."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import CampaignStoreDep, ReportsDep, SweepsDep
from service.api.docs import documented
from service.api.routes.manage import campaign_out
from service.api.schemas import (
    CampaignRef,
    CampaignsOut,
    CampaignStatsOut,
    IntervalOut,
    MoneyBudgetOut,
    MoneyIntervalOut,
    RevenueOut,
    SegmentStatsOut,
    SweepJobOut,
    SweepJobsOut,
)
from service.offers.jobs import SweepJob
from service.offers.revenue import CurrencyRevenue, MoneyInterval
from service.offers.stats import Interval
from service.offers.store import version_of
from service.offers.targeting import SegmentRow

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
CampaignPath = Annotated[CampaignRef, Path(description="The campaign's id.")]
JobPath = Annotated[str, Path(max_length=64, description="The job id the run answered.")]


def _interval(value: Interval | None) -> IntervalOut | None:
    if value is None:
        return None
    return IntervalOut(
        estimate=round(value.estimate, 6), low=round(value.low, 6), high=round(value.high, 6)
    )


def _segment(row: SegmentRow) -> SegmentStatsOut:
    r = row.result
    return SegmentStatsOut(
        axis=row.axis,
        segment=r.segment,
        decided=r.decided,
        treated=r.treated,
        holdout=r.holdout,
        not_targeted=r.not_targeted,
        converted={
            "treated": r.treated_converted,
            "holdout": r.holdout_converted,
            "not_targeted": r.not_targeted_converted,
        },
        uplift=_interval(r.uplift),
        targeted=row.targeted,
        reason=row.reason,
    )


@router.get("", response_model=CampaignsOut)
async def list_campaigns(store: CampaignStoreDep) -> CampaignsOut:
    """Every campaign with all its parameters, its status and version, and whether it is
    active now (archived ones included; from the store, so every replica answers the same)."""
    views = await run_in_threadpool(store.all)
    return CampaignsOut(campaigns=[campaign_out(v) for v in views])


def _job(job: SweepJob) -> SweepJobOut:
    r, counts = job.record, job.counts
    return SweepJobOut(
        job_id=r.job_id,
        campaign_id=r.campaign_id,
        state=job.state,
        requested_at=r.requested_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        heartbeat_at=r.heartbeat_at,
        evaluated=r.evaluated,
        processed=r.processed,
        progress=job.progress,
        eligible=counts["eligible"],
        issued=counts.get("issued", 0),
        holdout=counts.get("holdout", 0),
        budget_exhausted=counts.get("budget_exhausted", 0),
        not_eligible=counts.get("not_eligible", 0),
        already_decided=counts.get("already_decided", 0),
        not_targeted=counts.get("not_targeted", 0),
        seconds=r.seconds,
        error=job.error,
    )


def _location(job: SweepJob) -> str:
    return f"/v1/campaigns/{job.record.campaign_id}/runs/{job.record.job_id}"


@router.post(
    "/{campaign_id}/run",
    status_code=202,
    response_model=SweepJobOut,
    responses=documented(404, 409),
)
async def run_campaign(
    campaign_id: CampaignPath, sweeps: SweepsDep, response: Response
) -> SweepJobOut:
    """Start a sweep of everyone inside the window; 202 and the job to poll (409 if one runs)."""
    job = await run_in_threadpool(sweeps.start, campaign_id)
    response.headers["Location"] = _location(job)
    return _job(job)


@router.get("/{campaign_id}/runs", response_model=SweepJobsOut, responses=documented(404))
async def list_runs(
    campaign_id: CampaignPath,
    sweeps: SweepsDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs at most.")] = 20,
) -> SweepJobsOut:
    """The campaign's latest sweep jobs, the latest first."""
    jobs = await run_in_threadpool(sweeps.recent, campaign_id, limit)
    return SweepJobsOut(campaign_id=campaign_id, jobs=[_job(j) for j in jobs])


@router.get("/{campaign_id}/runs/{job_id}", response_model=SweepJobOut, responses=documented(404))
async def get_run(campaign_id: CampaignPath, job_id: JobPath, sweeps: SweepsDep) -> SweepJobOut:
    """One sweep job: its state, progress and counts so far."""
    return _job(await run_in_threadpool(sweeps.job, campaign_id, job_id))


@router.get("/{campaign_id}/stats", response_model=CampaignStatsOut, responses=documented(404))
async def campaign_stats(
    campaign_id: CampaignPath, reports: ReportsDep, store: CampaignStoreDep
) -> CampaignStatsOut:
    """Eligible, issued, holdout, redeemed, expired; conversion and uplift with 95 % intervals."""
    s = await run_in_threadpool(reports.stats, campaign_id)
    by_version = await run_in_threadpool(store.decisions_by_version, campaign_id)
    return CampaignStatsOut(
        definition_version=version_of(reports.campaigns.get(campaign_id)),
        decisions_by_version={
            "none" if v is None else str(v): n for v, n in sorted(by_version.items(), key=_key)
        },
        campaign_id=s.campaign_id,
        at=s.at,
        eligible=s.eligible,
        decisions=s.decisions,
        coupons=s.coupons,
        budget=s.budget,
        converted=s.converted,
        conversion={k: _interval(v) for k, v in s.conversion.items()},
        uplift=_interval(s.uplift),
        segments=[_segment(row) for row in s.segments],
        open_windows=s.open_windows,
        discount_cost=s.discount_cost,
        discount_cost_estimated=s.discount_cost_estimated,
        unpriced_orders=s.unpriced_orders,
        notes=s.notes,
        revenue={k: _revenue(v) for k, v in s.revenue.items()},
        unpriced_purchases=s.unpriced_purchases,
        budget_money=None
        if s.budget_money is None
        else MoneyBudgetOut(**dataclasses.asdict(s.budget_money)),
        discount_given=s.discount_given,
    )


# --- money (issue 12, item 3)


def _money(value: MoneyInterval | None) -> MoneyIntervalOut | None:
    return None if value is None else MoneyIntervalOut(**dataclasses.asdict(value))


def _revenue(r: CurrencyRevenue) -> RevenueOut:
    return RevenueOut(
        treated_users=r.treated_users,
        holdout_users=r.holdout_users,
        treated_revenue=r.treated_revenue,
        holdout_revenue=r.holdout_revenue,
        treated_per_user=r.treated_per_user,
        holdout_per_user=r.holdout_per_user,
        difference_per_user=_money(r.difference_per_user),
        incremental=_money(r.incremental),
        discount_cost=r.discount_cost,
        net_incremental=_money(r.net_incremental),
    )


def _key(item: tuple[int | None, int]) -> int:
    return -1 if item[0] is None else item[0]
