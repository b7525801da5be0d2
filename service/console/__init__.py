"""The console at ``/console``: the service's own pages for marketing and ops, served by the API
itself, server-rendered, with no script and nothing loaded from another host.

``add_console(app)`` mounts it: sign-in and the overview (``routes``), marketing's pages
(``marketing``), ops' pages (``ops``), the stylesheet, and the answers to a missing session, a
role that may not see a page and a form without its CSRF token.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from service.console import experiments, marketing, ops, recommendations, routes
from service.console.web import FormExpired, NotAllowed, SignInNeeded, page

__all__ = ["add_console"]


def add_console(app: FastAPI) -> None:
    """Mount the console's pages, its static files and its error pages on ``app``."""
    for router in (
        routes.router,
        marketing.router,
        ops.router,
        recommendations.router,
        experiments.router,
    ):
        app.include_router(router)
    app.mount(
        "/console/static",
        StaticFiles(packages=[("service.console", "static")]),
        name="console-static",
    )

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        target = request.scope.get("root_path", "") + "/console/sign-in"
        if exc.path.rstrip("/") not in {"/console", ""}:
            return RedirectResponse(f"{target}?next={quote(exc.path)}", status_code=303)
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed) -> Response:
        return page(request, "problem.html", None, title="Not allowed", status=403, problem=exc)

    @app.exception_handler(FormExpired)
    async def _expired(request: Request, exc: FormExpired) -> Response:
        problem = "This form has expired or did not come from the console: reload the page."
        return page(
            request, "problem.html", None, title="Form expired", status=403, problem=problem
        )
