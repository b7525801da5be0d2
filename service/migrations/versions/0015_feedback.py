"""recommendation feedback: lists shown (one row each), clicks and attributed carts and
purchases (issue 14, items 1 and 2)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.money import AmountColumn
from service.tables import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _served(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("id", ID, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("placement", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("recipe", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("arm", sa.String(16), nullable=True),
        sa.Column("served_at", UTCDateTime(), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("client_event_id", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.UniqueConstraint("client_event_id", name=f"uq_{table}_client_event_id"),
    ]


def upgrade() -> None:
    # one row per list shown (one impression event), its items, places and source letters
    op.create_table(
        "rec_impressions",
        sa.Column("id", ID, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("placement", sa.String(32), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("positions", sa.JSON(), nullable=False),
        sa.Column("sources", sa.String(100), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("recipe", sa.String(64), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("arm", sa.String(16), nullable=True),
        sa.Column("served_at", UTCDateTime(), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("client_event_id", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rec_impressions"),
        sa.UniqueConstraint("client_event_id", name="uq_rec_impressions_client_event_id"),
    )
    op.create_index("ux_rec_impressions_request_id", "rec_impressions", ["request_id"], unique=True)
    op.create_index("ix_rec_impressions_user_id", "rec_impressions", ["user_id", "ts"])
    op.create_index("ix_rec_impressions_ts", "rec_impressions", ["ts"])
    op.create_index("ix_rec_impressions_experiment_id", "rec_impressions", ["experiment_id", "arm"])
    op.create_table("rec_clicks", *_served("rec_clicks"))
    op.create_index(
        "ux_rec_clicks_request_item", "rec_clicks", ["request_id", "item_id"], unique=True
    )
    op.create_index("ix_rec_clicks_user_id", "rec_clicks", ["user_id", "item_id", "ts"])
    op.create_index("ix_rec_clicks_ts", "rec_clicks", ["ts"])
    op.create_table(
        "rec_attributions",
        sa.Column("event_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("placement", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("recipe", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=True),
        sa.Column("arm", sa.String(16), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("revenue", AmountColumn(), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_rec_attributions"),
    )
    op.create_index("ix_rec_attributions_request_id", "rec_attributions", ["request_id", "item_id"])
    op.create_index("ix_rec_attributions_ts", "rec_attributions", ["ts"])
    op.create_index("ix_rec_attributions_user_id", "rec_attributions", ["user_id"])


def downgrade() -> None:
    op.drop_table("rec_attributions")
    op.drop_table("rec_clicks")
    op.drop_table("rec_impressions")
