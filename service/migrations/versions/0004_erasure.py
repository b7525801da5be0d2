"""erased users' tombstones; coupons keep no user id after erasure (issue 11, item 2)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
NO_USER = ""  # an erased coupon's user id below 0004, where the column is NOT NULL


def upgrade() -> None:
    # an erased user's coupons stay for accounting, without the person
    with op.batch_alter_table("coupons") as batch:
        batch.alter_column("user_id", existing_type=sa.String(128), nullable=True)
    op.execute(f"UPDATE coupons SET user_id = NULL WHERE user_id = '{NO_USER}'")  # a re-upgrade
    op.create_table(
        "erased_users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erased_users"),
    )
    op.create_index("uq_erased_users_user_hash", "erased_users", ["user_hash"], unique=True)
    keys = op.create_table(
        "erasure_keys",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_erasure_keys"),
    )
    # one random key per installation: every worker, replica and the trainer hash alike
    op.bulk_insert(keys, [{"name": "tombstone", "secret": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("erasure_keys")
    op.drop_index("uq_erased_users_user_hash", table_name="erased_users")
    op.drop_table("erased_users")
    # coupons unlinked by an erasure stay for accounting, under an id the API never accepts
    op.execute(f"UPDATE coupons SET user_id = '{NO_USER}' WHERE user_id IS NULL")
    with op.batch_alter_table("coupons") as batch:
        batch.alter_column("user_id", existing_type=sa.String(128), nullable=False)
