"""items gain created_at: when the catalogue first saw each product (issue 14, item 4)

The ``new_arrivals`` source offers products added within ``RECOFFER_NEW_ARRIVALS_DAYS``; it
needs the moment each one arrived, which ``updated_at`` loses at the next update. Rows already
stored get their ``updated_at`` (the earliest moment known of them).

Events gain an index on (item_id, ts): each worker's light refresh reads the events of the
products its model does not know since the model's ``saw_until``, by item.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("created_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE items SET created_at = updated_at")
    with op.batch_alter_table("items") as batch:
        batch.alter_column("created_at", existing_type=UTCDateTime(), nullable=False)
        batch.create_index("ix_items_created_at", ["created_at"])
    op.create_index("ix_events_item_id_ts", "events", ["item_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_events_item_id_ts", table_name="events")
    with op.batch_alter_table("items") as batch:
        batch.drop_index("ix_items_created_at")
        batch.drop_column("created_at")
