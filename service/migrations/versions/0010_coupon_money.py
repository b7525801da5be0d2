"""fixed and percent discounts, minimum order, money budgets (issue 12, item 3)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # reserved in the migration chain; its item fills it in


def downgrade() -> None:
    pass
