"""A/B tests of recommenders: one running experiment at a time (issue 14, item 3)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

RUNNING = "status = 'running'"


def upgrade() -> None:
    op.create_table(
        "rec_experiments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("control_version", sa.String(64), nullable=False),
        sa.Column("control_recipe", sa.String(64), nullable=True),
        sa.Column("candidate_version", sa.String(64), nullable=False),
        sa.Column("candidate_recipe", sa.String(64), nullable=True),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'stopped', 'promoted')", name="ck_rec_experiments_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rec_experiments"),
    )
    op.create_index(
        "ux_rec_experiments_running",
        "rec_experiments",
        ["status"],
        unique=True,
        sqlite_where=sa.text(RUNNING),
        postgresql_where=sa.text(RUNNING),
    )


def downgrade() -> None:
    op.drop_index("ux_rec_experiments_running", table_name="rec_experiments")
    op.drop_table("rec_experiments")
