"""The sender: a background loop of each worker that claims due events, POSTs them signed,
and writes what happened.

At least once: an event is marked delivered only after a 2xx answer, so a crash between the
two sends it again (the receiver deduplicates by the event id, also sent as a header). A
failure waits ``backoff`` before the next try: doubled each time up to a cap, with jitter so
that many senders and events do not retry in lockstep after an outage; after
``max_attempts`` tries the event is dead until replayed. Never logs a payload (it holds the
full code): log lines carry the event id, its type and the answer only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from starlette.concurrency import run_in_threadpool

from service.delivery.events import EVENT_ID_HEADER, SIGNATURE_HEADER, body, sign
from service.delivery.repository import Attempt, DeliveryRepository, OutboxEvent
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
MIN_LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class SenderConfig:
    url: str
    secret: str
    max_attempts: int = 20
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    timeout_seconds: float = 10.0
    batch: int = 50
    poll_seconds: float = 1.0
    expiring_lead: timedelta = timedelta(hours=6)
    scan_seconds: float = 60.0
    retention: timedelta | None = timedelta(days=30)  # None: delivered events kept for ever
    prune_seconds: float = 3600.0

    @property
    def lease(self) -> timedelta:
        """How long a claim holds: well beyond one batch of POSTs, each within its timeout."""
        return timedelta(seconds=max(MIN_LEASE_SECONDS, 3 * self.timeout_seconds))

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderConfig | None:
        """The sender's configuration; None when webhooks are off (no URL)."""
        if not settings.webhook_url or settings.webhook_secret is None:
            return None
        return cls(
            url=settings.webhook_url,
            secret=settings.webhook_secret.get_secret_value(),
            max_attempts=settings.webhook_max_attempts,
            backoff_seconds=settings.webhook_backoff_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            batch=settings.webhook_batch,
            poll_seconds=settings.webhook_poll_seconds,
            expiring_lead=timedelta(hours=settings.webhook_expiring_lead_hours),
            scan_seconds=settings.webhook_expiring_scan_seconds,
            retention=(
                timedelta(days=settings.webhook_retention_days)
                if settings.webhook_retention_days
                else None
            ),
        )


def backoff(attempt: int, first: float, cap: float, draw: Callable[[], float]) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2, ...).

    ``first * 2^(attempt-1)``, at most ``cap``, then "equal jitter": half of it fixed, half
    drawn uniformly (``draw`` in [0, 1)), so the wait still grows but senders spread out.
    """
    ceiling = min(cap, first * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2 + draw() * ceiling / 2


def _error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Sender:
    """Delivers the outbox of one database from one worker."""

    def __init__(
        self,
        repository: DeliveryRepository,
        config: SenderConfig,
        clock: Callable[[], datetime],
        *,
        metrics: Metrics | None = None,
        draw: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str | None = None,
    ) -> None:
        self.repository = repository
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.draw = draw
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"[:64]
        self.transport = transport
        self._client: httpx.AsyncClient | None = None  # made on the loop that uses it
        self._scanned_at: datetime | None = None
        self._pruned_at: datetime | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout_seconds,
                transport=self.transport,
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections (a later send opens new ones)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send_due(self) -> int:
        """Claim one batch of due events, send them side by side, record; how many were sent.

        The batch holds at most one event per coupon, so sending it at once keeps the order.
        """
        c = self.config
        now = self.clock()
        events = await run_in_threadpool(self.repository.claim, self.name, now, c.lease, c.batch)
        if not events:
            return 0
        attempts = await asyncio.gather(*(self._send(e) for e in events))
        outcomes = await run_in_threadpool(
            self.repository.record, self.name, list(attempts), c.max_attempts
        )
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            if self.metrics is not None and outcome != "lost":
                self.metrics.webhook_deliveries.labels(outcome).inc()
            if outcome != "delivered":
                log.warning(
                    "webhook_not_delivered",
                    extra={
                        "event_id": attempt.event.event_id,
                        "type": attempt.event.type,
                        "attempt": attempt.event.attempts + 1,
                        "status": attempt.status_code,
                        "error": attempt.error,
                        "outcome": outcome,
                    },
                )
        return len(events)

    async def _send(self, event: OutboxEvent) -> Attempt:
        payload = body(event.event_id, event.type, event.created_at, event.payload)
        sent_at = self.clock()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.secret, int(sent_at.timestamp()), payload),
            EVENT_ID_HEADER: event.event_id,
            "User-Agent": "recoffer-webhooks",
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            answer = await self._http().post(self.config.url, content=payload, headers=headers)
            status = answer.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = _error(exc)
        took = (time.perf_counter() - started) * 1000
        delivered = error is None
        retry_at = None
        if not delivered:
            wait = backoff(
                event.attempts + 1,
                self.config.backoff_seconds,
                self.config.backoff_max_seconds,
                self.draw,
            )
            retry_at = self.clock() + timedelta(seconds=wait)
        return Attempt(event, sent_at, took, status, error, delivered, retry_at)

    async def scan_if_due(self) -> int:
        """The coupon.expiring scan, at most every ``scan_seconds``; events written."""
        now = self.clock()
        every = timedelta(seconds=self.config.scan_seconds)
        if self._scanned_at is not None and now - self._scanned_at < every:
            return 0
        self._scanned_at = now
        return await run_in_threadpool(
            self.repository.scan_expiring, now, self.config.expiring_lead
        )

    async def prune_if_due(self) -> int:
        """Delete what is past the retention, at most every ``prune_seconds``; rows deleted.

        Every worker may run it: the deletes are idempotent, in small batches.
        """
        if self.config.retention is None:
            return 0
        now = self.clock()
        every = timedelta(seconds=self.config.prune_seconds)
        if self._pruned_at is not None and now - self._pruned_at < every:
            return 0
        self._pruned_at = now
        return await run_in_threadpool(self.repository.prune, now - self.config.retention)

    async def refresh_backlog(self) -> dict[str, int]:
        backlog, oldest = await run_in_threadpool(self.repository.backlog_and_oldest)
        if self.metrics is not None:
            for state, count in backlog.items():
                self.metrics.webhook_backlog.labels(state).set(count)
            age = 0.0 if oldest is None else (self.clock() - oldest).total_seconds()
            self.metrics.webhook_oldest_pending.set(max(0.0, age))
        return backlog

    async def run(self) -> None:
        """Forever: scan when due, send while there is work, else wait ``poll_seconds``."""
        failing = False
        while True:
            sent = 0
            try:
                await self.scan_if_due()
                await self.prune_if_due()
                sent = await self.send_due()
                await self.refresh_backlog()
                failing = False
            except Exception as exc:  # the database may be away: try again after a pause
                if not failing:  # once per outage, not once per poll
                    log.warning("webhook_sender_failed", extra={"error": _error(exc)})
                failing = True
            if sent < self.config.batch:
                await asyncio.sleep(self.config.poll_seconds)
