"""campaigns managed at run time, with their change log (issue 12, item 5)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

* ``campaign_definitions``: each campaign's current definition, status and version;
* ``campaign_changes``: one row per change (create, update, pause, resume, archive) with the
  whole definition after it and who made it; append-only (triggers refuse UPDATE and DELETE),
  one row per campaign and version (a unique index);
* ``offer_decisions.campaign_version``: the definition version each decision was made with
  (NULL for decisions made before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# copies, not imports: migrations are history and must not change when the code does
STATUSES = "status IN ('active', 'paused', 'archived')"
SOURCES = "source IN ('file', 'default', 'api')"
ACTIONS = "action IN ('create', 'update', 'pause', 'resume', 'archive')"
_REFUSAL = "campaign_changes is append-only"
_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER campaign_changes_no_delete BEFORE DELETE ON campaign_changes
    BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
    f"""CREATE TRIGGER campaign_changes_no_update BEFORE UPDATE ON campaign_changes
    BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
)
_POSTGRES_TRIGGERS = (
    f"""CREATE FUNCTION campaign_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_REFUSAL}' USING ERRCODE = 'integrity_constraint_violation';
    END $$""",
    """CREATE TRIGGER campaign_changes_append_only BEFORE UPDATE OR DELETE ON campaign_changes
    FOR EACH ROW EXECUTE FUNCTION campaign_changes_append_only()""",
)


def upgrade() -> None:
    op.create_table(
        "campaign_definitions",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_campaign_definitions"),
        sa.CheckConstraint(STATUSES, name=op.f("ck_campaign_definitions_campaign_status")),
        sa.CheckConstraint(SOURCES, name=op.f("ck_campaign_definitions_campaign_source")),
    )
    op.create_table(
        "campaign_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_changes"),
        sa.CheckConstraint(ACTIONS, name=op.f("ck_campaign_changes_campaign_action")),
    )
    op.create_index(
        "uq_campaign_changes_campaign_id",
        "campaign_changes",
        ["campaign_id", "version"],
        unique=True,
    )
    triggers = _POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else None
    for statement in triggers or _SQLITE_TRIGGERS:
        op.execute(statement)
    with op.batch_alter_table("offer_decisions") as batch:
        batch.add_column(sa.Column("campaign_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("offer_decisions") as batch:
        batch.drop_column("campaign_version")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER campaign_changes_append_only ON campaign_changes")
        op.execute("DROP FUNCTION campaign_changes_append_only()")
    else:
        op.execute("DROP TRIGGER campaign_changes_no_update")
        op.execute("DROP TRIGGER campaign_changes_no_delete")
    op.drop_index("uq_campaign_changes_campaign_id", table_name="campaign_changes")
    op.drop_table("campaign_changes")
    op.drop_table("campaign_definitions")
