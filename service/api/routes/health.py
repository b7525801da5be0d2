"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from service.api.deps import HealthDep, MetricsReaderDep

router = APIRouter(tags=["health"])


class ReadinessOut(BaseModel):
    ready: bool
    model_version: str | None
    database: bool
    detail: str | None  # why not, without this machine's paths


NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ReadinessOut, "description": "Not ready: `detail` says why."}
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadinessOut, responses=NOT_READY)
async def readyz(health: HealthDep) -> JSONResponse:
    """Ready when a model is served, or when no model exists yet and events can be stored."""
    r = health.readiness()
    body = {
        "ready": r.ready,
        "model_version": r.model_version,
        "database": r.database,
        "detail": r.detail,
    }
    return JSONResponse(body, status_code=200 if r.ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(health: MetricsReaderDep) -> Response:
    return Response(health.exposition(), media_type=CONTENT_TYPE_LATEST)
