"""A real webhook receiver for the tests: an HTTP server in a thread that checks every
signature, records what it got in order, and answers what the test scripts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.delivery.events import EVENT_ID_HEADER, SIGNATURE_HEADER, verify

SECRET = "shared-secret-of-the-shop-0123"


@dataclass
class Received:
    event_id: str
    type: str
    data: dict[str, Any]
    signed: bool
    header_id: str | None


@dataclass
class Receiver:
    """Answers ``answer(body)`` (default 200) and keeps every request it was sent."""

    clock: Callable[[], datetime]
    secret: str = SECRET
    answer: Callable[[dict[str, Any]], int] = lambda _: 200
    got: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                doc = json.loads(raw)
                signed = verify(
                    receiver.secret,
                    self.headers.get(SIGNATURE_HEADER, ""),
                    raw,
                    now=receiver.clock().timestamp(),
                )
                with receiver._lock:
                    receiver.got.append(
                        Received(
                            doc["id"],
                            doc["type"],
                            doc["data"],
                            signed,
                            self.headers.get(EVENT_ID_HEADER),
                        )
                    )
                status = receiver.answer(doc) if signed else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ids(self, kind: str | None = None) -> list[str]:
        return [r.event_id for r in self.got if kind is None or r.type == kind]
