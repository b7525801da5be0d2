"""predicted customer lifetime value per customer, written by `recoffer clv --write` (issue 13,
item 1)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_value",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("expected_purchases", sa.Float(), nullable=False),
        sa.Column("p_alive", sa.Float(), nullable=False),
        sa.Column("expected_order_value", sa.BigInteger(), nullable=False),  # ten-thousandths
        sa.Column("predicted_value", sa.BigInteger(), nullable=False),  # ten-thousandths
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("as_of", UTCDateTime(), nullable=False),
        sa.Column("fitted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_customer_value"),
    )
    op.create_index("ix_customer_value_predicted_value", "customer_value", ["predicted_value"])


def downgrade() -> None:
    op.drop_index("ix_customer_value_predicted_value", table_name="customer_value")
    op.drop_table("customer_value")
