"""The console's Experiments pages (issue 14, item 3): the list, one experiment's arms with
their intervals, the sample-ratio check and the guard; stop and promote behind a confirm page
(admin). Marketing may read.

The figures are the API's (``service.experiments.service.Experiments``, the object
``/v1/experiments`` answers with), so the page and the API cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from service.console.marketing import actor_of
from service.console.sessions import Session
from service.console.web import allowed, checked_form, page, state_of
from service.errors import ExperimentError, RegistryError, TrainerBusyError, UnknownExperiment
from service.experiments.service import Experiments

router = APIRouter(prefix="/console", include_in_schema=False)
Reader = Annotated[Session, Depends(allowed("marketing"))]
Admin = Annotated[Session, Depends(allowed("admin"))]
ExperimentId = Annotated[str, Path(min_length=1, max_length=64)]
Action = Literal["stop", "promote"]
LISTED = 50


def _experiments(request: Request) -> Experiments:
    found = state_of(request).experiments
    if found is None:  # built by the lifespan before any request
        raise RuntimeError("experiments are not set up")
    return found


@router.get("/experiments", response_class=HTMLResponse)
def experiments_page(request: Request, session: Reader) -> HTMLResponse:
    experiments = _experiments(request)
    listing = experiments.listing(LISTED)
    running = next((e for e in listing if e.running), None)
    return page(
        request,
        "experiments.html",
        session,
        title="Experiments",
        experiments=listing,
        running=running,
        results=None if running is None else experiments.results(running),
        current=experiments.store.current(),
    )


def _detail(
    request: Request,
    session: Session,
    experiment_id: str,
    *,
    status: int = 200,
    notice: str | None = None,
    problem: str | None = None,
) -> HTMLResponse:
    experiments = _experiments(request)
    experiment = experiments.get(experiment_id)
    return page(
        request,
        "experiment.html",
        session,
        title=f"Experiment {experiment.name}",
        status=status,
        experiment=experiment,
        results=experiments.results(experiment),
        serving=state_of(request).models.experiment,
        serving_error=experiments.serving_error(),
        notice=notice,
        problem=problem,
        poll_seconds=state_of(request).settings.experiment_poll_seconds,
    )


def _not_found(request: Request, session: Session, exc: UnknownExperiment) -> HTMLResponse:
    return page(request, "problem.html", session, title="Not found", status=404, problem=str(exc))


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(request: Request, session: Reader, experiment_id: ExperimentId) -> HTMLResponse:
    try:
        return _detail(request, session, experiment_id)
    except UnknownExperiment as exc:
        return _not_found(request, session, exc)


@router.get("/experiments/{experiment_id}/{action}", response_class=HTMLResponse)
def confirm_page(
    request: Request, session: Admin, experiment_id: ExperimentId, action: Action
) -> HTMLResponse:
    experiments = _experiments(request)
    try:
        experiment = experiments.get(experiment_id)
    except UnknownExperiment as exc:
        return _not_found(request, session, exc)
    return page(
        request,
        "experiment_confirm.html",
        session,
        title=f"{action.capitalize()} experiment {experiment.name}",
        experiment=experiment,
        results=experiments.results(experiment),
        action=action,
        current=experiments.store.current(),
        reload_seconds=state_of(request).settings.reload_interval_seconds,
        poll_seconds=state_of(request).settings.experiment_poll_seconds,
    )


@router.post("/experiments/{experiment_id}/{action}", response_class=HTMLResponse)
async def act(
    request: Request, session: Admin, experiment_id: ExperimentId, action: Action
) -> HTMLResponse:
    await checked_form(request, session)
    experiments = _experiments(request)
    actor = actor_of(request, session)  # as the API records it
    notice: str | None = None
    try:
        if action == "stop":
            await run_in_threadpool(experiments.stop, experiment_id, actor)
            notice = "the experiment is stopped: everyone gets the current model again."
        else:
            done = await run_in_threadpool(experiments.promote, experiment_id, actor)
            notice = f"{done.current} is current now (was {done.before})."
            if done.error is not None:
                notice += f" This worker could not load it: {done.error}"
    except UnknownExperiment as exc:
        return _not_found(request, session, exc)
    except (ExperimentError, RegistryError, TrainerBusyError) as exc:
        refusal = experiments.recommendations.public(str(exc))
        return await run_in_threadpool(
            lambda: _detail(request, session, experiment_id, status=409, problem=refusal)
        )
    return await run_in_threadpool(lambda: _detail(request, session, experiment_id, notice=notice))
