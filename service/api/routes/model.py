"""The served model: what it is, and reloading it."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from service.api.deps import ModelAdminDep, ModelReaderDep
from service.api.docs import documented
from service.api.schemas import ModelOut, ReloadOut

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
