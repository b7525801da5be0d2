"""The "Recommendations" page (issue 14, item 2): the online figures per model version, recipe,
source and placement, with their intervals, and the click-through rate per UTC day.

The table is what ``GET /v1/analytics/recommendations`` answers (``Feedback.tally`` through
``feedback.online.figures``); the day series is ``FeedbackRepository.daily``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from service.charts import Series, line_chart, percent
from service.console.sessions import Session
from service.console.web import allowed, page, state_of
from service.feedback.online import Figures, figures
from service.offers.stats import Interval, wilson

router = APIRouter(prefix="/console", include_in_schema=False)
Marketing = Annotated[Session, Depends(allowed("marketing"))]
BY = ("model_version", "recipe", "source", "placement")
DAYS = 30  # the chart's last days


def interval(value: Interval | None) -> str:
    """A rate with its 95 % interval, in words a table cell can hold."""
    if value is None:
        return "no figure"
    return f"{percent(value.estimate)} ({percent(value.low)} to {percent(value.high)})"


def revenue(f: Figures) -> str:
    """Revenue per 1,000 impressions per currency, with the interval."""
    if not f.revenue:
        return "none"
    return "; ".join(
        f"{r.currency} {r.per_thousand:.2f} ({r.low:.2f} to {r.high:.2f})" for r in f.revenue
    )


def ctr_chart(days: list[tuple[str, int, int]]) -> str:
    labels = [d for d, _, _ in days]
    rates = [wilson(c, n) for _, n, c in days]
    return line_chart(
        labels,
        [
            Series("CTR", [None if r is None else r.estimate for r in rates]),
            Series("95 % interval, low", [None if r is None else r.low for r in rates]),
            Series("95 % interval, high", [None if r is None else r.high for r in rates]),
        ],
        title=f"Click-through rate per UTC day (impressions of that day), last {DAYS} days",
        fmt=percent,
    )


@router.get("/recommendations", response_class=HTMLResponse)
async def recommendations(request: Request, session: Marketing) -> HTMLResponse:
    feedback = state_of(request).feedback
    rows: list[Figures] = []
    days: list[tuple[str, int, int]] = []
    if feedback is not None:
        tallies = await run_in_threadpool(feedback.tally, BY, None, None)
        rows = [figures(t, BY) for t in tallies if t.impressions]
        now = state_of(request).clock()
        since = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
        days = await run_in_threadpool(feedback.daily, since, None)
    return page(
        request,
        "recommendations.html",
        session,
        title="Recommendations",
        rows=rows,
        chart=ctr_chart(days),
        interval=interval,
        revenue=revenue,
    )
