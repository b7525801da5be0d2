"""user segments: RFM, lifecycle stage, loyalty type (issue 12, item 1)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved in the migration chain; its item fills it in


def downgrade() -> None:
    pass
