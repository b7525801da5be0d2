"""One place that maps exceptions to statuses and ``{"error", "detail"}`` bodies."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as DatabaseDataError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import ErrorOut
from service.db import is_outage
from service.errors import InvalidInput, RecofferError, kind_of, public_detail

log = logging.getLogger(__name__)


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# what any route may answer besides its success, as the OpenAPI document shows it
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Malformed request."),
    401: _documented("No API key, or an unknown one."),
    403: _documented("The key's role may not call this."),
    404: _documented("No such user, item, campaign or coupon."),
    409: _documented("Coupon already redeemed by another order."),
    410: _documented("Coupon expired, or the user id was erased."),
    413: _documented("Body too large, or too many events."),
    422: _documented("Invalid input: `detail` lists each field and what is wrong with it."),
    429: _documented("Too many failed coupon lookups: retry after `Retry-After` seconds."),
    503: _documented("Model or database unavailable: retry after `Retry-After` seconds."),
}


def error(
    status: int, code: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=jsonable_encoder({"error": code, "detail": detail}),
        headers=headers,
    )


# where a value came from, and the tags of the events body's two shapes: not field names
_NOT_FIELDS = ("body", "query", "path", "header", "one", "batch")


def _field(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"
    parts = [str(p) for p in error.get("loc", ()) if p not in _NOT_FIELDS]
    return ".".join(parts) or "body"


def add_exception_handlers(app: FastAPI) -> None:
    """Register the mapping; the service never answers 500 for bad input."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"field": _field(e), "message": e.get("msg", "invalid")} for e in exc.errors()]
        return error(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            429: "too_many_requests",
        }
        return error(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            exc.detail,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RecofferError)
    async def _domain(_: Request, exc: RecofferError) -> JSONResponse:
        kind = kind_of(exc)
        if kind.status >= 500 and kind.status != 503:  # ours, not the client's: log, say little
            log.error("domain_error", exc_info=exc)
            return error(500, "internal_error", "unexpected error; it has been logged")
        headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        detail: Any = public_detail(exc)
        if isinstance(exc, InvalidInput):  # the shape of every other 422: one entry per field
            detail = [{"field": exc.field, "message": exc.message}]
        return error(kind.status, kind.code, detail, headers=headers)

    @app.exception_handler(SQLAlchemyError)
    async def _database(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, DatabaseDataError):  # a value the database refuses: client input
            return error(422, "invalid_request", "a value was refused by the database")
        if is_outage(exc):
            log.warning("database_unavailable", extra={"error": str(exc).splitlines()[0]})
            return error(
                503,
                "database_unavailable",
                "the database is unavailable or busy; retry shortly",
                headers={"Retry-After": "5"},
            )
        log.error("database_error", exc_info=exc)
        return error(500, "internal_error", "unexpected database error; it has been logged")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", exc_info=exc)
        return error(500, "internal_error", "unexpected error; it has been logged")
