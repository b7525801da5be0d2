"""Online metrics of recommendations (issue 14, item 2): impressions, CTR, add-to-cart rate,
conversion and revenue per 1,000 impressions per group, with intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.api.deps import FeedbackDep
from service.api.schemas import (
    IntervalOut,
    MoneyIntervalOut,
    RecommendationFiguresOut,
    RecommendationMetricsOut,
    RevenueRateOut,
)
from service.errors import InvalidInput
from service.feedback.online import Figures, figures
from service.offers.stats import Interval
from service.tables import FEEDBACK_COLUMNS

router = APIRouter(tags=["analytics"])
DEFAULT_BY = "model_version,recipe,source,placement"


@router.get("/v1/analytics/recommendations", response_model=RecommendationMetricsOut)
async def get_recommendation_metrics(
    feedback: FeedbackDep,
    by: Annotated[
        str,
        Query(
            max_length=200,
            description="Comma-separated dimensions to group by, any of "
            f"{', '.join(FEEDBACK_COLUMNS)} (empty: one group of everything).",
        ),
    ] = DEFAULT_BY,
    since: Annotated[
        datetime | None, Query(description="Impressions shown at or after (UTC if naive).")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Impressions shown before (UTC if naive).")
    ] = None,
) -> RecommendationMetricsOut:
    """Impressions, CTR, add-to-cart rate, conversion and revenue per 1,000 impressions."""
    dims = [d.strip() for d in by.split(",") if d.strip()]
    unknown = [d for d in dims if d not in FEEDBACK_COLUMNS]
    if unknown:
        raise InvalidInput(
            "by", f"unknown {', '.join(unknown)}; any of {', '.join(FEEDBACK_COLUMNS)}"
        )
    if len(set(dims)) != len(dims):
        raise InvalidInput("by", "a dimension is named twice")
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidInput("until", "must be after since")
    tallies = await run_in_threadpool(feedback.tally, dims, since, until)
    return RecommendationMetricsOut(
        by=dims, since=since, until=until, groups=[_out(figures(t, dims)) for t in tallies]
    )


def _utc(moment: datetime | None, field: str) -> datetime | None:
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput(field, "out of range once converted to UTC") from None


def _interval(i: Interval | None) -> IntervalOut | None:
    return None if i is None else IntervalOut(estimate=i.estimate, low=i.low, high=i.high)


def _out(f: Figures) -> RecommendationFiguresOut:
    return RecommendationFiguresOut(
        group=f.key,
        impressions=f.impressions,
        users=f.users,
        clicks=f.clicks,
        add_to_carts=f.carts,
        purchases=f.purchases,
        ctr=_interval(f.ctr),
        add_to_cart_rate=_interval(f.cart_rate),
        conversion=_interval(f.conversion),
        revenue=[
            RevenueRateOut(
                currency=r.currency,
                revenue=r.revenue,
                per_1000_impressions=MoneyIntervalOut(
                    estimate=r.per_thousand, low=r.low, high=r.high
                ),
            )
            for r in f.revenue
        ],
    )
