"""the segment recorded with each decision, and the not_targeted decision (issue 12, item 4)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CHECK = "ck_offer_decisions_decision_kind"
# the decision kinds as of this revision (service.offers.kinds may change; history may not)
KINDS = "decision IN ('issued', 'holdout', 'not_targeted', 'budget_exhausted')"
BEFORE = "decision IN ('issued', 'holdout', 'budget_exhausted')"


def upgrade() -> None:
    # SQLite cannot change a check constraint in place: batch mode copies the table
    with op.batch_alter_table("offer_decisions") as batch:
        batch.add_column(sa.Column("lifecycle_stage", sa.String(16), nullable=True))
        batch.add_column(sa.Column("loyalty_type", sa.String(16), nullable=True))
        batch.drop_constraint(op.f(CHECK), type_="check")
        batch.create_check_constraint(op.f(CHECK), KINDS)


def downgrade() -> None:
    op.execute("DELETE FROM offer_decisions WHERE decision = 'not_targeted'")
    with op.batch_alter_table("offer_decisions") as batch:
        batch.drop_constraint(op.f(CHECK), type_="check")
        batch.create_check_constraint(op.f(CHECK), BEFORE)
        batch.drop_column("loyalty_type")
        batch.drop_column("lifecycle_stage")
