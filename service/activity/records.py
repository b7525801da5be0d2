"""What the shop sends and what is stored of it: events, users, items, and their overlays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# how much each event type weighs when a session is folded into the model (a setting's default)
DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 6.0}


@dataclass(frozen=True)
class Activity:
    """One behaviour event the model did not see (after training, or a new user's)."""

    item_id: str
    type: str
    ts: datetime


@dataclass(frozen=True)
class CatalogueEntry:
    """What the shop said about an item after training; overrides the artifact's metadata."""

    category: str | None = None
    in_stock: bool | None = None
    name: str | None = None


@dataclass(frozen=True)
class NewEvent:
    user_id: str
    type: str
    ts: datetime
    item_id: str | None = None
    order_id: str | None = None
    client_event_id: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    id: int
    user_id: str
    item_id: str | None
    type: str
    ts: datetime


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    stored: list[StoredEvent]


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    signed_up_at: datetime | None
    first_seen_at: datetime
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    name: str | None
    category: str | None
    price: float | None
    in_stock: bool | None
    updated_at: datetime
