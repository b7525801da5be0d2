"""Shared dependencies: the app state, and API keys by role (constant-time comparison)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request

from service.settings import Role

if TYPE_CHECKING:
    from service.events import ActivityStore, Repository
    from service.metrics import Metrics
    from service.model_holder import ModelHolder
    from service.offers.auto import AutoEvaluator
    from service.offers.coupons import Coupons
    from service.offers.decisions import OfferEngine
    from service.offers.reports import Reports
    from service.settings import Settings


@dataclass
class AppState:
    """What the lifespan builds and every route reads."""

    settings: Settings
    repository: Repository
    activity: ActivityStore
    models: ModelHolder
    metrics: Metrics
    clock: Callable[[], datetime]
    offers: OfferEngine
    auto_offers: AutoEvaluator
    coupons: Coupons
    reports: Reports
    database_ready: bool = False


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, a costly hop
    return _state(request)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.recoffer
    return state


State = Annotated[AppState, Depends(get_state)]


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    return check


FrontendState = Annotated[AppState, Depends(require("frontend"))]
AdminState = Annotated[AppState, Depends(require("admin"))]
MarketingState = Annotated[AppState, Depends(require("marketing"))]
ReaderState = Annotated[AppState, Depends(require("frontend", "marketing"))]
