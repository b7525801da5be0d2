"""What the shop sends and what is stored of it: events, users, items, and their overlays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

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
    hidden: bool = False  # hidden or deleted: never recommended
    # issue 14: what a product the model does not know is placed by, and when it arrived
    attributes: Mapping[str, Any] | None = None
    created_at: datetime | None = None

    @property
    def servable(self) -> bool:
        """Whether it may be in a list at all: not hidden, deleted nor out of stock."""
        return not self.hidden and self.in_stock is not False


@dataclass(frozen=True)
class NewEvent:
    user_id: str
    type: str
    ts: datetime
    item_id: str | None = None
    order_id: str | None = None
    client_event_id: str | None = None
    quantity: int | None = None  # a purchase's units (stored as 1 when not sent)
    price: Decimal | None = None  # a purchase's unit price, with its currency
    currency: str | None = None


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


ItemStatus = Literal["active", "hidden", "deleted"]


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    name: str | None
    category: str | None
    in_stock: bool | None
    updated_at: datetime
    price: Decimal | None = None
    currency: str | None = None
    attributes: dict[str, Any] | None = None
    status: ItemStatus = "active"
    created_at: datetime | None = None  # first seen by the catalogue (migration 0017)

    def entry(self) -> CatalogueEntry:
        """What recommendations need of this item: its filters, and whether it may be shown."""
        return CatalogueEntry(
            category=self.category,
            in_stock=self.in_stock,
            name=self.name,
            hidden=self.status != "active",
            attributes=self.attributes,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class ItemChange:
    """One operation of a catalogue batch; fields left None keep their stored value.

    ``op``: ``upsert`` (create or update; brings a deleted item back), ``hide`` (kept, never
    recommended), ``show`` (undo hide) or ``delete`` (fields cleared, a tombstone kept).
    """

    op: Literal["upsert", "hide", "show", "delete"]
    item_id: str
    name: str | None = None
    category: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    in_stock: bool | None = None
    attributes: dict[str, Any] | None = None


ItemOutcome = Literal["created", "updated", "hidden", "shown", "deleted", "not_found"]


@dataclass(frozen=True)
class ItemResult:
    """What one operation of a batch did (``not_found``: hide, show or delete of no item)."""

    item_id: str
    op: str
    result: ItemOutcome
