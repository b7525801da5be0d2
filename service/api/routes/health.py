"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import State
from service.errors import RecofferError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready when a model is served, or when no model exists yet and events can be stored."""
    version = state.models.version
    try:
        no_model_yet = version is None and state.models.store.current() is None
    except RecofferError:  # an unreadable registry: not ready, and say why
        no_model_yet = False
    ready = version is not None or (no_model_yet and state.database_ready)
    body = {
        "ready": ready,
        "model_version": version,
        "database": state.database_ready,
        "detail": state.models.last_error,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    recommender = state.models.current
    if recommender is not None:
        trained = recommender.model.artifact.manifest.trained_at
        state.metrics.model_age.set(time.time() - trained.timestamp())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
