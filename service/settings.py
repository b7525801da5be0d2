"""The service's one settings object: environment variables with the prefix ``RECOFFER_``.

Every field is documented in the README's configuration table. Bad values are refused at start
with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.activity.records import DEFAULT_EVENT_WEIGHTS
from service.activity.store import DEFAULT_MAX_USERS as DEFAULT_ACTIVITY_USERS

Role = Literal["frontend", "marketing", "admin"]
ROLES: tuple[Role, ...] = ("frontend", "marketing", "admin")


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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
        description="redis://host:port/db: failed-lookup limits shared by every worker and "
        "replica (without it each process counts alone).",
    )
    redis_prefix: str = Field(
        "recoffer",
        min_length=1,
        max_length=64,
        description="Prefix of this deployment's Redis keys (several deployments, one Redis).",
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
    # the schedule of the time-driven campaigns (issue 12, item 2)
    campaign_schedule_seconds: float = Field(
        60.0,
        ge=0,
        description="How often each worker checks whether a time-driven campaign's sweep is "
        "due (its run_every_minutes); 0: never (run them with POST /v1/campaigns/{id}/run).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    access_log: bool = Field(True, description="One JSON log line per request.")

    # issue 11, item 5: who may read /metrics
    metrics_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys that may read /metrics (admin keys may too), comma-separated; "
        "none: /metrics answers anyone.",
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
