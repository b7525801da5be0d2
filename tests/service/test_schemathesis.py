"""Requests built from the service's own OpenAPI schema: none gets a 5xx, on SQLite and PostgreSQL.

For every documented operation Schemathesis sends schema-valid and schema-violating requests
(the schema's examples, boundary values, then seeded random ones) to the app in-process. The
app's lifespan runs before the first request (migrations, model load), as in production.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)
from starlette.types import Receive, Scope, Send

from service.api.fastpath import PlainRoute
from service.api.routes.recommendations import PATH as RECOMMENDATIONS
from service.app import create_app
from service.settings import Settings

if TYPE_CHECKING:  # schemathesis defines the alias for type checkers only
    from schemathesis.specs.openapi.schemas import OpenApiCase

ADMIN = "admin-key-0123456789abcd"
PUBLIC = {"/healthz", "/readyz"}  # answered without a key

# The schema depends on the code only, so it is read at collection from an app that never
# starts (schemathesis' fixture-based loader does not run under pytest 9.2); the requests go to
# the started app of the `served` fixture.
SPEC = create_app(Settings(admin_keys=[ADMIN])).openapi()
SEED = 20261124  # the same requests on every run: a failure here replays exactly
schema = schemathesis.openapi.from_dict(SPEC, config=SchemathesisConfig.from_dict({"seed": SEED}))
keyless = schemathesis.openapi.from_dict(
    SPEC,
    config=SchemathesisConfig.from_dict(
        {"seed": SEED, "phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}}}
    ),
)
BOUNDED = settings(  # per operation: boundary values, then this many random requests
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class RouteRecorder:
    """The app, remembering which route answered the last request."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.last_route: object = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.last_route = scope.get("route")  # the router writes it into this very dict

    def started(self) -> bool:
        state = getattr(self.app.state, "recoffer", None)
        return (
            state is not None and state.models.current is not None and state.health.database_ready
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'recoffer.db'}"
    url: str = request.getfixturevalue("module_postgres")
    return url


@pytest.fixture(scope="module")
def served(
    small_model_root: Path, backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> RouteRecorder:
    """One app per backend; its lifespan starts with the first request of each test."""
    models = tmp_path_factory.mktemp("schemathesis-models") / "models"
    shutil.copytree(small_model_root, models)  # POST /v1/model/rollback switches its current
    settings = Settings(
        model_dir=models,
        database_url=backend_url,
        admin_keys=[ADMIN],
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
    )
    return RouteRecorder(create_app(settings))


def _call(case: OpenApiCase, served: RouteRecorder, **kwargs: Any) -> Response:
    response = case.call(app=served, **kwargs)
    assert served.started(), "the lifespan did not load the model and open the database"
    return response


@schema.parametrize()
@BOUNDED
def test_no_request_with_an_admin_key_gets_a_server_error(
    case: OpenApiCase, served: RouteRecorder
) -> None:
    response = _call(case, served, headers={"X-API-Key": ADMIN})
    checks = [
        not_a_server_error,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,  # successes and the documented {"error", "detail"} errors
    ]
    case.validate_response(response, checks=checks)
    if case.operation.path == RECOMMENDATIONS and case.method.upper() == "GET":
        # the hot path's plain Starlette route answered, not its documented FastAPI twin
        assert isinstance(served.last_route, PlainRoute)


@keyless.parametrize()
@settings(BOUNDED, max_examples=5)
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)  # keys need no PostgreSQL run
def test_no_request_without_a_key_reaches_a_handler(
    case: OpenApiCase, served: RouteRecorder
) -> None:
    response = _call(case, served)
    case.validate_response(response, checks=[not_a_server_error])
    if case.operation.path not in PUBLIC:
        # the key is checked before parameters; only a body that is not JSON is refused first
        assert response.status_code in (400, 401, 422), response.text
