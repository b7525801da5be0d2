"""The service's one settings object: environment variables with the prefix ``RECOFFER_``.

Every field is documented in the README's configuration table. Bad values are refused at start
with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.activity.records import DEFAULT_EVENT_WEIGHTS
from service.activity.store import DEFAULT_MAX_USERS as DEFAULT_ACTIVITY_USERS

Role = Literal["frontend", "marketing", "admin"]
ROLES: tuple[Role, ...] = ("frontend", "marketing", "admin")


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SegmentSettings(BaseSettings):
    """The thresholds of user segments (issue 12, item 1): ``RECOFFER_SEGMENT_*``.

    Each threshold is explained in the README's "Segments" section; ``service.segments.rules``
    applies them.
    """

    model_config = SettingsConfigDict(
        env_prefix="RECOFFER_SEGMENT_", env_file=None, extra="ignore", frozen=True
    )

    rhythm_min_orders: int = Field(
        3,
        ge=2,
        description="Orders a customer needs for their own rhythm (mean interval between their "
        "orders); fewer: the shop's typical interval (median of those rhythms).",
    )
    default_interval_days: float = Field(
        30.0, gt=0, description="The typical interval while no customer has a rhythm yet."
    )
    min_interval_days: float = Field(
        1.0, gt=0, description="A rhythm is never taken shorter than this (same-day orders)."
    )
    new_days: float = Field(30.0, ge=0, description="A first order at most this old: stage new.")
    at_risk_factor: float = Field(
        2.0, gt=0, description="at_risk once the last order is older than this many rhythms."
    )
    at_risk_min_days: float = Field(
        30.0, ge=0, description="...and older than this many days at least."
    )
    lapsed_factor: float = Field(
        4.0, gt=0, description="lapsed once the last order is older than this many rhythms."
    )
    lapsed_min_days: float = Field(
        90.0, ge=0, description="...and older than this many days at least."
    )
    engagement_days: float = Field(
        30.0, gt=0, description="The window in which views and active days are counted."
    )
    engaged_min_views: int = Field(
        10, ge=1, description="Views in the window that make a user engaged."
    )
    engaged_min_active_days: int = Field(
        4, ge=1, description="Or days with any event in the window that make a user engaged."
    )
    regular_min_orders: int = Field(
        3, ge=1, description="Orders of a regular buyer (habitual, committed) at least."
    )
    mercenary_min_orders: int = Field(
        2, ge=1, description="Orders at least before a user can be called mercenary."
    )
    mercenary_share: float = Field(
        0.5, gt=0, le=1, description="Share of orders that redeemed a coupon: mercenary from it."
    )
    committed_max_share: float = Field(
        0.25, ge=0, le=1, description="A committed customer's coupon share at most (full price)."
    )
    batch_rows: int = Field(
        5000, ge=100, le=100_000, description="Rows per write transaction of a bulk run."
    )
    refresh_view_seconds: float = Field(
        300.0,
        ge=0,
        description="A user's row is recomputed on a view at most this often per worker "
        "(purchases always recompute it).",
    )
    refresh_on_ingest: bool = Field(
        True, description="Recompute a user's row as their purchases and views arrive."
    )

    @model_validator(mode="after")
    def _lapsed_after_at_risk(self) -> SegmentSettings:
        if self.lapsed_factor <= self.at_risk_factor:
            raise ValueError(
                "RECOFFER_SEGMENT_LAPSED_FACTOR must be greater than "
                "RECOFFER_SEGMENT_AT_RISK_FACTOR"
            )
        if self.lapsed_min_days < self.at_risk_min_days:
            raise ValueError(
                "RECOFFER_SEGMENT_LAPSED_MIN_DAYS must be at least "
                "RECOFFER_SEGMENT_AT_RISK_MIN_DAYS"
            )
        if self.committed_max_share >= self.mercenary_share:
            raise ValueError(
                "RECOFFER_SEGMENT_COMMITTED_MAX_SHARE must be below "
                "RECOFFER_SEGMENT_MERCENARY_SHARE"
            )
        return self


class Settings(BaseSettings):
    """Configuration of one service process."""

    model_config = SettingsConfigDict(
        env_prefix="RECOFFER_", env_file=None, extra="ignore", frozen=True
    )

    model_dir: Path = Field(Path("var/models"), description="Model root written by the trainer.")
    database_url: str = Field(
        "sqlite:///var/recoffer.db",
        description="SQLAlchemy URL: sqlite:///path (embedded) or postgresql+psycopg://...",
    )
    migrate_on_start: bool = Field(True, description="Apply Alembic migrations at start-up.")
    host: str = Field("127.0.0.1", description="Address `recoffer serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `recoffer serve` binds.")

    frontend_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys of role frontend, comma-separated."
    )
    marketing_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys of role marketing, comma-separated."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys of role admin, comma-separated."
    )
    auth_disabled: bool = Field(
        False,
        description="Development mode: no API keys, every caller is admin. Loopback hosts only.",
    )
    console_session_hours: float = Field(
        8.0,
        gt=0,
        le=24 * 30,
        description="How long a console sign-in lasts (issue 13, item 2); signing out ends it.",
    )
    console_sign_in_failures: int = Field(
        10,
        ge=1,
        description="Failed console sign-ins (a wrong key) per client address and window; "
        "past them the sign-in form answers 429 until the window has moved on.",
    )
    console_sign_in_window_seconds: float = Field(
        900.0, gt=0, description="The window of the failed console sign-ins."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed by CORS, comma-separated."
    )

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    max_batch_events: int = Field(1000, ge=1, le=10_000, description="Events per POST at most.")
    reload_interval_seconds: float = Field(
        2.0, ge=0, description="How often to look for a new current model (0: never)."
    )
    candidates_per_user: int = Field(
        200, ge=10, le=5000, description="Precomputed candidates per known user and protocol."
    )
    precompute_max_cells: int = Field(
        400_000_000,
        ge=0,
        description="Precompute candidates at load when users x items is at most this.",
    )
    # issue 15, item 4: bounded precomputation, the ANN index, shared model files
    precompute_max_users: int = Field(
        100_000,
        ge=0,
        description="Known users whose candidates are precomputed at most (those with the "
        "longest histories when there are more); about 3.2 KB each.",
    )
    ann: bool = Field(True, description="Serve from the version's ANN index when it has one.")
    ann_candidates: int = Field(
        200, ge=10, le=10_000, description="Items fetched from the ANN index per request."
    )
    ann_max_candidates: int = Field(
        5_000,
        ge=10,
        le=1_000_000,
        description="The fetch grows up to this when filters leave too few; then exact.",
    )
    mmap_min_bytes: int | None = Field(
        None,
        ge=0,
        description="Model files of at least this size are memory-mapped, shared by the "
        "workers (none: every file read into each worker's memory).",
    )
    session_events: int = Field(
        50, ge=1, le=1000, description="Recent events per user kept for fold-in and filters."
    )
    # issue 11, item 10: the activity store's memory bound
    activity_max_users: int = Field(
        DEFAULT_ACTIVITY_USERS,
        ge=1,
        description="Users whose recent events each worker keeps in memory (the least recently "
        "active are forgotten first; about 0.9 KB each and 0.2 KB per event held).",
    )
    event_poll_seconds: float = Field(
        1.0, gt=0, description="How often each worker reads new events from the database."
    )
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight of each event type when folding a session into the model.",
    )
    db_pool_size: int = Field(5, ge=1, description="PostgreSQL connection pool size per worker.")
    db_timeout_seconds: float = Field(
        5.0, gt=0, description="Statement/lock timeout (PostgreSQL) or busy timeout (SQLite)."
    )
    campaigns_file: Path | None = Field(
        None,
        description="TOML file of campaigns; the built-in new_user_high_intent always exists.",
    )
    coupon_failures_per_address: int = Field(
        100, ge=1, description="Failed coupon lookups per client address and window before 429."
    )
    coupon_failures_per_client: int = Field(
        1000, ge=1, description="Failed coupon lookups per API key and window before 429."
    )
    coupon_failure_window_seconds: float = Field(
        600.0, gt=0, description="The window of the failed-lookup limits."
    )
    # --- issue 11, items 3 and 4: coupon releases, shared limits, trusted proxies ---
    coupon_max_releases: int = Field(
        1, ge=0, le=100, description="How often one coupon may be released (cancelled orders)."
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:port/db: failed-lookup limits, users' recent events "
        "(sessions) and the leader lock, shared by every worker and replica (without it each "
        "process counts alone and keeps every session in its own memory).",
    )
    redis_prefix: str = Field(
        "recoffer",
        min_length=1,
        max_length=64,
        description="Prefix of this deployment's Redis keys (several deployments, one Redis).",
    )
    # --- issue 15, item 5: sessions in Redis, one leader for the time-driven jobs ---
    session_ttl_seconds: float = Field(
        30 * 86_400.0,
        gt=0,
        description="With Redis: how long a user's recent events stay in Redis after their "
        "last event (the session window; each list holds at most session_events).",
    )
    redis_timeout_seconds: float = Field(
        0.25,
        gt=0,
        le=10,
        description="With Redis: how long a session read or write waits for Redis before "
        "answering from the database (reads) or skipping (writes: the database has them).",
    )
    redis_retry_seconds: float = Field(
        5.0,
        ge=0,
        description="With Redis: after a failed session call, how long sessions are read from "
        "the database before Redis is tried again (an outage costs one timeout, not one per "
        "request).",
    )
    redis_max_connections: int = Field(
        32,
        ge=1,
        le=10_000,
        description="With Redis: the most connections each of a worker's two session clients "
        "(blocking and asyncio) opens; a call waits at most redis_timeout_seconds for a free "
        "one. While Redis cannot answer, at most half of db_pool_size (at least 1) "
        "session reads go to the database at a time; the others answer from memory.",
    )
    leader_lock_seconds: float = Field(
        30.0,
        ge=3,
        le=3600,
        description="The leader lock's time to live (Redis, else a PostgreSQL advisory lock): "
        "the holder renews it every third of it; when the leader stops, another worker takes "
        "over within this time. The time-driven jobs (campaign schedule, feedback prune) run "
        "on the leader only.",
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description="Proxies (addresses or CIDR networks, comma-separated) whose "
        "X-Forwarded-For names the client; none by default, loopback included.",
    )

    offer_metrics_seconds: float = Field(
        15.0, ge=0, description="How often coupon and budget gauges are refreshed (0: never)."
    )
    # --- issue 11, item 10: the bulk catalogue endpoint ---
    max_batch_items: int = Field(
        1000, ge=1, le=10_000, description="Items per POST /v1/items:batch at most."
    )
    # campaign sweep jobs (issue 11, item 11)
    sweep_stale_seconds: float = Field(
        120.0,
        gt=0,
        description="A running sweep job silent this long (no heartbeat) is failed: its worker "
        "died; the campaign may then be run again.",
    )
    # campaigns managed at run time (issue 12, item 5)
    campaign_poll_seconds: float = Field(
        2.0,
        ge=0,
        description="How often each worker looks for campaign changes made through the API "
        "(by any worker or replica) and applies them (0: only its own, and at start).",
    )
    # the schedule of the time-driven campaigns (issue 12, item 2)
    campaign_schedule_seconds: float = Field(
        60.0,
        ge=0,
        description="How often each worker checks whether a time-driven campaign's sweep is "
        "due (its run_every_minutes); 0: never (run them with POST /v1/campaigns/{id}/run).",
    )
    # A/B tests of recommenders (issue 14, item 3)
    experiment_poll_seconds: float = Field(
        2.0,
        ge=0,
        description="How often each worker looks for an experiment started, stopped or "
        "promoted (by any worker, replica or the CLI) and loads or releases its arms (0: only "
        "its own changes, and at start).",
    )
    experiment_guard_seconds: float = Field(
        60.0,
        ge=0,
        description="How often each worker runs the experiment guard, which stops a candidate "
        "that is clearly worse (0: never; an experiment whose control is no longer current is "
        "still stopped at the next experiment poll).",
    )
    experiment_guard_min_impressions: int = Field(
        1000, ge=1, description="Impressions each arm needs before the guard may stop."
    )
    experiment_guard_z: float = Field(
        3.29,
        ge=1.0,
        le=10.0,
        description="The guard stops when the upper end of the CTR or conversion difference's "
        "interval at this z is below 0 (3.29: 99.9 % two-sided).",
    )
    experiment_srm_p: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="A sample-ratio check's p-value below this flags a mismatch.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    access_log: bool = Field(True, description="One JSON log line per request.")

    # issue 11, item 5: who may read /metrics
    metrics_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys that may read /metrics (admin keys may too), comma-separated; "
        "none: /metrics answers anyone.",
    )

    # --- issue 14, item 4: products the model does not know (service/recommend/arrivals) ---
    new_arrivals_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="A product the model does not know, added to the catalogue at most this "
        "many days ago, is a new arrival.",
    )
    new_arrivals_slots: int = Field(
        2,
        ge=0,
        le=100,
        description="Positions of a list new arrivals may take (never the first); 0: the "
        "new_arrivals source is off.",
    )
    new_items_refresh_seconds: float = Field(
        60.0,
        ge=0,
        description="How often each worker folds the new products' events since training into "
        "their vectors (0: only at start and when a model loads).",
    )

    # --- issue 12, item 6: webhooks to the shop (service/delivery) ---
    webhook_url: str | None = Field(
        None,
        description="Where coupon events are POSTed (http:// or https://); none: webhooks off, "
        "nothing is written to the outbox.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        validate_default=True,
        description="Shared secret of the HMAC-SHA256 signature (at least 16 characters); "
        "required with RECOFFER_WEBHOOK_URL.",
    )
    webhook_expiring_lead_hours: float = Field(
        6.0,
        gt=0,
        le=24 * 365,
        description="coupon.expiring is sent this long before expiry (not for a coupon that "
        "lives no longer than this).",
    )
    webhook_max_attempts: int = Field(
        20, ge=1, le=1000, description="Tries of one event before it is marked dead."
    )
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="Wait after the first failed try; doubled after each next one."
    )
    webhook_backoff_max_seconds: float = Field(
        600.0, gt=0, description="The longest wait between two tries (before jitter)."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long one POST may take before it counts as failed."
    )
    webhook_poll_seconds: float = Field(
        1.0, gt=0, description="How often each worker looks for due events when idle."
    )
    webhook_batch: int = Field(
        50, ge=1, le=1000, description="Events one worker claims and sends at once."
    )
    webhook_expiring_scan_seconds: float = Field(
        60.0, gt=0, description="How often coupons are scanned for coupon.expiring."
    )
    webhook_retention_days: float = Field(
        30.0,
        ge=0,
        le=3650,
        description="Delivered and dead webhook events, and the log of delivery attempts, are "
        "deleted once this many days old (0: kept for ever). Longer than the expiring lead.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None  # RECOFFER_WEBHOOK_URL= (empty): off
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if secret is not None and not secret.get_secret_value():
            secret = None
        if info.data.get("webhook_url") and secret is None:
            raise ValueError("required when RECOFFER_WEBHOOK_URL is set (the shop verifies it)")
        if secret is not None and len(secret.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return secret

    @field_validator("webhook_retention_days")
    @classmethod
    def _webhook_retention(cls, days: float, info: ValidationInfo) -> float:
        lead = info.data.get("webhook_expiring_lead_hours")
        if days and lead is not None and days * 24 <= lead:
            # an expiring event pruned before its coupon expires could be announced again
            raise ValueError(
                "must be longer than RECOFFER_WEBHOOK_EXPIRING_LEAD_HOURS (or 0: keep for ever)"
            )
        return days

    @field_validator("webhook_backoff_max_seconds")
    @classmethod
    def _webhook_backoff(cls, cap: float, info: ValidationInfo) -> float:
        first = info.data.get("webhook_backoff_seconds")
        if first is not None and cap < first:
            raise ValueError("must be at least RECOFFER_WEBHOOK_BACKOFF_SECONDS")
        return cap

    # issue 12, item 1: the thresholds of user segments (RECOFFER_SEGMENT_*)
    segment: SegmentSettings = Field(
        default_factory=SegmentSettings, description="Segment thresholds: RECOFFER_SEGMENT_*."
    )

    # issue 14, items 1, 2 and 4: recommendation feedback (RECOFFER_ATTRIBUTION_*, ...)
    attribution_click_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 90,
        description="An add-to-cart or purchase is credited to the list the same user clicked "
        "the same item from within this many hours before it (last touch).",
    )
    attribution_impression_hours: float = Field(
        1.0,
        ge=0,
        le=24 * 90,
        description="Failing a click: to the list that showed the item to the user within this "
        "many hours before it (0: clicks only).",
    )
    feedback_retention_days: float = Field(
        180.0,
        ge=0,
        le=3650,
        description="Impressions, clicks and attributions are deleted once this many days old "
        "(0: kept for ever).",
    )
    feedback_prune_seconds: float = Field(
        3600.0, gt=0, description="How often each worker prunes the old feedback rows."
    )

    @field_validator("metrics_keys", mode="before")
    @classmethod
    def _metrics_keys_comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("metrics_keys")
    @classmethod
    def _metrics_keys_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(len(key.get_secret_value()) < 16 for key in keys):
            raise ValueError("metrics keys must be at least 16 characters")
        return keys

    @field_validator("frontend_keys", "marketing_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("frontend_keys", "marketing_keys", "admin_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            if len(key.get_secret_value()) < 16:
                raise ValueError("API keys must be at least 16 characters")
        return keys

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        parts = _split(value)
        if not isinstance(parts, list):
            return parts
        try:
            return [ipaddress.ip_network(str(p), strict=False) for p in parts]
        except ValueError as exc:
            raise ValueError(f"not an address or network: {exc}") from None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None  # RECOFFER_REDIS_URL= (empty): not configured
        if not url.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("must start with redis://, rediss:// or redis+unix://")
        return url

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return url

    @field_validator("campaigns_file")
    @classmethod
    def _campaigns_readable(cls, path: Path | None) -> Path | None:
        from service.errors import CampaignConfigError
        from service.offers.campaigns import load_campaigns

        try:
            load_campaigns(path)
        except CampaignConfigError as exc:
            raise ValueError(str(exc)) from None
        return path

    @model_validator(mode="after")
    def _auth_configured(self) -> Settings:
        if self.auth_disabled:
            if not is_loopback(self.host):
                raise ValueError(
                    "RECOFFER_AUTH_DISABLED is for development on a loopback host only "
                    f"(host is {self.host!r}); configure API keys instead"
                )
        elif not (self.frontend_keys or self.marketing_keys or self.admin_keys):
            raise ValueError(
                "no API keys configured: set RECOFFER_FRONTEND_KEYS / RECOFFER_MARKETING_KEYS / "
                "RECOFFER_ADMIN_KEYS, or RECOFFER_AUTH_DISABLED=true for local development"
            )
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("RECOFFER_CORS_ORIGINS: '*' cannot be combined with other origins")
        return self

    def keys_by_role(self) -> dict[Role, list[str]]:
        return {
            "frontend": [k.get_secret_value() for k in self.frontend_keys],
            "marketing": [k.get_secret_value() for k in self.marketing_keys],
            "admin": [k.get_secret_value() for k in self.admin_keys],
        }

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
