"""fixed and percent discounts, minimum order, money budgets (issue 12, item 3)

A coupon carries its terms from the moment it is issued: ``discount_kind`` (``percent``, the
only kind before this revision, or ``fixed``), the fixed amount ``discount_fixed``, the
``terms_currency`` that amount and the minimum order are in, and ``min_order_amount``.
Coupons issued before keep what they meant: a percent off, no minimum, any currency.

``campaign_spend`` holds the discount actually given per campaign, period (``total`` or a UTC
day) and currency, which a money budget is checked against. It starts empty: discounts given
before this revision are not counted against a money budget set afterwards (the coupons'
trail still has them, and the stats report them as the discount cost).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("coupons") as batch:
        batch.add_column(
            sa.Column("discount_kind", sa.String(8), nullable=False, server_default="percent")
        )
        batch.add_column(sa.Column("discount_fixed", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("terms_currency", sa.String(3), nullable=True))
        batch.add_column(sa.Column("min_order_amount", sa.BigInteger(), nullable=True))
        batch.create_check_constraint("discount_kind", "discount_kind IN ('percent', 'fixed')")
    op.create_table(
        "campaign_spend",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "period", "currency", name="pk_campaign_spend"),
    )


def downgrade() -> None:
    op.drop_table("campaign_spend")
    with op.batch_alter_table("coupons") as batch:
        batch.drop_constraint(op.f("ck_coupons_discount_kind"), type_="check")
        batch.drop_column("min_order_amount")
        batch.drop_column("terms_currency")
        batch.drop_column("discount_fixed")
        batch.drop_column("discount_kind")
