"""A/B tests of recommenders (issue 14, item 3): start, list, read with results per arm, stop
and promote. Marketing may read; changes need admin."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import ExperimentsAdminDep, ExperimentsReaderDep
from service.api.docs import documented
from service.api.routes.coupons import api_client
from service.api.schemas import (
    ExperimentIn,
    ExperimentOut,
    ExperimentResultsOut,
    ExperimentsOut,
    PromotionOut,
)
from service.experiments.repository import Experiment
from service.experiments.results import Results

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

ExperimentId = Annotated[str, Path(min_length=1, max_length=64, description="The experiment.")]


def experiment_out(experiment: Experiment, results: Results | None = None) -> ExperimentOut:
    out = ExperimentOut.model_validate(dataclasses.asdict(experiment))
    if results is not None:
        out.results = ExperimentResultsOut.model_validate(results.to_dict())
    return out


@router.post("", response_model=ExperimentOut, status_code=201, responses=documented(409))
async def start_experiment(
    body: ExperimentIn, experiments: ExperimentsAdminDep, request: Request
) -> ExperimentOut:
    """Start an experiment against the current model version; 409 while one runs."""
    actor = api_client(request)
    started = await run_in_threadpool(
        lambda: experiments.start(
            name=body.name,
            candidate_version=body.candidate_version,
            candidate_recipe=body.candidate_recipe,
            control_recipe=body.control_recipe,
            share=body.share,
            actor=actor,
        )
    )
    return experiment_out(started)


@router.get("", response_model=ExperimentsOut)
async def list_experiments(
    experiments: ExperimentsReaderDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Experiments at most.")] = 100,
) -> ExperimentsOut:
    """Every experiment, the newest first, without figures."""
    found = await run_in_threadpool(experiments.listing, limit)
    return ExperimentsOut(experiments=[experiment_out(e) for e in found])


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=documented(404))
async def get_experiment(
    experiment_id: ExperimentId, experiments: ExperimentsReaderDep
) -> ExperimentOut:
    """One experiment with its results per arm, the sample-ratio check and the guard."""

    def read() -> tuple[Experiment, Results]:
        found = experiments.get(experiment_id)
        return found, experiments.results(found)

    found, results = await run_in_threadpool(read)
    out = experiment_out(found, results)
    if found.running:
        out.served_here = experiments.serving_here(found)
        out.load_error = experiments.serving_error()
    return out


@router.post("/{experiment_id}/stop", response_model=ExperimentOut, responses=documented(404, 409))
async def stop_experiment(
    experiment_id: ExperimentId, experiments: ExperimentsAdminDep, request: Request
) -> ExperimentOut:
    """Stop it: everyone gets the current model again (409 once it has ended)."""
    actor = api_client(request)
    return experiment_out(await run_in_threadpool(experiments.stop, experiment_id, actor))


@router.post(
    "/{experiment_id}/promote", response_model=PromotionOut, responses=documented(404, 409)
)
async def promote_experiment(
    experiment_id: ExperimentId, experiments: ExperimentsAdminDep, request: Request
) -> PromotionOut:
    """Make the candidate version current (through the registry, under the trainer lock) and
    end the experiment; 409 for a recipe arm, once it has ended, or while a trainer runs."""
    actor = api_client(request)
    done = await run_in_threadpool(experiments.promote, experiment_id, actor)
    return PromotionOut(
        experiment=experiment_out(done.experiment),
        before=done.before,
        current=done.current,
        serving=done.serving,
        error=done.error,
    )
