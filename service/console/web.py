"""What every console page shares: who is signed in, the role checks, CSRF-checked forms, and
rendering a template with the console's security headers.

Pages are rendered on the server from Jinja2 templates in ``service/console/templates`` and use
no script at all; styles and charts come from this package (``static/``, ``service.charts``).
The Content-Security-Policy below lets a page load nothing but this server's own stylesheet, so
a page can make no request to another host even if a template were wrong.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData

from service.console.sessions import ConsoleSessions, Session, digest
from service.settings import Role
from service.state import AppState

COOKIE = "recoffer_console"  # the session token; HttpOnly, SameSite=Strict
SIGN_IN_COOKIE = "recoffer_console_sign_in"  # the sign-in form's CSRF token (double submit)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class NavItem:
    """A page in the console's menu and the roles that see it (``admin`` sees every page)."""

    label: str
    path: str  # under /console
    roles: tuple[Role, ...]


# every page of the console: marketing's, then ops' (the admin role)
NAV: tuple[NavItem, ...] = (
    NavItem("Overview", "", ("marketing",)),
    NavItem("Campaigns", "/campaigns", ("marketing",)),
    NavItem("Segments", "/segments", ("marketing",)),
    NavItem("Loyalty", "/loyalty", ("marketing",)),
    NavItem("Cohorts", "/cohorts", ("marketing",)),
    NavItem("Customer value", "/customer-value", ("marketing",)),
    NavItem("Experiments", "/experiments", ("marketing",)),  # issue 14, item 3
    NavItem("Recommendations", "/recommendations", ("marketing",)),  # issue 14
    NavItem("Models", "/models", ("admin",)),
    NavItem("Health", "/health", ("admin",)),
)


class SignInNeeded(Exception):
    """No live session: the page answers with a redirect to the sign-in form."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class NotAllowed(Exception):
    """The signed-in role may not see this page or do this."""

    def __init__(self, role: Role, needed: Sequence[Role]) -> None:
        super().__init__(f"this page needs role {' or '.join(needed)}; you are signed in as {role}")
        self.role = role


class FormExpired(Exception):
    """A form came without this session's CSRF token (an old tab, or another site's form)."""


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.recoffer
    return state


def sessions_of(state: AppState) -> ConsoleSessions:
    hours = state.settings.console_session_hours
    return ConsoleSessions(state.repository, timedelta(hours=hours))


def _key_still_configured(request: Request, session: Session) -> bool:
    """A session lasts only as long as its key: every key of its role is compared."""
    if state_of(request).settings.auth_disabled:
        return True
    found = False
    for key in request.app.state.recoffer_keys.get(session.role, []):
        found |= hmac.compare_digest(digest(key), session.key_digest)
    return found


def _back_to(request: Request) -> str:
    """Where to come back after signing in: the page asked for, with its query; for a form
    posted with an expired session (a button's POST-only path), the page the form was on."""
    if request.method == "GET":
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    same_host = referer.netloc == request.url.netloc
    if same_host and referer.path.startswith("/console"):
        return referer.path + (f"?{referer.query}" if referer.query else "")
    return "/console"


def current_session(request: Request) -> Session:
    """The signed-in console user, or :class:`SignInNeeded` (a FastAPI dependency; sync, so it
    runs in the thread pool, as it reads the database)."""
    token = request.cookies.get(COOKIE)
    session = sessions_of(state_of(request)).find(token) if token else None
    if session is None or not _key_still_configured(request, session):
        raise SignInNeeded(_back_to(request))
    return session


def allowed(*roles: Role) -> Callable[[Request], Session]:
    """A dependency: the session, when its role is one of ``roles`` or ``admin``."""
    permitted: set[Role] = {*roles, "admin"}

    def check(request: Request) -> Session:
        session = current_session(request)
        if session.role not in permitted:
            raise NotAllowed(session.role, sorted(permitted))
        return session

    return check


async def checked_form(request: Request, session: Session) -> FormData:
    """A posted form, once its CSRF token is this session's (else :class:`FormExpired`)."""
    form = await request.form()
    token = form.get("csrf")
    if not session.csrf_ok(token if isinstance(token, str) else None):
        raise FormExpired
    return form


_TEMPLATES = Environment(
    loader=PackageLoader("service.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,  # a missing figure is an error in a test, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)


def page(
    request: Request,
    template: str,
    session: Session | None,
    *,
    title: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A rendered page with the console's headers; the menu shows what ``session`` may see."""
    base = request.scope.get("root_path", "") + "/console"
    here = request.url.path.removeprefix(request.scope.get("root_path", ""))
    nav = [
        {"label": item.label, "href": base + item.path, "current": here == "/console" + item.path}
        for item in NAV
        if session is not None and (session.role == "admin" or session.role in item.roles)
    ]
    html = _TEMPLATES.get_template(template).render(
        base=base,
        title=title,
        session=session,
        nav=nav,
        dev_mode=state_of(request).settings.auth_disabled,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)
