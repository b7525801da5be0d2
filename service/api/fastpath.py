"""The hot path's own request parsing: one pydantic validation instead of one per parameter.

FastAPI resolves each declared parameter separately on every request; on the
recommendations route that costs more than the recommendation itself. Routes using this still
publish their parameters in OpenAPI (built from the same model) and still answer 422 naming the
parameter.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

Model = TypeVar("Model", bound=BaseModel)


def parse_request(model: type[Model], request: Request) -> Model:
    """Validate path and query parameters of ``request`` against ``model`` in one step."""
    data: dict[str, Any] = dict(request.path_params)
    query = request.query_params
    for name, field in model.model_fields.items():
        if name in data or name not in query:
            continue
        origin = getattr(field.annotation, "__origin__", None)
        data[name] = query.getlist(name) if origin is list else query[name]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = {n: "path" if n in request.path_params else "query" for n in data}
        errors = []
        for e in exc.errors(include_url=False):
            loc = tuple(e.get("loc", ()))
            first = str(loc[0]) if loc else ""
            errors.append({**e, "loc": (where.get(first, "query"), *loc)})
        raise RequestValidationError(errors) from None


def openapi_parameters(model: type[BaseModel], path: tuple[str, ...]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects for ``model``'s fields (``path`` ones are path parameters)."""
    schema = model.model_json_schema()
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = []
    for name, prop in properties.items():
        where = "path" if name in path else "query"
        entry: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": {k: v for k, v in prop.items() if k not in ("description", "title")},
        }
        if "description" in prop:
            entry["description"] = prop["description"]
        out.append(entry)
    return out


class PlainRoute(Route):
    """A Starlette route for an endpoint that takes only the Request (the hot path).

    Placed before its FastAPI twin, it answers the requests while the twin still documents the
    endpoint in OpenAPI; FastAPI's per-request dependency machinery is skipped (a third of the
    time of a recommendation). Exception handlers apply as for any route.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # the route template, for metrics and logs
        await super().handle(scope, receive, send)
