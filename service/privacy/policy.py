"""What erasing a user does to each table that holds a user id: one declaration per table.

A table added later with a ``user_id`` column must add its row here; a test walks the
metadata and fails for a table without one, so no table can be forgotten.

Outside the database: with ``RECOFFER_REDIS_URL`` the user's recent events are also a Redis
list (``service.activity.sessions``); ``Privacy.erase`` deletes it (``redis_session`` in the
receipt) and the export shows it as ``recent_activity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Column, MetaData

Action = Literal["delete", "unlink"]


@dataclass(frozen=True)
class Policy:
    """``delete``: the user's rows go; ``unlink``: the rows stay with the column set to NULL
    (what accounting needs is kept without the person)."""

    action: Action
    column: str = "user_id"
    why: str = ""


POLICIES: dict[str, Policy] = {
    "users": Policy("delete", why="the user row"),
    "events": Policy("delete", why="behaviour: views, carts, purchases, sign-up"),
    "offer_decisions": Policy("delete", why="who was offered what, holdout included"),
    "coupons": Policy(
        "unlink", why="code, campaign, discount, dates, order and amounts stay for accounting"
    ),
    "coupon_ledger": Policy(
        "unlink", why="the append-only trail of redemptions and releases stays for accounting"
    ),
    "user_segments": Policy("delete", why="RFM figures, lifecycle stage and loyalty type"),
    "customer_value": Policy("delete", why="predicted lifetime value (recoffer clv --write)"),
    "webhook_events": Policy(
        "delete",
        why="webhook payloads name the user (and hold the code): delivered or not, they go, "
        "and nothing more is sent about the user; the delivery log keeps no personal data",
    ),
    # issue 14: what lists were shown to the user, clicked, and credited with carts and
    # purchases; the online figures lose the user's rows (as the events go too)
    "rec_impressions": Policy("delete", why="the recommendation lists shown to the user"),
    "rec_clicks": Policy("delete", why="recommended items the user clicked"),
    "rec_attributions": Policy(
        "delete", why="the user's carts and purchases credited to a recommendation list"
    ),
}


def user_columns(metadata: MetaData) -> dict[str, list[Column[object]]]:
    """Every table's columns named like a user id (``user_id``, ``..._user_id``)."""
    found: dict[str, list[Column[object]]] = {}
    for name, table in metadata.tables.items():
        columns = [c for c in table.columns if c.name == "user_id" or c.name.endswith("_user_id")]
        if columns:
            found[name] = columns
    return found
