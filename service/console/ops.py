"""Ops' pages (the admin role): model versions, training runs, rollback, health.

The figures come from the objects the API answers with (``service.recommend.versions`` for
``/v1/model/versions`` and ``/runs``, ``service.console.status`` for the health checks), so the
pages and the API cannot disagree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from service.charts import Series, bar_chart, line_chart
from service.console.sessions import Session
from service.console.status import gather, loop_states
from service.console.web import allowed, checked_form, page, state_of
from service.errors import RegistryError, TrainerBusyError
from service.recommend.versions import ModelVersions, RollbackResult, Versions
from service.scoring import PROTOCOLS

router = APIRouter(prefix="/console", include_in_schema=False)
Admin = Annotated[Session, Depends(allowed("admin"))]
RUNS_SHOWN = 50
CHART_VERSIONS = 20  # the newest versions drawn in the quality chart


def _versions(request: Request) -> ModelVersions:
    return ModelVersions(state_of(request).recommendations)


def _short(version: str) -> str:
    """``20261123T181500.123456Z-3fa9`` as ``11-23 18:15`` for a chart's axis."""
    if len(version) >= 13 and version[8] == "T":
        return f"{version[4:6]}-{version[6:8]} {version[9:11]}:{version[11:13]}"
    return version[:12]


def _quality_chart(listing: Versions) -> str:
    shown = list(reversed(listing.versions[:CHART_VERSIONS]))  # oldest first, left to right
    labels = [_short(v.version) for v in shown]
    series = []
    for protocol in PROTOCOLS:
        values: list[float | None] = []
        for v in shown:
            row = next((f for f in v.figures if f.protocol == protocol), None)
            values.append(None if row is None else row.test.get("ndcg@10"))
        series.append(Series(protocol, values))
    return line_chart(
        labels,
        series,
        title="Test NDCG@10 of the served candidate, per version",
        fmt=lambda value: f"{value:.3f}",
        height=200,  # lower than the default: the table below carries the figures
    )


def _models_page(
    request: Request,
    session: Session,
    versions: ModelVersions,
    *,
    status: int = 200,
    notice: str | None = None,
    problem: str | None = None,
) -> HTMLResponse:
    listing = versions.listing()
    log = versions.runs(RUNS_SHOWN)
    durations = bar_chart(
        [(f"{r.started_at:%m-%d %H:%M} {r.outcome}", r.seconds) for r in reversed(log.runs[:10])],
        title="Duration of the last runs (seconds)",
        fmt=lambda s: f"{s:.1f} s",
    )
    return page(
        request,
        "models.html",
        session,
        title="Models",
        status=status,
        listing=listing,
        runs=log.runs,
        unreadable=log.unreadable_lines,
        protocols=PROTOCOLS,
        chart=_quality_chart(listing),
        durations=durations,
        notice=notice,
        problem=problem,
        reload_seconds=state_of(request).settings.reload_interval_seconds,
    )


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, session: Admin) -> HTMLResponse:
    return _models_page(request, session, _versions(request))


@router.get("/models/rollback", response_class=HTMLResponse)
def rollback_confirm(request: Request, session: Admin) -> HTMLResponse:
    versions = _versions(request)
    try:
        plan = versions.plan_rollback()
    except RegistryError as exc:  # a normal state (one version so far): said, not an error
        return page(
            request,
            "rollback.html",
            session,
            title="Roll back",
            plan=None,
            problem=None,
            nothing=str(exc),
            protocols=PROTOCOLS,
            reload_seconds=0,
        )
    return page(
        request,
        "rollback.html",
        session,
        title="Roll back",
        plan=plan,
        problem=None,
        protocols=PROTOCOLS,
        reload_seconds=state_of(request).settings.reload_interval_seconds,
    )


@router.post("/models/rollback", response_class=HTMLResponse)
async def rollback(request: Request, session: Admin) -> HTMLResponse:
    form = await checked_form(request, session)
    expected = form.get("expected_current")
    versions = _versions(request)
    try:
        result: RollbackResult = await run_in_threadpool(
            versions.rollback, expected if isinstance(expected, str) and expected else None
        )
    except (RegistryError, TrainerBusyError) as exc:
        refusal = versions.public(str(exc))
        return await run_in_threadpool(
            lambda: _models_page(request, session, versions, status=409, problem=refusal)
        )
    problem: str | None = None
    notice: str | None = None
    if result.error is not None:
        problem = (
            f"{result.current} is current now, but this worker could not load it: {result.error}"
        )
    else:
        notice = (
            f"rolled back from {result.before} to {result.current}; this worker serves "
            f"{result.serving} now."
        )
    return await run_in_threadpool(
        lambda: _models_page(request, session, versions, notice=notice, problem=problem)
    )


@router.get("/health", response_class=HTMLResponse)
async def health(request: Request, session: Admin) -> HTMLResponse:
    loops = loop_states()  # on the event loop, where the tasks are
    report = await run_in_threadpool(gather, state_of(request), loops)
    return page(request, "health.html", session, title="Health", report=report)
