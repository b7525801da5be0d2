"""The API's documentation: the OpenAPI document, and ``/docs`` and ``/redoc`` served offline.

Each operation gets a readable operationId (its endpoint's name), the API-key security
schemes when its route checks a key (so Swagger UI's "Authorize" sends the key), and only the
errors it can answer: derived here from what its route depends on (a key check: 401 and 403;
parameters: 422; a body: 400, 413 and 422; a domain object: what it raises, such as 429 from
the coupon lookup limits or 503 when the database or the model is unavailable), plus the codes
a route declares itself with ``documented(...)`` (404, 409, ...). Every error body is
``ErrorOut`` (``service/api/errors.py``).

The pages load Swagger UI and ReDoc from the files the ``fastapi-offline`` package installs
(no CDN, no Google Fonts), so an air-gapped shop sees them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, get_args, get_type_hints

from fastapi import FastAPI, params
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.api import deps
from service.api.errors import ERROR_RESPONSES
from service.api.schemas import ErrorOut

ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files, from the installed fastapi-offline
ASSETS_PACKAGE = ("fastapi_offline", "static")

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "APIKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key of the role the operation names (admin keys may call all).",
    },
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The same key as `Authorization: Bearer <key>`.",
    },
}
# the pages may load nothing from elsewhere, whatever the bundles ask for (ReDoc's side menu
# shows a logo from its makers' CDN): the browser refuses before any request leaves
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'self'"
)
EITHER_KEY: list[dict[str, list[str]]] = [{"APIKey": []}, {"Bearer": []}]  # one of the two suffices


def _call(alias: Any) -> Callable[..., Any]:
    """The dependency function behind an ``Annotated[T, Depends(f)]`` alias of ``deps``."""
    depends = get_args(alias)[1]
    call: Callable[..., Any] = depends.dependency
    return call


# what each domain object a route receives can answer besides its success
DEPENDENCY_ERRORS: dict[Callable[..., Any], tuple[int, ...]] = {
    _call(deps.RecommendationsDep): (503,),  # no model, and no events to rank from
    _call(deps.ModelReaderDep): (503,),
    _call(deps.IngestDep): (503,),  # the database is unavailable
    _call(deps.OffersDep): (503,),
    _call(deps.ReportsDep): (503,),
    _call(deps.CouponsDep): (429, 503),  # the failed-lookup limits
    _call(deps.CouponReaderDep): (503,),
    _call(deps.CampaignStoreDep): (503,),  # the store is the database (issue 12, item 5)
    _call(deps.SegmentsDep): (503,),  # issue 12, item 1
    _call(deps.AnalyticsDep): (503,),  # issue 13, item 1
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the codes only a route itself can answer (404, 409, 410, ...)."""
    return {code: ERROR_RESPONSES[code] for code in codes}


_ENDPOINTS: dict[str, Callable[..., Any]] = {}  # operationId -> endpoint, as FastAPI names them


def operation_id(route: Any) -> str:
    """The endpoint's own name (``get_model``, ``redeem``): FastAPI's ``generate_unique_id``.

    Two endpoints of one name would share an id: refused when the app is built.
    """
    name: str = route.name
    if not route.include_in_schema:  # the pages' own routes, defined per app
        return name
    known = _ENDPOINTS.setdefault(name, route.endpoint)
    if known is not route.endpoint:
        raise ValueError(f"two endpoints are named {name!r}: rename one (it is its operationId)")
    return name


def _calls(function: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Every dependency ``function`` declares, and theirs (``Annotated[T, Depends(f)]``)."""
    hints = get_type_hints(function, include_extras=True)
    for name, hint in hints.items():
        if name == "return":
            continue
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, params.Depends) and meta.dependency is not None:
                yield meta.dependency
                yield from _calls(meta.dependency)


def _error(code: int) -> dict[str, Any]:
    return {
        "description": ERROR_RESPONSES[code]["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
    }


def _fastapi_422(response: dict[str, Any]) -> bool:
    """FastAPI's own 422 entry, whose body shape this API does not answer with."""
    return "HTTPValidationError" in repr(response.get("content", {}))


def _document_errors(
    operation: dict[str, Any],
    calls: list[Callable[..., Any]],
    errors_of: Mapping[Callable[..., Any], tuple[int, ...]],
) -> None:
    keyed = any(call in deps.KEY_CHECKS for call in calls)
    responses: dict[str, Any] = operation["responses"]
    for status in [c for c, response in responses.items() if _fastapi_422(response)]:
        del responses[status]
    codes: set[int] = {401, 403} if keyed else set()
    if operation.get("parameters"):
        codes.add(422)
    if "requestBody" in operation:
        codes |= {400, 413, 422}
    for call in calls:
        codes.update(errors_of.get(call, ()))
    for code in codes:
        responses.setdefault(str(code), _error(code))  # a route's own entry first
    operation["responses"] = dict(sorted(responses.items()))
    if keyed:
        operation["security"] = EITHER_KEY


def document(
    app: FastAPI,
    *,
    inline_checks: Mapping[Callable[..., Any], Any],
    dependency_errors: Mapping[Callable[..., Any], tuple[int, ...]],
) -> None:
    """Make ``app.openapi()`` build the document described above, once.

    ``inline_checks``: endpoints that check the key in their body (the hot path) and the check
    each calls; ``dependency_errors``: the errors of dependencies defined by routes, in
    addition to ``DEPENDENCY_ERRORS``.
    """
    build = app.openapi
    errors_of = {**DEPENDENCY_ERRORS, **dependency_errors}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        for operations in spec["paths"].values():
            for operation in operations.values():
                endpoint = _ENDPOINTS[operation["operationId"]]
                calls = list(_calls(endpoint))
                if endpoint in inline_checks:
                    calls.append(inline_checks[endpoint])
                _document_errors(operation, calls, errors_of)
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {})["ErrorOut"] = ErrorOut.model_json_schema()
        components["securitySchemes"] = SECURITY_SCHEMES
        text = repr(spec["paths"])
        for unused in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{unused}" not in text:
                components["schemas"].pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from the installed assets; ``/openapi.json`` stays."""
    app.mount(ASSETS, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from a public validator
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
