"""Pure ASGI middleware: request id, body-size limit, latency metric, JSON access log; and
the client's address as far as trusted proxies vouch for it."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

access_log = logging.getLogger("recoffer.access")


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException so the framework answers 413 with it."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


class RequestContext:
    """Wraps the app; cheap enough for the hot path (no BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body: int, log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.log = log
        self._children: dict[tuple[str, str, int], Any] = {}  # labels() lookups, cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(
                send, 413, b'{"error":"too_large","detail":"request body too large"}', request_id
            )
            self._observe(scope, 413, started, request_id)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            status = 413
            await _reply(
                send, 413, b'{"error":"too_large","detail":"request body too large"}', request_id
            )
        finally:
            self._observe(scope, status, started, request_id)

    def _observe(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        key = (scope["method"], template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.latency.labels(key[0], key[1], str(status))
        child.observe(elapsed)
        if self.log:
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded[:64]
    return None


async def _reply(send: Send, status: int, body: bytes, request_id: str) -> None:
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_address(scope: Scope, trusted: Sequence[IPv4Network | IPv6Network]) -> str:
    """The address of whoever sent the request, as far as it can be known.

    The TCP peer, unless the peer is one of the ``trusted`` proxies: then X-Forwarded-For is
    read from the right (each proxy appends the address it saw) and the first hop that is
    not a trusted proxy is the client. An untrusted peer's X-Forwarded-For is ignored, since
    anyone can write one; loopback is trusted only when listed.
    """
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    values = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-forwarded-for"]
    hops = [hop.strip() for hop in ",".join(values).split(",") if hop.strip()]
    address = peer
    for hop in reversed(hops):
        if not _within(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return address  # not an address: the last hop a trusted proxy vouched for
        address = hop
    return address


def _within(address: str, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
