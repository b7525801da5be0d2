"""The served model: what it is, and reloading it."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from service.api.deps import AdminState, ReaderState
from service.api.schemas import ModelOut, ReloadOut
from service.errors import ModelUnavailable

router = APIRouter(prefix="/v1/model", tags=["model"])


@router.get("", response_model=ModelOut)
async def get_model(state: ReaderState) -> ModelOut:
    """Version, training time and quality figures of the model being served."""
    recommender = state.models.current
    if recommender is None:
        raise ModelUnavailable(state.models.last_error or "no model has been trained yet")
    model = recommender.model
    manifest = model.artifact.manifest
    return ModelOut(
        version=model.version,
        trained_at=manifest.created_at.isoformat(),
        data_until=manifest.reference_time.isoformat(),
        loaded_at=datetime.fromtimestamp(model.loaded_at, UTC),
        served=manifest.served,
        metrics=manifest.metrics.test,
        counts=manifest.counts.model_dump(exclude_none=True),
        signals=None if manifest.signals is None else manifest.signals.model_dump(mode="json"),
        candidates_precomputed=bool(model.candidates),
    )


@router.post("/reload", response_model=ReloadOut)
async def reload_model(state: AdminState) -> ReloadOut:
    """Load the registry's current version now (it is also picked up automatically)."""
    outcome = await run_in_threadpool(state.models.refresh, force=True)
    state.metrics.model_load(outcome)
    if outcome.error:
        raise HTTPException(409, f"{outcome.error}; still serving {outcome.version}")
    return ReloadOut(changed=outcome.changed, version=outcome.version)
