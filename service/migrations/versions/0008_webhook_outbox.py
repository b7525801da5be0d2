"""webhook outbox and delivery log (issue 12, item 6)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# copies, not imports: migrations are history and must not change when the code does
TYPES = "type IN ('coupon.issued', 'coupon.redeemed', 'coupon.expiring')"
STATES = "state IN ('pending', 'delivered', 'dead')"


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        _id(),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("event_key", sa.String(96), nullable=False),
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("coupon_ref", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.CheckConstraint(TYPES, name=op.f("ck_webhook_events_webhook_event_type")),
        sa.CheckConstraint(STATES, name=op.f("ck_webhook_events_webhook_state")),
    )
    op.create_index("uq_webhook_events_event_id", "webhook_events", ["event_id"], unique=True)
    op.create_index("uq_webhook_events_event_key", "webhook_events", ["event_key"], unique=True)
    op.create_index("ix_webhook_events_state", "webhook_events", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_events_coupon_ref", "webhook_events", ["coupon_ref", "id"])
    op.create_index("ix_webhook_events_user_id", "webhook_events", ["user_id"])
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        _id(),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(300), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id", "id"])
    op.create_index("ix_webhook_deliveries_at", "webhook_deliveries", ["at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_event_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    for name in (
        "ix_webhook_events_created_at",
        "ix_webhook_events_user_id",
        "ix_webhook_events_coupon_ref",
        "ix_webhook_events_state",
        "uq_webhook_events_event_key",
        "uq_webhook_events_event_id",
    ):
        op.drop_index(name, table_name="webhook_events")
    op.drop_table("webhook_events")
