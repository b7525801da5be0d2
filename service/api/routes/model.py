"""The served model: what it is, and reloading it; for ops, every version, the training runs
and rolling back (issue 13, item 2)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from service.api.deps import ModelAdminDep, ModelReaderDep, ModelVersionsDep
from service.api.docs import documented
from service.api.schemas import (
    ModelOut,
    ReloadOut,
    RollbackOut,
    TrainingRunOut,
    TrainingRunsOut,
    VersionsOut,
)

router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelOut)
async def get_model(recommendations: ModelReaderDep) -> ModelOut:
    """Version, training time and quality figures of the model being served."""
    return ModelOut(**dataclasses.asdict(recommendations.describe()))


@router.post("/reload", response_model=ReloadOut, responses=documented(409))
async def reload_model(recommendations: ModelAdminDep) -> ReloadOut:
    """Load the registry's current version now (it is also picked up automatically)."""
    outcome = await run_in_threadpool(recommendations.reload)
    if outcome.error:
        serving = f"still serving {outcome.version}" if outcome.version else "nothing served yet"
        raise HTTPException(409, f"{recommendations.public(outcome.error)}; {serving}")
    return ReloadOut(changed=outcome.changed, version=outcome.version)


@router.get("/versions", response_model=VersionsOut)
async def model_versions(versions: ModelVersionsDep) -> VersionsOut:
    """Every published version, newest first: test and validation figures of the candidate
    served per protocol, the gate's decision, which is current and which this worker serves."""
    listing = await run_in_threadpool(versions.listing)
    return VersionsOut.model_validate(dataclasses.asdict(listing))


@router.get("/runs", response_model=TrainingRunsOut)
async def training_runs(
    versions: ModelVersionsDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Runs at most, newest first.")] = 100,
) -> TrainingRunsOut:
    """The training runs recorded in the model root: when, how long, and the outcome
    (promoted, refused by the gate, failed, skipped)."""
    log = await run_in_threadpool(versions.runs, limit)
    return TrainingRunsOut(
        runs=[TrainingRunOut.model_validate(r.model_dump()) for r in log.runs],
        unreadable_lines=log.unreadable_lines,
    )


@router.post("/rollback", response_model=RollbackOut, responses=documented(409))
async def rollback_model(
    versions: ModelVersionsDep,
    expected_current: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Roll back only if this is still the current version (else 409).",
        ),
    ] = None,
) -> RollbackOut:
    """Switch the current model back to the previously promoted version and serve it on this
    worker at once (the others within their reload interval). 409 when there is no earlier
    version, it does not load, or a trainer holds the model root's lock."""
    result = await run_in_threadpool(versions.rollback, expected_current)
    return RollbackOut.model_validate(dataclasses.asdict(result))
