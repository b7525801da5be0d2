"""purchase quantity, price, currency and exact money; catalogue attributes (issue 11, item 10)

Events gain a purchase's ``quantity``, unit ``price`` and ``currency``. The catalogue's price
becomes exact (integer ten-thousandths, ``service.money.AmountColumn``) with its currency, and
items gain ``attributes`` (JSON) and a ``status`` (active, hidden, deleted: a deleted item stays
as a tombstone row so every worker's catalogue tail sees the deletion).

A float price stored before this revision is rounded to four decimals; its currency is unknown
(null) until the shop sends the item again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UNITS = 10_000  # service.money.SCALE = 4 decimals


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("quantity", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("price", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("currency", sa.String(3), nullable=True))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("price_units", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("currency", sa.String(3), nullable=True))
        batch.add_column(sa.Column("attributes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(8), nullable=False, server_default="active"))
    op.execute(f"UPDATE items SET price_units = CAST(ROUND(price * {UNITS}) AS BIGINT)")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("price")
        batch.alter_column("price_units", new_column_name="price", existing_type=sa.BigInteger())
        batch.create_check_constraint("item_status", "status IN ('active', 'hidden', 'deleted')")


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_constraint(op.f("ck_items_item_status"), type_="check")
        batch.add_column(sa.Column("price_float", sa.Float(), nullable=True))
    op.execute(f"UPDATE items SET price_float = price / {float(UNITS)}")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("price")
        batch.alter_column("price_float", new_column_name="price", existing_type=sa.Float())
        batch.drop_column("status")
        batch.drop_column("attributes")
        batch.drop_column("currency")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("currency")
        batch.drop_column("price")
        batch.drop_column("quantity")
