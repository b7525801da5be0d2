"""Database tables (SQLAlchemy Core). Migrations in service/migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.types import TypeDecorator

from service.money import CURRENCY_LENGTH, AmountColumn
from service.offers.kinds import RECORDED

ID_LENGTH = 128
EVENT_TYPES = ("view", "add_to_cart", "purchase", "sign_up")
ITEM_STATUSES = ("active", "hidden", "deleted")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


users = Table(
    "users",
    metadata,
    Column("user_id", String(ID_LENGTH), primary_key=True),
    Column("signed_up_at", UTCDateTime(), nullable=True),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("attributes", JSON(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("user_id", String(ID_LENGTH), nullable=False),
    Column("item_id", String(ID_LENGTH), nullable=True),
    Column("type", String(16), nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=True),
    Column("client_event_id", String(ID_LENGTH), nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
    # a purchase's units, unit price and its currency (migration 0005; null on other types)
    Column("quantity", Integer(), nullable=True),
    Column("price", AmountColumn(), nullable=True),
    Column("currency", String(CURRENCY_LENGTH), nullable=True),
    CheckConstraint("type IN ('view', 'add_to_cart', 'purchase', 'sign_up')", name="event_type"),
    Index("ix_events_user_id_ts", "user_id", "ts"),
    Index("uq_events_client_event_id", "client_event_id", unique=True),
    # migration 0017: the new products' events since training, by item (issue 14)
    Index("ix_events_item_id_ts", "item_id", "ts"),
)

items = Table(
    "items",
    metadata,
    Column("item_id", String(ID_LENGTH), primary_key=True),
    Column("name", String(512), nullable=True),
    Column("category", String(ID_LENGTH), nullable=True),
    Column("in_stock", Boolean(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    # migration 0005: an exact price with its currency, attributes, and active / hidden /
    # deleted (a deleted item stays as a tombstone so every worker's catalogue tail sees it)
    Column("price", AmountColumn(), nullable=True),
    Column("currency", String(CURRENCY_LENGTH), nullable=True),
    Column("attributes", JSON(), nullable=True),
    Column("status", String(8), nullable=False, server_default="active"),
    CheckConstraint(f"status IN ({', '.join(map(repr, ITEM_STATUSES))})", name="item_status"),
    Index("ix_items_updated_at", "updated_at"),
    # migration 0017: when the catalogue first saw the item (the new_arrivals source, issue 14)
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_items_created_at", "created_at"),
)

# --- offers (migration 0002) -------------------------------------------------------------

offer_decisions = Table(
    "offer_decisions",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("user_id", String(ID_LENGTH), nullable=False),
    # issued and holdout are final; budget_exhausted may still become one of them
    Column("decision", String(20), nullable=False),
    Column("attribution_id", String(32), nullable=False),
    Column("views", Integer(), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("convert_until", UTCDateTime(), nullable=False),
    # the user's segment when decided (migration 0012; null: no user_segments row then)
    Column("lifecycle_stage", String(16), nullable=True),
    Column("loyalty_type", String(16), nullable=True),
    # the campaign's definition version in force (campaign_changes); None before 0011
    Column("campaign_version", Integer(), nullable=True),
    # migration 0009 (issue 12, item 2): a recurring campaign's occurrence ('' for a campaign
    # decided once per user): see service.offers.occasions
    Column("occurrence", String(64), nullable=False, server_default=""),
    CheckConstraint(f"decision IN ({', '.join(map(repr, RECORDED))})", name="decision_kind"),
    # "one decision per user per campaign and occurrence, ever" is this index, not a read
    # before a write
    Index("uq_offer_decisions_occurrence", "campaign_id", "user_id", "occurrence", unique=True),
    Index("uq_offer_decisions_attribution_id", "attribution_id", unique=True),
    Index("ix_offer_decisions_user_id", "user_id"),
)

coupons = Table(
    "coupons",
    metadata,
    Column("code", String(32), primary_key=True),  # normalised: upper case, no dashes
    Column("campaign_id", String(64), nullable=False),
    Column("user_id", String(ID_LENGTH), nullable=True),  # None: the user was erased (0004)
    Column("attribution_id", String(32), nullable=False),
    Column("discount_percent", Float(), nullable=False),
    Column("item_ids", JSON(), nullable=True),  # None: store-wide
    Column("issued_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("redeemed_at", UTCDateTime(), nullable=True),
    Column("order_id", String(ID_LENGTH), nullable=True),
    # the standing redemption's money, exact since 0003; every use is kept in coupon_ledger
    Column("order_amount", AmountColumn(), nullable=True),
    Column("discount_amount", AmountColumn(), nullable=True),
    Column("currency", String(3), nullable=True),
    Column("releases", Integer(), nullable=False, server_default="0"),  # bounded (item 3)
    Index("ix_coupons_user_id", "user_id", "expires_at"),
    Index("ix_coupons_campaign_id", "campaign_id"),
    Index("ix_coupons_attribution_id", "attribution_id"),
)

campaign_budgets = Table(
    "campaign_budgets",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("period", String(10), primary_key=True),  # "total" or a UTC day "YYYY-MM-DD"
    Column("issued", Integer(), nullable=False),
)

# --- erasure (migration 0004) ------------------------------------------------------------

# erased users, as keyed hashes (service.privacy): the plain id is kept nowhere
erased_users = Table(
    "erased_users",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("user_hash", String(64), nullable=False),
    Column("erased_at", UTCDateTime(), nullable=False),
    Index("uq_erased_users_user_hash", "user_hash", unique=True),
)

# the installation's random hashing key, written once by migration 0004
erasure_keys = Table(
    "erasure_keys",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("secret", String(128), nullable=False),
)

# --- the coupons' audit trail (migration 0003, issue 11 item 3) ---------------------------

LEDGER_ACTIONS = ("redeem", "release")

# Append-only: one row per redemption and per release, never updated (erasure only sets
# user_id to NULL) nor deleted; migration 0003 adds triggers that refuse anything else.
coupon_ledger = Table(
    "coupon_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("code", String(32), nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("user_id", String(ID_LENGTH), nullable=True),  # NULL once the user is erased
    Column("action", String(8), nullable=False),
    # which redemption of the coupon (1, 2, ...); a release carries the number it undoes
    Column("redemption", Integer(), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("order_amount", AmountColumn(), nullable=True),
    Column("discount_amount", AmountColumn(), nullable=True),
    Column("currency", String(3), nullable=True),
    Column("actor", String(64), nullable=False),  # the API key's role and fingerprint
    Column("at", UTCDateTime(), nullable=False),
    CheckConstraint("action IN ('redeem', 'release')", name="ledger_action"),
    Index("uq_coupon_ledger_code", "code", "redemption", "action", unique=True),
    Index("ix_coupon_ledger_campaign_id", "campaign_id", "at"),
    Index("ix_coupon_ledger_user_id", "user_id"),
)

# --- campaign sweep jobs (migration 0006, issue 11 item 11) --------------------------------

SWEEP_STATES = ("queued", "running", "done", "failed")
ACTIVE_SWEEP = "state IN ('queued', 'running')"

sweep_jobs = Table(
    "sweep_jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("state", String(10), nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    # the running worker writes it with every batch; a silent one has died (service.offers.jobs)
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("worker", String(200), nullable=False),
    Column("evaluated", Integer(), nullable=True),  # candidates, once counted
    Column("processed", Integer(), nullable=False),
    Column("counts", JSON(), nullable=False),
    Column("seconds", Float(), nullable=True),
    Column("error", String(500), nullable=True),
    CheckConstraint(f"state IN ({', '.join(map(repr, SWEEP_STATES))})", name="sweep_state"),
    # "one sweep per campaign at a time", across workers and replicas, is this index
    Index(
        "uq_sweep_jobs_active",
        "campaign_id",
        unique=True,
        sqlite_where=text(ACTIVE_SWEEP),
        postgresql_where=text(ACTIVE_SWEEP),
    ),
    Index("ix_sweep_jobs_campaign_id", "campaign_id", "requested_at"),
)
# a sweep checks a batch of users for purchases made meanwhile: this makes it one probe each
PURCHASE = "type = 'purchase'"
Index(
    "ix_events_purchases",
    events.c.user_id,
    events.c.ts,
    sqlite_where=text(PURCHASE),
    postgresql_where=text(PURCHASE),
)

# an abandoned-cart sweep reads the recent add-to-carts (migration 0009, issue 12 item 2)
CART = "type = 'add_to_cart'"
Index(
    "ix_events_carts",
    events.c.ts,
    sqlite_where=text(CART),
    postgresql_where=text(CART),
)

# --- user segments (migration 0007, issue 12 item 1) ---------------------------------------

LIFECYCLE_STAGES = ("new", "active", "at_risk", "lapsed", "returning")
LOYALTY_TYPES = ("not_loyal", "habitual", "mercenary", "latent", "committed")

# one row per user, recomputed in bulk and kept current as their events arrive; the two
# vocabularies are disjoint, so a segment is named by its value alone ("mercenary", "lapsed")
user_segments = Table(
    "user_segments",
    metadata,
    Column("user_id", String(ID_LENGTH), primary_key=True),
    Column("orders", Integer(), nullable=False),
    Column("coupon_orders", Integer(), nullable=False),  # orders that redeemed a coupon
    Column("first_order_at", UTCDateTime(), nullable=True),
    Column("last_order_at", UTCDateTime(), nullable=True),
    Column("monetary", AmountColumn(), nullable=True),  # spent, in the user's currency
    Column("currency", String(CURRENCY_LENGTH), nullable=True),
    Column("views", Integer(), nullable=False),  # in the engagement window
    Column("active_days", Integer(), nullable=False),  # distinct days with events, same window
    Column("r_score", Integer(), nullable=True),  # 1..5, None without an order
    Column("f_score", Integer(), nullable=True),
    Column("m_score", Integer(), nullable=True),
    Column("lifecycle_stage", String(16), nullable=False),
    Column("loyalty_type", String(16), nullable=False),
    Column("computed_at", UTCDateTime(), nullable=False),
    CheckConstraint(
        f"lifecycle_stage IN ({', '.join(map(repr, LIFECYCLE_STAGES))})", name="lifecycle_stage"
    ),
    CheckConstraint(
        f"loyalty_type IN ({', '.join(map(repr, LOYALTY_TYPES))})", name="loyalty_type"
    ),
    Index("ix_user_segments_lifecycle_stage", "lifecycle_stage"),
    Index("ix_user_segments_loyalty_type", "loyalty_type"),
)

# --- money: fixed and percent discounts, minimum order, money budgets (migration 0010,
# issue 12 item 3) ----------------------------------------------------------------------------

DISCOUNT_KINDS = ("percent", "fixed")

# a coupon carries its terms, fixed when it is issued: the kind of discount, a fixed amount,
# the currency the fixed amount and the minimum order are in (a redemption in another one is
# refused), and the minimum order; null on coupons issued before 0010 (percent, no minimum)
coupons.append_column(Column("discount_kind", String(8), nullable=False, server_default="percent"))
coupons.append_column(Column("discount_fixed", AmountColumn(), nullable=True))
coupons.append_column(Column("terms_currency", String(CURRENCY_LENGTH), nullable=True))
coupons.append_column(Column("min_order_amount", AmountColumn(), nullable=True))
coupons.append_constraint(
    CheckConstraint(
        f"discount_kind IN ({', '.join(map(repr, DISCOUNT_KINDS))})", name="discount_kind"
    )
)

# the discount actually given, by campaign, period ("total" or a UTC day "YYYY-MM-DD", the
# day of the redemption) and currency: added by a redemption, taken back by its release, in
# the same transaction as the coupon's row; what a money budget is checked against
campaign_spend = Table(
    "campaign_spend",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("period", String(10), primary_key=True),
    Column("currency", String(CURRENCY_LENGTH), primary_key=True),
    Column("spent", AmountColumn(), nullable=False),
)

# --- campaigns managed at run time (migration 0011, issue 12 item 5) -----------------------

CAMPAIGN_STATUSES = ("active", "paused", "archived")
CAMPAIGN_SOURCES = ("file", "default", "api")
CAMPAIGN_ACTIONS = ("create", "update", "pause", "resume", "archive")

# each campaign's current definition (the fields given, validated by offers.campaigns.Campaign);
# ``version`` grows by one with every change, and the change's row in campaign_changes has it
campaign_definitions = Table(
    "campaign_definitions",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("definition", JSON(), nullable=False),
    Column("status", String(10), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("source", String(10), nullable=False),  # file, default (the built-in) or api
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(
        f"status IN ({', '.join(map(repr, CAMPAIGN_STATUSES))})", name="campaign_status"
    ),
    CheckConstraint(
        f"source IN ({', '.join(map(repr, CAMPAIGN_SOURCES))})", name="campaign_source"
    ),
)

# Append-only: one row per change, never updated nor deleted (migration 0011's triggers);
# "one change per version" is the unique index, so a version is written exactly once
campaign_changes = Table(
    "campaign_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("action", String(8), nullable=False),
    Column("status", String(10), nullable=False),  # after the change
    Column("definition", JSON(), nullable=False),  # the whole definition after it, defaults in
    Column("actor", String(64), nullable=False),  # the API key's role and fingerprint, or file
    Column("at", UTCDateTime(), nullable=False),
    CheckConstraint(
        f"action IN ({', '.join(map(repr, CAMPAIGN_ACTIONS))})", name="campaign_action"
    ),
    Index("uq_campaign_changes_campaign_id", "campaign_id", "version", unique=True),
)

# --- webhook outbox and delivery log (migration 0008, issue 12 item 6) ---------------------

WEBHOOK_EVENT_TYPES = ("coupon.issued", "coupon.redeemed", "coupon.expiring")
WEBHOOK_STATES = ("pending", "delivered", "dead")

# One row per event for the shop, written in the transaction of the fact it tells
# (service.delivery.outbox); ``id`` orders the events of a coupon (``coupon_ref``: the coupon's
# attribution id, so no full code sits in a key or an index).
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("event_id", String(32), nullable=False),  # stable: the receiver's idempotency key
    Column("event_key", String(96), nullable=False),  # "what happened once": type + coupon (+ use)
    Column("type", String(24), nullable=False),
    Column("coupon_ref", String(32), nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("user_id", String(ID_LENGTH), nullable=True),
    Column("payload", JSON(), nullable=False),  # the body's "data"; holds the full code
    Column("created_at", UTCDateTime(), nullable=False),
    Column("state", String(10), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64), nullable=True),  # a sender holds it until claimed_until
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("last_status", Integer(), nullable=True),
    Column("last_error", String(300), nullable=True),
    CheckConstraint(
        f"type IN ({', '.join(map(repr, WEBHOOK_EVENT_TYPES))})", name="webhook_event_type"
    ),
    CheckConstraint(f"state IN ({', '.join(map(repr, WEBHOOK_STATES))})", name="webhook_state"),
    Index("uq_webhook_events_event_id", "event_id", unique=True),
    # "one coupon.expiring per coupon", across scanners and replicas, is this index
    Index("uq_webhook_events_event_key", "event_key", unique=True),
    Index("ix_webhook_events_state", "state", "next_attempt_at"),
    Index("ix_webhook_events_coupon_ref", "coupon_ref", "id"),
    Index("ix_webhook_events_user_id", "user_id"),
    Index("ix_webhook_events_created_at", "created_at"),
)

# every attempt to deliver an event: when, how it ended, how long it took (no personal data)
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("event_id", String(32), nullable=False),
    Column("attempt", Integer(), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("status_code", Integer(), nullable=True),  # None: no answer (see error)
    Column("error", String(300), nullable=True),
    Column("duration_ms", Float(), nullable=False),
    Column("sender", String(64), nullable=False),
    Index("ix_webhook_deliveries_event_id", "event_id", "id"),
    Index("ix_webhook_deliveries_at", "at"),
)

# --- segment runs (migration 0007, issue 12 item 1) ----------------------------------------

# the shop-level figures of each bulk run (service.segments): the latest one's thresholds
# score and stage one user when their events arrive, until the next run
segment_runs = Table(
    "segment_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("as_of", UTCDateTime(), nullable=False),  # the moment the figures describe
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("users", Integer(), nullable=False),
    Column("customers", Integer(), nullable=False),  # users with at least one order
    Column("typical_interval_days", Float(), nullable=False),
    Column("thresholds", JSON(), nullable=False),  # score breakpoints (service.segments.rules)
    Column("counts", JSON(), nullable=False),  # users per stage x type
    Column("seconds", Float(), nullable=False),
)

# --- console sessions (migration 0013, issue 13 item 2) ------------------------------------

# a console sign-in: an API key exchanged for a random session token kept in an HttpOnly
# cookie; only the token's SHA-256 is stored, with the digest of the key it came from (a key
# removed from the settings ends its sessions) and the session's CSRF token
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("key_digest", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

# --- predicted customer lifetime value (migration 0014, issue 13 item 1) --------------------

# one row per customer of the latest `recoffer clv --write` run (BG/NBD + Gamma-Gamma), the
# whole table replaced in one transaction by each run; what the API serves, read only
customer_value = Table(
    "customer_value",
    metadata,
    Column("user_id", String(ID_LENGTH), primary_key=True),
    Column("expected_purchases", Float(), nullable=False),  # purchase days in the horizon
    Column("p_alive", Float(), nullable=False),
    Column("expected_order_value", AmountColumn(), nullable=False),  # in `currency`
    Column("predicted_value", AmountColumn(), nullable=False),  # in `currency`, the horizon's
    Column("currency", String(CURRENCY_LENGTH), nullable=False),
    Column("horizon_days", Integer(), nullable=False),
    Column("as_of", UTCDateTime(), nullable=False),  # end of the data: the horizon starts here
    Column("fitted_at", UTCDateTime(), nullable=False),
    Index("ix_customer_value_predicted_value", "predicted_value"),
)

# --- recommendation feedback (migration 0015, issue 14 items 1 and 2) -----------------------

# what made each list shown: the served list's id (``request_id``) and the model version,
# recipe, source, experiment and arm read from its signed token (service.feedback.token);
# natural key (request_id, item_id): the same item of the same list is counted once, whatever
# the frontend retries
FEEDBACK_COLUMNS = ("model_version", "recipe", "source", "placement", "experiment_id", "arm")


def _served_columns() -> list[Column[Any]]:
    return [
        Column("request_id", String(64), nullable=False),
        Column("user_id", String(ID_LENGTH), nullable=False),
        Column("item_id", String(ID_LENGTH), nullable=False),
        Column("position", Integer(), nullable=True),  # 0-based place in the list shown
        Column("placement", String(32), nullable=False),  # home, product, cart, ...
        Column("model_version", String(64), nullable=True),  # None: no model (event log)
        Column("recipe", String(64), nullable=False),  # all, novel, or a candidate's name
        Column("source", String(16), nullable=False),  # model, session, popular, new_arrivals
        Column("experiment_id", String(64), nullable=True),
        Column("arm", String(16), nullable=True),  # control, candidate
        Column("served_at", UTCDateTime(), nullable=False),
        Column("ts", UTCDateTime(), nullable=False),
        Column("client_event_id", String(ID_LENGTH), nullable=True, unique=True),
    ]


rec_impressions = Table(
    "rec_impressions",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    *_served_columns(),
    Index("ux_rec_impressions_request_item", "request_id", "item_id", unique=True),
    Index("ix_rec_impressions_user_id", "user_id", "item_id", "ts"),
    Index("ix_rec_impressions_ts", "ts"),
    Index("ix_rec_impressions_experiment_id", "experiment_id", "arm"),
)

rec_clicks = Table(
    "rec_clicks",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    *_served_columns(),
    Index("ux_rec_clicks_request_item", "request_id", "item_id", unique=True),
    Index("ix_rec_clicks_user_id", "user_id", "item_id", "ts"),
    Index("ix_rec_clicks_ts", "ts"),
)

# an add-to-cart or purchase event credited to the list whose click (or, failing one, whose
# impression) of the same user and item came last within the attribution window; one row per
# event (its ``events.id``), written in the event's transaction
rec_attributions = Table(
    "rec_attributions",
    metadata,
    Column("event_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("kind", String(16), nullable=False),  # add_to_cart, purchase
    Column("via", String(16), nullable=False),  # click, impression
    Column("request_id", String(64), nullable=False),
    Column("user_id", String(ID_LENGTH), nullable=False),
    Column("item_id", String(ID_LENGTH), nullable=False),
    Column("placement", String(32), nullable=False),
    Column("model_version", String(64), nullable=True),
    Column("recipe", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("experiment_id", String(64), nullable=True),
    Column("arm", String(16), nullable=True),
    Column("quantity", Integer(), nullable=False),
    Column("revenue", AmountColumn(), nullable=True),  # price x quantity; None: no price sent
    Column("currency", String(CURRENCY_LENGTH), nullable=True),
    Column("ts", UTCDateTime(), nullable=False),
    Index("ix_rec_attributions_request_id", "request_id", "item_id"),
    Index("ix_rec_attributions_ts", "ts"),
    Index("ix_rec_attributions_user_id", "user_id"),
)

# --- A/B tests of recommenders (migration 0016, issue 14 item 3) ----------------------------

# one experiment at a time (the partial unique index on a running one); a second model
# version, or a second recipe of the same version, served to ``share`` of the users (a hash
# of experiment and user); stopped by hand, by the guard, or by a promotion
EXPERIMENT_STATUSES = ("running", "stopped", "promoted")
RUNNING_EXPERIMENT = "status = 'running'"

rec_experiments = Table(
    "rec_experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("control_version", String(64), nullable=False),  # `current` when it started
    Column("control_recipe", String(64), nullable=True),  # None: the version's served recipe
    Column("candidate_version", String(64), nullable=False),
    Column("candidate_recipe", String(64), nullable=True),
    Column("share", Float(), nullable=False),  # of users in the candidate arm, 0 < share < 1
    Column("settings", JSON(), nullable=False),  # the guard's and the analysis' thresholds
    Column("created_by", String(128), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("outcome", JSON(), nullable=True),  # why it ended, with the figures at that moment
    Column("version", Integer(), nullable=False, server_default=text("1")),
    CheckConstraint("status IN ('running', 'stopped', 'promoted')", name="status"),
    Index(
        "ux_rec_experiments_running",
        "status",
        unique=True,
        sqlite_where=text(RUNNING_EXPERIMENT),
        postgresql_where=text(RUNNING_EXPERIMENT),
    ),
)
