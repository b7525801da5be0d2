"""user segments: RFM, lifecycle stage, loyalty type (issue 12, item 1)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# copies, not imports: migrations are history and must not change when the code does
STAGES = "lifecycle_stage IN ('new', 'active', 'at_risk', 'lapsed', 'returning')"
TYPES = "loyalty_type IN ('not_loyal', 'habitual', 'mercenary', 'latent', 'committed')"


def upgrade() -> None:
    op.create_table(
        "user_segments",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("coupon_orders", sa.Integer(), nullable=False),
        sa.Column("first_order_at", UTCDateTime(), nullable=True),
        sa.Column("last_order_at", UTCDateTime(), nullable=True),
        sa.Column("monetary", sa.BigInteger(), nullable=True),  # ten-thousandths
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.Column("active_days", sa.Integer(), nullable=False),
        sa.Column("r_score", sa.Integer(), nullable=True),
        sa.Column("f_score", sa.Integer(), nullable=True),
        sa.Column("m_score", sa.Integer(), nullable=True),
        sa.Column("lifecycle_stage", sa.String(16), nullable=False),
        sa.Column("loyalty_type", sa.String(16), nullable=False),
        sa.Column("computed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_segments"),
        sa.CheckConstraint(STAGES, name=op.f("ck_user_segments_lifecycle_stage")),
        sa.CheckConstraint(TYPES, name=op.f("ck_user_segments_loyalty_type")),
    )
    op.create_index("ix_user_segments_lifecycle_stage", "user_segments", ["lifecycle_stage"])
    op.create_index("ix_user_segments_loyalty_type", "user_segments", ["loyalty_type"])
    op.create_table(
        "segment_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("as_of", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("typical_interval_days", sa.Float(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_segment_runs"),
    )


def downgrade() -> None:
    op.drop_table("segment_runs")
    op.drop_index("ix_user_segments_loyalty_type", table_name="user_segments")
    op.drop_index("ix_user_segments_lifecycle_stage", table_name="user_segments")
    op.drop_table("user_segments")
