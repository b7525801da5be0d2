"""An offer engine with webhooks on, a scripted receiver, a sender driven step by step."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from benchmarks.harness import ManualClock as Clock
from service.db import migrate
from service.delivery import outbox
from service.delivery.repository import DeliveryRepository
from service.delivery.sender import Sender, SenderConfig
from service.offers.decisions import OfferEngine
from service.tables import webhook_events

from .receiver import SECRET, Receiver
from .shop import NOW, engine_for

LEAD = timedelta(hours=6)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def offers(database_url: str, clock: Clock) -> Iterator[OfferEngine]:
    """The built-in campaign (no holdout) on a migrated database, webhooks on, ``clock``."""
    engine = engine_for(database_url, clock)
    migrate(engine.repository.engine)
    outbox.enable(engine.repository.base, outbox.Outbox(LEAD))
    yield engine
    outbox.disable(engine.repository.base)
    engine.repository.engine.dispose()


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    r = Receiver(clock)
    yield r
    r.stop()


def make_sender(offers: OfferEngine, url: str, clock: Clock, **config: Any) -> Sender:
    options: dict[str, Any] = {"url": url, "secret": SECRET, "timeout_seconds": 5.0}
    return Sender(
        DeliveryRepository(offers.repository.base),
        SenderConfig(**{**options, **config}),
        clock,
        draw=lambda: 1.0,  # the jitter at its top: each wait is the ceiling exactly
    )


def step(sender: Sender) -> int:
    """One ``send_due`` of ``sender`` (on a loop of its own)."""
    return asyncio.run(_once(sender))


async def _once(sender: Sender) -> int:
    try:
        return await sender.send_due()
    finally:
        await sender.aclose()


def rows(offers: OfferEngine) -> list[dict[str, Any]]:
    with offers.repository.engine.connect() as conn:
        found = conn.execute(select(webhook_events).order_by(webhook_events.c.id))
        return [dict(r._mapping) for r in found]
