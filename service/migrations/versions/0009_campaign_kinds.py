"""recurring campaign kinds: a decision per occurrence (issue 12, item 2)

A recurring campaign (win-back, anniversary, birthday, frequent buyer, abandoned cart) decides
once per user **per occurrence**: the decision gets an ``occurrence`` key ('' for a campaign
decided once per user, as every decision before this one was), and the unique index that
carries "exactly once" becomes (campaign, user, occurrence).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# a copy, not an import: migrations are history and must not change when the code does
CART = "type = 'add_to_cart'"


def upgrade() -> None:
    # every existing decision is its campaign's one decision for the user: occurrence ''
    with op.batch_alter_table("offer_decisions") as batch:
        batch.add_column(sa.Column("occurrence", sa.String(64), nullable=False, server_default=""))
    op.create_index(
        "uq_offer_decisions_occurrence",
        "offer_decisions",
        ["campaign_id", "user_id", "occurrence"],
        unique=True,
    )
    op.drop_index("uq_offer_decisions_campaign_id", table_name="offer_decisions")
    # an abandoned-cart sweep reads the add-to-carts of the last hours or days
    op.create_index(
        "ix_events_carts",
        "events",
        ["ts"],
        sqlite_where=sa.text(CART),
        postgresql_where=sa.text(CART),
    )


def downgrade() -> None:
    op.drop_index("ix_events_carts", table_name="events")
    # one decision per user and campaign again: the latest occurrence's stays
    op.execute(
        "DELETE FROM offer_decisions WHERE id NOT IN "
        "(SELECT max(id) FROM offer_decisions GROUP BY campaign_id, user_id)"
    )
    op.create_index(
        "uq_offer_decisions_campaign_id",
        "offer_decisions",
        ["campaign_id", "user_id"],
        unique=True,
    )
    op.drop_index("uq_offer_decisions_occurrence", table_name="offer_decisions")
    with op.batch_alter_table("offer_decisions") as batch:
        batch.drop_column("occurrence")
