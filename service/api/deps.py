"""Shared dependencies: API keys by role (constant-time comparison), and the narrow domain
objects each route needs (``RecommendationsDep``, ``IngestDep``, ...), each behind its role.

The lifespan builds one ``AppState``; routes never see it whole.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Response

from service.activity.ingest import Ingest
from service.analytics.service import Analytics
from service.api.schemas import NO_STORE
from service.experiments.service import Experiments
from service.feedback.service import Feedback
from service.health import Health
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.jobs import SweepJobs
from service.offers.reports import Reports
from service.offers.store import CampaignStore
from service.privacy.service import Privacy
from service.recommend.service import Recommendations
from service.recommend.versions import ModelVersions
from service.segments.service import Segments
from service.settings import Role, is_loopback
from service.state import AppState

T = TypeVar("T")
# the dependencies that check an API key: the OpenAPI document marks their routes (api/docs.py)
KEY_CHECKS: set[Callable[..., object]] = set()


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.recoffer
    return state


def _from_loopback(request: Request) -> bool:
    return is_loopback(request.client.host if request.client else "")


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def role_of(key: str, keys: dict[Role, list[str]]) -> Role | None:
    """The role whose key matches; every configured key is compared, in constant time each."""
    found: Role | None = None
    given = key.encode()
    for role, role_keys in keys.items():
        for candidate in role_keys:
            if hmac.compare_digest(given, candidate.encode()):
                found = role
    return found


def require(*roles: Role) -> Callable[[Request], Awaitable[AppState]]:
    """Dependency returning the app state once the caller's key is checked.

    401 without a valid key, 403 when the key's role is not allowed here; ``admin`` may call
    everything. One dependency does both, as each dependency costs time on the hot path.
    """
    allowed = set(roles) | {"admin"}

    async def check(request: Request) -> AppState:
        state = _state(request)
        if state.settings.auth_disabled:
            # development mode serves this machine only, whatever address the server bound
            if not _from_loopback(request):
                raise HTTPException(403, "development mode answers loopback clients only")
            return state
        key = _presented_key(request)
        if key is None:
            raise HTTPException(
                401,
                "missing API key: send it in the X-API-Key header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        role = role_of(key, request.app.state.recoffer_keys)
        if role is None:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if role not in allowed:
            raise HTTPException(
                403, f"this endpoint needs role {' or '.join(sorted(allowed))}; the key is {role}"
            )
        return state

    KEY_CHECKS.add(check)
    return check


def require_part(pick: Callable[[AppState], T], *roles: Role) -> Callable[[Request], Awaitable[T]]:
    """Dependency returning one domain object of the app state once the key is checked."""
    check = require(*roles)

    async def part(request: Request) -> T:
        return pick(await check(request))

    KEY_CHECKS.add(part)
    return part


def _recommendations(state: AppState) -> Recommendations:
    return state.recommendations


def _ingest(state: AppState) -> Ingest:
    return state.ingest


async def no_store(response: Response) -> None:
    """For routers whose answers carry coupon codes: no browser, proxy or CDN keeps a copy."""
    response.headers.update(NO_STORE)


async def get_health(request: Request) -> Health:
    """No key: probes and Prometheus call it (async: FastAPI runs sync ones in a thread)."""
    return _state(request).health


async def get_metrics_reader(request: Request) -> Health:
    """For ``/metrics``: a metrics or admin key when RECOFFER_METRICS_KEYS is set, else none."""
    state = _state(request)
    allowed = [k.get_secret_value() for k in state.settings.metrics_keys]
    if not allowed or state.settings.auth_disabled:
        return state.health
    key = _presented_key(request)
    given = (key or "").encode()
    found = False
    for candidate in allowed + request.app.state.recoffer_keys["admin"]:
        found |= hmac.compare_digest(given, candidate.encode())  # every key, constant time each
    if not found:
        why = "invalid metrics key" if key else "missing key: send it as X-API-Key or Bearer"
        raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})
    return state.health


RecommendationsDep = Annotated[Recommendations, Depends(require_part(_recommendations, "frontend"))]
ModelReaderDep = Annotated[
    Recommendations, Depends(require_part(_recommendations, "frontend", "marketing"))
]
ModelAdminDep = Annotated[Recommendations, Depends(require_part(_recommendations, "admin"))]
IngestDep = Annotated[Ingest, Depends(require_part(_ingest, "frontend"))]
CatalogueDep = Annotated[Ingest, Depends(require_part(_ingest, "marketing"))]  # bulk catalogue
HealthDep = Annotated[Health, Depends(get_health)]
MetricsReaderDep = Annotated[Health, Depends(get_metrics_reader)]


def _offers(state: AppState) -> OfferEngine:
    return state.offers


def _coupons(state: AppState) -> Coupons:
    return state.coupons


def _reports(state: AppState) -> Reports:
    return state.reports


OffersDep = Annotated[OfferEngine, Depends(require_part(_offers, "frontend", "marketing"))]
CampaignsDep = Annotated[OfferEngine, Depends(require_part(_offers, "marketing"))]
CouponsDep = Annotated[Coupons, Depends(require_part(_coupons, "frontend"))]
CouponReaderDep = Annotated[Coupons, Depends(require_part(_coupons, "frontend", "marketing"))]
ReportsDep = Annotated[Reports, Depends(require_part(_reports, "marketing"))]


def _privacy(state: AppState) -> Privacy:
    return state.privacy


PrivacyDep = Annotated[Privacy, Depends(require_part(_privacy, "admin"))]


def _sweeps(state: AppState) -> SweepJobs:
    return state.sweeps


SweepsDep = Annotated[SweepJobs, Depends(require_part(_sweeps, "marketing"))]


def _campaign_store(state: AppState) -> CampaignStore:
    return state.campaign_store


CampaignStoreDep = Annotated[CampaignStore, Depends(require_part(_campaign_store, "marketing"))]


def _segments(state: AppState) -> Segments:
    return state.segments


SegmentsDep = Annotated[Segments, Depends(require_part(_segments, "marketing"))]  # issue 12


def _analytics(state: AppState) -> Analytics:
    return Analytics(state.repository.engine)


AnalyticsDep = Annotated[Analytics, Depends(require_part(_analytics, "marketing"))]  # issue 13


def _model_versions(state: AppState) -> ModelVersions:
    return ModelVersions(state.recommendations)


# model versions, training runs and rollback for ops (issue 13, item 2)
ModelVersionsDep = Annotated[ModelVersions, Depends(require_part(_model_versions, "admin"))]


def _experiments(state: AppState) -> Experiments:
    if state.experiments is None:  # built by the lifespan before any request
        raise RuntimeError("experiments are not set up")
    return state.experiments


# A/B tests of recommenders (issue 14, item 3): marketing reads, admin changes
ExperimentsReaderDep = Annotated[Experiments, Depends(require_part(_experiments, "marketing"))]
ExperimentsAdminDep = Annotated[Experiments, Depends(require_part(_experiments, "admin"))]

# --- recommendation feedback (issue 14) ----------------------------------------------------


def _feedback(state: AppState) -> Feedback:
    if state.feedback is None:
        raise RuntimeError("the feedback component is built by the app's lifespan")
    return state.feedback


FeedbackDep = Annotated[Feedback, Depends(require_part(_feedback, "marketing"))]
