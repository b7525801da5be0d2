"""the segment recorded with each decision (issue 12, item 4)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved in the migration chain; its item fills it in


def downgrade() -> None:
    pass
