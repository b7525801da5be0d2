"""Signing in and out of the console, and its overview page."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from service.api.deps import role_of
from service.charts import CSS
from service.console import marketing
from service.console.sessions import Session
from service.console.web import (
    COOKIE,
    NAV,
    SIGN_IN_COOKIE,
    allowed,
    checked_form,
    current_session,
    page,
    sessions_of,
    state_of,
)
from service.errors import LimiterUnavailable, TooManyAttempts
from service.middleware import client_address
from service.offers.limiter import Caller, FailureLimiter
from service.settings import Role, is_loopback

router = APIRouter(prefix="/console", include_in_schema=False)
# a frontend key lives in the shop's pages, readable by anyone: it never opens the console
SIGN_IN_ROLES: tuple[Role, ...] = ("marketing", "admin")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this server only (no open redirect)."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console"


def _sign_in_form(
    request: Request, *, status: int = 200, problem: str | None = None, target: str | None = None
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = page(
        request,
        "sign_in.html",
        None,
        title="Sign in",
        status=status,
        problem=problem,
        csrf=token,
        next=_safe_next(target),
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _limiter(request: Request) -> FailureLimiter:
    """Failed sign-ins per client address (built on first use; in Redis when configured, so
    every worker and replica counts together, as for failed coupon lookups)."""
    limiter: FailureLimiter | None = getattr(request.app.state, "recoffer_sign_in_limiter", None)
    if limiter is None:
        settings = state_of(request).settings
        limiter = FailureLimiter(
            per_client=None,
            per_address=settings.console_sign_in_failures,
            window_seconds=settings.console_sign_in_window_seconds,
            redis_url=settings.redis_url,
            prefix=settings.redis_prefix,
            name="console-sign-in-failures",
        )
        request.app.state.recoffer_sign_in_limiter = limiter
    return limiter


async def _throttled(request: Request, caller: Caller, *, count: bool) -> HTMLResponse | None:
    """The 429 (or 503) form when ``caller``'s failed sign-ins are used up; None otherwise.
    ``count``: this attempt failed and counts against them."""
    limiter = _limiter(request)
    try:
        await run_in_threadpool(limiter.fail if count else limiter.check, caller)
    except TooManyAttempts as exc:
        wait = exc.retry_after or 60
        minutes = max(1, -(-wait // 60))
        problem = (
            "Too many failed sign-ins from this address: sign-in is refused for about "
            f"{minutes} minute{'s' if minutes != 1 else ''}, whatever the key."
        )
        response = _sign_in_form(request, status=429, problem=problem)
        response.headers["Retry-After"] = str(wait)
        return response
    except LimiterUnavailable:
        problem = "Sign-in attempts cannot be counted now (Redis is unreachable): try again soon."
        return _sign_in_form(request, status=503, problem=problem)
    return None


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _sign_in_form(request, target=next)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    given, expected = form.get("csrf"), request.cookies.get(SIGN_IN_COOKIE)
    target = form.get("next")
    target = target if isinstance(target, str) else None
    if not isinstance(given, str) or not expected or not secrets.compare_digest(given, expected):
        problem = "The sign-in form expired: try again."
        return _sign_in_form(request, status=403, problem=problem, target=target)
    state = state_of(request)
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    caller = Caller("console", client_address(request.scope, state.settings.trusted_proxies))
    if not state.settings.auth_disabled:
        # refused before the key is compared: a right key after too many wrong ones is refused
        # too, or a guesser would tell a hit from a miss by the answer
        throttled = await _throttled(request, caller, count=False)
        if throttled is not None:
            return throttled
    if state.settings.auth_disabled:
        client = request.client.host if request.client else ""
        if not is_loopback(client):
            return _sign_in_form(
                request, status=403, problem="Development mode serves this machine only."
            )
        role: Role = "admin"
        key = ""
    else:
        if not key:
            return _sign_in_form(
                request, status=422, problem="key: enter an API key.", target=target
            )
        found = role_of(key, request.app.state.recoffer_keys)
        if found is None:
            throttled = await _throttled(request, caller, count=True)
            if throttled is not None:
                return throttled
            return _sign_in_form(
                request, status=401, problem="key: not a valid API key.", target=target
            )
        if found not in SIGN_IN_ROLES:
            problem = (
                f"key: a {found} key cannot sign in to the console; use a marketing or admin key."
            )
            return _sign_in_form(request, status=403, problem=problem, target=target)
        role = found
    token, _session = await run_in_threadpool(sessions_of(state).open, role, key)
    response = RedirectResponse(_safe_next(target), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(state.settings.console_session_hours * 3600),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/console")
    return response


@router.post("/sign-out")
async def sign_out(
    request: Request, session: Annotated[Session, Depends(current_session)]
) -> Response:
    await checked_form(request, session)
    token = request.cookies.get(COOKIE, "")
    await run_in_threadpool(sessions_of(state_of(request)).close, token)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("/charts.css", response_class=PlainTextResponse)
async def charts_css() -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("", response_class=HTMLResponse)
def overview(
    request: Request,
    session: Annotated[Session, Depends(allowed("marketing"))],
    background: BackgroundTasks,
) -> HTMLResponse:
    pages = [item for item in NAV[1:] if session.role == "admin" or session.role in item.roles]
    figures = marketing.headline(state_of(request))  # marketing's headline figures
    background.add_task(marketing.warm, request)  # loyalty and cohorts, after the answer
    return page(request, "overview.html", session, title="Overview", pages=pages, figures=figures)
