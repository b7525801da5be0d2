"""campaign sweep jobs (issue 11, item 11)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# a copy, not an import: migrations are history and must not change when the code does
ACTIVE = "state IN ('queued', 'running')"
PURCHASE = "type = 'purchase'"


def upgrade() -> None:
    op.create_table(
        "sweep_jobs",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("evaluated", sa.Integer(), nullable=True),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_sweep_jobs"),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed')",
            name=op.f("ck_sweep_jobs_sweep_state"),
        ),
    )
    op.create_index(
        "uq_sweep_jobs_active",
        "sweep_jobs",
        ["campaign_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index("ix_sweep_jobs_campaign_id", "sweep_jobs", ["campaign_id", "requested_at"])
    op.create_index(
        "ix_events_purchases",
        "events",
        ["user_id", "ts"],
        sqlite_where=sa.text(PURCHASE),
        postgresql_where=sa.text(PURCHASE),
    )


def downgrade() -> None:
    op.drop_index("ix_events_purchases", table_name="events")
    op.drop_index("ix_sweep_jobs_campaign_id", table_name="sweep_jobs")
    op.drop_index("uq_sweep_jobs_active", table_name="sweep_jobs")
    op.drop_table("sweep_jobs")
