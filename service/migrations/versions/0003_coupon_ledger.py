"""coupon redemption and release audit trail (issue 11, item 3)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

* ``coupon_ledger``: one row per redemption and per release, append-only (triggers refuse
  DELETE, and any UPDATE but erasure's ``user_id = NULL``);
* ``coupons``: the float money columns become exact integer ten-thousandths
  (``service.money.AmountColumn``), plus the standing redemption's ``currency`` and the
  number of ``releases`` so far (the bound on releases is a guard in the release's WHERE);
* the redemptions standing at upgrade enter the trail as its first rows (actor
  ``migration-0003``; their currency was never recorded: NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# every column but user_id: erasure may set user_id to NULL and change nothing else
_FIXED = (
    "id",
    "code",
    "campaign_id",
    "action",
    "redemption",
    "order_id",
    "order_amount",
    "discount_amount",
    "currency",
    "actor",
    "at",
)
_REFUSAL = "coupon_ledger is append-only (only user_id may be set to NULL)"

_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER coupon_ledger_no_delete BEFORE DELETE ON coupon_ledger
    BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
    f"""CREATE TRIGGER coupon_ledger_no_update BEFORE UPDATE ON coupon_ledger
    WHEN NEW.user_id IS NOT NULL OR {" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _FIXED)}
    BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
)
_POSTGRES_TRIGGERS = (
    f"""CREATE FUNCTION coupon_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.user_id IS NULL
           AND ROW({", ".join(f"NEW.{c}" for c in _FIXED)})
               IS NOT DISTINCT FROM ROW({", ".join(f"OLD.{c}" for c in _FIXED)}) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION '{_REFUSAL}' USING ERRCODE = 'integrity_constraint_violation';
    END $$""",
    """CREATE TRIGGER coupon_ledger_append_only BEFORE UPDATE OR DELETE ON coupon_ledger
    FOR EACH ROW EXECUTE FUNCTION coupon_ledger_append_only()""",
)


def upgrade() -> None:
    op.create_table(
        "coupon_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("redemption", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.Column("order_amount", sa.BigInteger(), nullable=True),
        sa.Column("discount_amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_coupon_ledger"),
        sa.CheckConstraint(
            "action IN ('redeem', 'release')", name=op.f("ck_coupon_ledger_ledger_action")
        ),
    )
    op.create_index(
        "uq_coupon_ledger_code", "coupon_ledger", ["code", "redemption", "action"], unique=True
    )
    op.create_index("ix_coupon_ledger_campaign_id", "coupon_ledger", ["campaign_id", "at"])
    op.create_index("ix_coupon_ledger_user_id", "coupon_ledger", ["user_id"])

    # floats to integer ten-thousandths (19.99 * 10000 is 199899.99999999997: round first)
    op.execute(
        "UPDATE coupons SET order_amount = ROUND(order_amount * 10000), "
        "discount_amount = ROUND(discount_amount * 10000)"
    )
    with op.batch_alter_table("coupons") as batch:
        for column in ("order_amount", "discount_amount"):
            batch.alter_column(
                column,
                existing_type=sa.Float(),
                type_=sa.BigInteger(),
                existing_nullable=True,
                postgresql_using=f"{column}::bigint",
            )
        batch.add_column(sa.Column("currency", sa.String(3), nullable=True))
        batch.add_column(sa.Column("releases", sa.Integer(), nullable=False, server_default="0"))

    op.execute(
        "INSERT INTO coupon_ledger (code, campaign_id, user_id, action, redemption, order_id, "
        "order_amount, discount_amount, currency, actor, at) "
        "SELECT code, campaign_id, user_id, 'redeem', 1, order_id, order_amount, "
        "discount_amount, NULL, 'migration-0003', redeemed_at FROM coupons "
        "WHERE redeemed_at IS NOT NULL AND order_id IS NOT NULL"
    )
    triggers = _POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else None
    for statement in triggers or _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER coupon_ledger_append_only ON coupon_ledger")
        op.execute("DROP FUNCTION coupon_ledger_append_only()")
    else:
        op.execute("DROP TRIGGER coupon_ledger_no_update")
        op.execute("DROP TRIGGER coupon_ledger_no_delete")
    with op.batch_alter_table("coupons") as batch:
        batch.drop_column("releases")
        batch.drop_column("currency")
        for column in ("order_amount", "discount_amount"):
            batch.alter_column(
                column,
                existing_type=sa.BigInteger(),
                type_=sa.Float(),
                existing_nullable=True,
                postgresql_using=f"{column}::double precision",
            )
    op.execute(
        "UPDATE coupons SET order_amount = order_amount / 10000.0, "
        "discount_amount = discount_amount / 10000.0"
    )
    op.drop_index("ix_coupon_ledger_user_id", table_name="coupon_ledger")
    op.drop_index("ix_coupon_ledger_campaign_id", table_name="coupon_ledger")
    op.drop_index("uq_coupon_ledger_code", table_name="coupon_ledger")
    op.drop_table("coupon_ledger")
