"""Loyalty analytics for marketing: the per-period metrics and the cohort matrix."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.api.deps import AnalyticsDep
from service.api.schemas import CohortsOut, CustomerValueSummaryOut, LoyaltyOut

router = APIRouter(tags=["analytics"])
Segment = Annotated[
    str | None,
    Query(
        max_length=32,
        description="Only users whose current lifecycle stage or loyalty type is this one "
        "(new, active, at_risk, lapsed, returning; not_loyal, habitual, mercenary, latent, "
        "committed), with all their history.",
    ),
]
Since = Annotated[
    datetime | None,
    Query(description="The report starts with the period holding this moment (UTC if naive)."),
]
Until = Annotated[
    datetime | None,
    Query(description="The report ends with the period holding this moment (UTC if naive)."),
]


@router.get("/v1/analytics/loyalty", response_model=LoyaltyOut)
async def get_loyalty(
    analytics: AnalyticsDep,
    period: Annotated[Literal["week", "month"], Query(description="UTC weeks or months.")] = (
        "month"
    ),
    since: Since = None,
    until: Until = None,
    segment: Segment = None,
) -> LoyaltyOut:
    """Retention, churn, repurchase, frequency, order value, upsell, lifetime value per period."""
    report = await run_in_threadpool(analytics.loyalty, period, since, until, segment)
    return LoyaltyOut.model_validate(report)


@router.get("/v1/analytics/cohorts", response_model=CohortsOut)
async def get_cohorts(
    analytics: AnalyticsDep, since: Since = None, until: Until = None, segment: Segment = None
) -> CohortsOut:
    """Customers by month of first order, and the share of them ordering in each later month."""
    matrix = await run_in_threadpool(analytics.cohorts, since, until, segment)
    return CohortsOut.model_validate(matrix)


@router.get("/v1/analytics/customer-value", response_model=CustomerValueSummaryOut)
async def get_customer_value(
    analytics: AnalyticsDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="Top customers at most.")] = 10,
) -> CustomerValueSummaryOut:
    """Predicted lifetime value of the latest `recoffer clv --write`: summary and top customers."""
    summary = await run_in_threadpool(analytics.customer_value, limit)
    return CustomerValueSummaryOut.model_validate(summary)
