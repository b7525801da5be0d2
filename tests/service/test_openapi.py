"""The OpenAPI document: keys, operationIds, and only the errors each operation can answer."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import docs
from service.app import create_app
from service.settings import Settings

ADMIN = "admin-key-0123456789abcd"
SPEC = create_app(Settings(admin_keys=[ADMIN])).openapi()
OPERATIONS = {
    operation["operationId"]: operation
    for operations in SPEC["paths"].values()
    for operation in operations.values()
}


def _errors(operation_id: str) -> set[int]:
    return {int(code) for code in OPERATIONS[operation_id]["responses"] if code[0] in "45"}


def test_operation_ids_are_the_endpoints_names_and_unique() -> None:
    ids = [o["operationId"] for ops in SPEC["paths"].values() for o in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]*", i) for i in ids), ids
    assert {"get_model", "post_events", "redeem", "list_campaigns", "readyz"} <= set(ids)


def test_the_api_key_schemes_are_declared_and_every_keyed_operation_uses_them() -> None:
    schemes = SPEC["components"]["securitySchemes"]
    assert (schemes["APIKey"]["type"], schemes["APIKey"]["in"]) == ("apiKey", "header")
    assert schemes["APIKey"]["name"] == "X-API-Key"
    assert schemes["Bearer"]["scheme"] == "bearer"
    for operation_id, operation in OPERATIONS.items():
        if operation_id in ("healthz", "readyz"):
            assert "security" not in operation
            continue
        assert operation["security"] == [{"APIKey": []}, {"Bearer": []}], operation_id
        assert {401, 403} <= _errors(operation_id)


@pytest.mark.parametrize(
    ("operation_id", "errors"),
    [
        ("healthz", set()),
        ("readyz", {503}),
        ("list_campaigns", {401, 403, 503}),  # no parameters; read from the campaign store
        ("get_model", {401, 403, 503}),
        ("reload_model", {401, 403, 409}),
        ("recommendations", {401, 403, 422, 503}),  # the hot route checks its key inline
        ("post_events", {400, 401, 403, 413, 422, 503}),
        ("validate", {401, 403, 404, 422, 429, 503}),
        ("redeem", {400, 401, 403, 404, 409, 410, 413, 422, 429, 503}),
        ("user_offers", {401, 403, 422, 503}),  # no lookup limit there
        ("similar", {401, 403, 404, 422, 503}),
    ],
)
def test_each_operation_lists_only_the_errors_it_can_answer(
    operation_id: str, errors: set[int]
) -> None:
    assert _errors(operation_id) == errors


def test_every_error_has_the_one_error_body() -> None:
    for operation_id, operation in OPERATIONS.items():
        for code, response in operation["responses"].items():
            if code[0] not in "45" or operation_id == "readyz":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (operation_id, code)
    assert "HTTPValidationError" not in SPEC["components"]["schemas"]
    not_ready = OPERATIONS["readyz"]["responses"]["503"]["content"]["application/json"]
    assert not_ready["schema"] == {"$ref": "#/components/schemas/ReadinessOut"}


def test_two_endpoints_of_one_name_are_refused() -> None:
    class Route:
        include_in_schema = True

        def __init__(self, endpoint: Any) -> None:
            self.name, self.endpoint = "get_model", endpoint

    with pytest.raises(ValueError, match="two endpoints are named 'get_model'"):
        docs.operation_id(Route(lambda: None))


def test_the_docs_pages_name_no_other_host(tmp_path: Any) -> None:
    settings = Settings(admin_keys=[ADMIN], database_url=f"sqlite:///{tmp_path / 'r.db'}")
    client = TestClient(create_app(settings))  # no lifespan needed for the pages
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        assert re.findall(r"(?:src|href)=\"(https?:)?//", r.text) == [], page
        assert "fonts.googleapis" not in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = client.get(f"{docs.ASSETS}/{asset}")
        assert r.status_code == 200, asset
        assert len(r.content) > 100_000  # the real bundle, from the installed package
