"""campaigns managed at run time, with their change log (issue 12, item 5)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved in the migration chain; its item fills it in


def downgrade() -> None:
    pass
