"""offer decisions, coupons and campaign budgets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "offer_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("attribution_id", sa.String(32), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=False),
        sa.Column("convert_until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_offer_decisions"),
        sa.CheckConstraint(
            "decision IN ('issued', 'holdout', 'budget_exhausted')",
            name=op.f("ck_offer_decisions_decision_kind"),
        ),
    )
    op.create_index(
        "uq_offer_decisions_campaign_id",
        "offer_decisions",
        ["campaign_id", "user_id"],
        unique=True,
    )
    op.create_index(
        "uq_offer_decisions_attribution_id", "offer_decisions", ["attribution_id"], unique=True
    )
    op.create_index("ix_offer_decisions_user_id", "offer_decisions", ["user_id"])
    op.create_table(
        "coupons",
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("attribution_id", sa.String(32), nullable=False),
        sa.Column("discount_percent", sa.Float(), nullable=False),
        sa.Column("item_ids", sa.JSON(), nullable=True),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("redeemed_at", UTCDateTime(), nullable=True),
        sa.Column("order_id", sa.String(128), nullable=True),
        sa.Column("order_amount", sa.Float(), nullable=True),
        sa.Column("discount_amount", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("code", name="pk_coupons"),
    )
    op.create_index("ix_coupons_user_id", "coupons", ["user_id", "expires_at"])
    op.create_index("ix_coupons_campaign_id", "coupons", ["campaign_id"])
    op.create_index("ix_coupons_attribution_id", "coupons", ["attribution_id"])
    op.create_table(
        "campaign_budgets",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("issued", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "period", name="pk_campaign_budgets"),
    )


def downgrade() -> None:
    op.drop_table("campaign_budgets")
    op.drop_index("ix_coupons_attribution_id", table_name="coupons")
    op.drop_index("ix_coupons_campaign_id", table_name="coupons")
    op.drop_index("ix_coupons_user_id", table_name="coupons")
    op.drop_table("coupons")
    op.drop_index("ix_offer_decisions_user_id", table_name="offer_decisions")
    op.drop_index("uq_offer_decisions_attribution_id", table_name="offer_decisions")
    op.drop_index("uq_offer_decisions_campaign_id", table_name="offer_decisions")
    op.drop_table("offer_decisions")
