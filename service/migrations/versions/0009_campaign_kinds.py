"""recurring campaign kinds: a decision per occurrence (issue 12, item 2)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved in the migration chain; its item fills it in


def downgrade() -> None:
    pass
