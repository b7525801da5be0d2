"""Campaign definitions: the built-in ``new_user_high_intent`` offer and a TOML file of others.

A campaign says who is eligible (a new user, inside the hesitation window after sign-up, who
viewed enough products and has not bought), what they get (a discount, for how long, on which
products), how many coupons may go out (per day, in total) and which share of eligible users
is held out to measure the uplift. Every field has the default of shared/PRODUCT.md.

The file (``RECOFFER_CAMPAIGNS_FILE``) holds one table per campaign::

    [campaigns.new_user_high_intent]        # overrides the built-in defaults it names
    discount_percent = 15
    max_per_day = 500

    [campaigns.big_spenders_welcome]
    min_views = 20
    count = "distinct_items"

The built-in campaign is always defined; ``enabled = false`` turns it off.

Kinds (issue 12, item 2): a table's ``kind`` says which moment of a customer's life it serves,
``new_user_high_intent`` by default. Each kind reads its own fields (``KIND_FIELDS``); a field
of another kind set in a table is refused, so a typo in a win-back campaign cannot silently
keep the new-user default. The rules of each kind are in ``service.offers.occasions``::

    [campaigns.come_back]
    kind = "win_back"
    min_orders = 2
    lapse_rhythm_factor = 2.0      # last order older than twice their own interval
    lapse_days = 90                # for a customer whose interval is unknown (one order)
    run_every_minutes = 1440       # the schedule of the time-driven kinds (offers.schedule)

Targeting (issue 12, item 4): ``audience`` and ``exclude_segments`` name segments of
``user_segments`` (``service.offers.audience``); ``uplift_targeting`` treats only the segments
whose uplift, measured on the campaign's own holdout, is above zero (``service.offers.targeting``)::

    exclude_segments = ["mercenary"]
    uplift_targeting = true
    uplift_min_users = 300         # treated and held-out users per segment before a verdict

Abuse (issue 12, item 7): a new account is the cheapest way to farm first-day coupons, so every
campaign is capped at ``DEFAULT_MAX_PER_DAY`` coupons per UTC day unless its table says
otherwise (``max_per_day = "unlimited"`` says "no daily cap" explicitly), and a campaign may
ask for a minimum account age (``min_account_age_hours``, counted from the shop's
``signed_up_at``) and for attributes the shop has verified (``require_attributes``).

Money (issue 12, item 3): a discount is ``discount_percent`` or a ``fixed_discount`` in the
campaign's ``currency``, with an optional ``min_order_amount``, and a money budget
(``max_discount_per_day``, ``max_discount_total``) beside the coupon caps; amounts are exact
(strings or integers, never floats). What a coupon copies of them and how the budget is
counted: ``service.offers.discounts``::

    [campaigns.five_off_twenty]
    fixed_discount = "5.00"
    currency = "EUR"
    min_order_amount = "20.00"
    max_discount_per_day = "250.00"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from service.errors import CampaignConfigError, UnknownCampaign
from service.money import Amount, Currency
from service.offers.audience import SEGMENTS, Axis

BUILT_IN = "new_user_high_intent"
# The default daily cap. PRODUCT.md's figures: about a quarter of new users view more than 10
# products on day one, and 90 % of those are treated, so 1,000 coupons a day is reached only by
# a shop signing up about 4,400 users a day; a smaller shop never meets it on ordinary days,
# while a farm of fresh accounts gets at most 1,000 coupons a day (its worst case).
DEFAULT_MAX_PER_DAY = 1_000
# what a campaigns file writes for "no cap" (TOML has no null)
UNLIMITED = "unlimited"
CampaignKind = Literal[
    "new_user_high_intent",
    "win_back",
    "purchase_anniversary",
    "birthday",
    "frequent_buyer",
    "abandoned_cart",
]
CAMPAIGN_KINDS: tuple[CampaignKind, ...] = get_args(CampaignKind)
# kinds decided once per user per occurrence (a lapse, a year, a milestone, a cart) rather
# than once per user; the occurrence key is part of the decision's unique index
RECURRING: frozenset[CampaignKind] = frozenset(CAMPAIGN_KINDS) - {"new_user_high_intent"}
# kinds that start from a point in time rather than from a page view: they run on a schedule
TIME_DRIVEN: frozenset[CampaignKind] = frozenset(
    ("win_back", "purchase_anniversary", "birthday", "frequent_buyer", "abandoned_cart")
)
CampaignId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
]


# a user attribute's name, as PUT /v1/users accepts it
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Campaign(BaseModel):
    """One offer campaign; the defaults are the ``new_user_high_intent`` playbook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign_id: CampaignId = BUILT_IN
    kind: CampaignKind = Field(
        "new_user_high_intent", description="Which moment of the customer's life it serves."
    )
    name: str = Field("Coupon for hesitating new users", max_length=200)
    enabled: bool = True
    active_from: AwareDatetime | None = Field(None, description="Not before (inclusive).")
    active_until: AwareDatetime | None = Field(None, description="Not after (exclusive).")

    # who: the hesitation window after sign-up, and the intent shown inside it
    new_user_window_hours: float = Field(24.0, gt=0, le=24 * 365)
    min_views: int = Field(
        11, ge=1, le=100_000, description="Views needed inside the window (11: more than 10)."
    )
    count: Literal["view_events", "distinct_items"] = Field(
        "view_events", description="What a view counts: every view event, or distinct products."
    )
    require_no_purchase: bool = Field(True, description="Only users who have not bought yet.")

    # what: the coupon
    discount_percent: float = Field(10.0, gt=0, le=100)
    coupon_ttl_hours: float = Field(24.0, gt=0, le=24 * 365)
    expire_at_window_end: bool = Field(
        False, description="Expire when the hesitation window closes, if that is sooner."
    )
    restrict_to_top_items: int = Field(
        0,
        ge=0,
        le=100,
        description=(
            "0: store-wide. N > 0: only the N products the model ranks highest: among those "
            "the user viewed (new_user_high_intent), in the whole catalogue for them (win_back, "
            "purchase_anniversary, birthday, frequent_buyer), in the cart (abandoned_cart, "
            "whose coupon is always restricted to the cart: 0 there means the whole cart)."
        ),
    )

    # how many, and who is held out
    holdout_percent: float = Field(10.0, ge=0, le=100)
    max_per_day: int | None = Field(
        DEFAULT_MAX_PER_DAY,
        ge=0,
        description=f"Coupons per UTC day at most (null, or {UNLIMITED!r} in the file: no cap).",
    )
    max_total: int | None = Field(
        None, ge=0, description=f"Coupons in total at most (null or {UNLIMITED!r}: no cap)."
    )

    # abuse (issue 12, item 7): who may get a coupon at all
    min_account_age_hours: float | None = Field(
        None,
        gt=0,
        le=24 * 365,
        description="The account must be at least this old, from the shop's signed_up_at "
        "(a user without one is refused).",
    )
    require_attributes: tuple[AttributeName, ...] = Field(
        (),
        max_length=20,
        description="User attributes that must hold true (e.g. email_verified).",
    )
    conversion_window_hours: float | None = Field(
        None,
        gt=0,
        le=24 * 365,
        description="A purchase this long after the decision counts as a conversion "
        "(default: the coupon's time to live).",
    )
    evaluate_on_view: bool = Field(
        False, description="Evaluate a user automatically when a view event arrives."
    )

    # --- the lifecycle kinds' own fields (issue 12, item 2); which kind reads which is
    # KIND_FIELDS, and service.offers.occasions applies them
    min_orders: int = Field(
        2,
        ge=1,
        le=10_000,
        description="win_back: orders the customer must have made; frequent_buyer: orders "
        "within within_days that earn the thank-you (again at every multiple).",
    )
    lapse_rhythm_factor: float | None = Field(
        2.0,
        gt=1,
        le=100,
        description="win_back: lapsed once the last order is older than this many of the "
        "customer's own intervals between orders (null: lapse_days only).",
    )
    lapse_days: float = Field(
        90.0,
        gt=0,
        le=3650,
        description="win_back: lapsed after this many days without an order when the "
        "customer's interval is unknown (one order) or lapse_rhythm_factor is null.",
    )
    min_lapse_days: float = Field(
        14.0, ge=0, le=3650, description="win_back: never lapsed sooner than this."
    )
    max_lapse_days: float | None = Field(
        730.0,
        gt=0,
        le=36500,
        description="win_back: customers gone longer than this are left alone (null: never).",
    )
    within_days: float = Field(
        90.0, gt=0, le=3650, description="frequent_buyer: the window the orders are counted in."
    )
    days_before: int = Field(
        3,
        ge=0,
        le=60,
        description="purchase_anniversary, birthday: the offer opens this many days before "
        "the date.",
    )
    days_after: int = Field(
        7,
        ge=0,
        le=60,
        description="purchase_anniversary, birthday: and closes this many days after it.",
    )
    birthday_attribute: AttributeName = Field(
        "birthday",
        description="birthday: the user attribute holding it, 'MM-DD' or 'YYYY-MM-DD'.",
    )
    cart_idle_hours: float = Field(
        4.0,
        gt=0,
        le=24 * 60,
        description="abandoned_cart: hours after the last add-to-cart without a purchase.",
    )
    cart_max_age_hours: float = Field(
        72.0,
        gt=0,
        le=24 * 365,
        description="abandoned_cart: a cart older than this (from its last add) is left alone.",
    )
    # the schedule of the time-driven kinds (service.offers.schedule)
    run_every_minutes: float | None = Field(
        None,
        ge=1,
        le=60 * 24 * 31,
        description="Time-driven kinds: the service sweeps the campaign when its last run is "
        "older than this (default: 60 for abandoned_cart, 1440 for the others).",
    )

    # --- money (issue 12, item 3)
    fixed_discount: Amount | None = Field(
        None,
        gt=0,
        description="A fixed amount off (in currency) instead of discount_percent, capped at "
        'the eligible amount; exact, a string such as "5.00".',
    )
    currency: Currency | None = Field(
        None,
        description="The currency of fixed_discount, min_order_amount and the money budgets; "
        "its coupons are redeemed in it only. Required with any of them.",
    )
    min_order_amount: Amount | None = Field(
        None, gt=0, description="A redemption needs an order of at least this (in currency)."
    )
    max_discount_per_day: Amount | None = Field(
        None,
        description="Discount given per UTC day at most, counted at redemption (in currency); "
        "once reached, no coupon is issued that day. Null: no money cap.",
    )
    max_discount_total: Amount | None = Field(
        None, description="Discount given in total at most, likewise (null: no money cap)."
    )

    # --- targeting (issue 12, item 4)
    # who the campaign speaks to (service.offers.audience) and where its coupon works
    # (service.offers.targeting)
    audience: tuple[str, ...] = Field(
        (),
        max_length=len(SEGMENTS),
        description="Only users in these segments (lifecycle stages, loyalty types, 'unknown' "
        "for users without one); within an axis any listed value, both axes when both are "
        "listed. Empty: everyone.",
    )
    exclude_segments: tuple[str, ...] = Field(
        (),
        max_length=len(SEGMENTS),
        description="Users in any of these segments are refused (e.g. 'mercenary').",
    )
    uplift_targeting: bool = Field(
        False,
        description="Treat only the segments whose uplift, measured on this campaign's own "
        "holdout, has a 95 % lower bound above zero (still learning: treated as usual).",
    )
    uplift_by: Axis = Field(
        "loyalty_type", description="uplift_targeting: the axis whose segments are measured."
    )
    uplift_min_users: int = Field(
        200,
        ge=10,
        le=10_000_000,
        description="uplift_targeting: treated and held-out users a segment needs, each, "
        "before its uplift decides.",
    )
    uplift_exploration_percent: float = Field(
        10.0,
        ge=0,
        le=100,
        description="uplift_targeting: share of a left-out segment's users (outside the "
        "holdout) still treated, so its uplift keeps being measured.",
    )
    uplift_refresh_seconds: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="uplift_targeting: how long the per-segment verdicts are reused.",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_of_kind(cls, data: Any) -> Any:
        """A campaign without a name is named after its kind (not the built-in's name)."""
        if isinstance(data, dict) and "name" not in data:
            kind = data.get("kind", BUILT_IN)
            if isinstance(kind, str) and kind in KIND_NAMES:
                data = {**data, "name": KIND_NAMES[kind]}
        return data

    @field_validator("max_per_day", "max_total", mode="before")
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        return None if value == UNLIMITED else value

    @field_validator("audience", "exclude_segments")
    @classmethod
    def _known_segments(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in SEGMENTS]
        if unknown:
            raise ValueError(
                f"unknown segment(s) {', '.join(map(repr, unknown))} (known: {', '.join(SEGMENTS)})"
            )
        if len(set(names)) != len(names):
            raise ValueError("names a segment twice")
        return names

    @model_validator(mode="after")
    def _targeting(self) -> Campaign:
        both = sorted(set(self.audience) & set(self.exclude_segments))
        if both:
            raise ValueError(f"exclude_segments: {', '.join(both)} also in the audience")
        tuning = sorted(n for n in self.model_fields_set if n in UPLIFT_FIELDS)
        if tuning and not self.uplift_targeting:
            raise ValueError(f"{', '.join(tuning)}: only read with uplift_targeting = true")
        if self.uplift_targeting and self.holdout_percent <= 0:
            raise ValueError(
                "uplift_targeting: needs holdout_percent above 0 (the holdout measures it)"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if self.active_from and self.active_until and self.active_from >= self.active_until:
            raise ValueError("active_from must be before active_until")
        age = self.min_account_age_hours
        new_user = self.kind == "new_user_high_intent"
        if new_user and age is not None and age >= self.new_user_window_hours:
            raise ValueError(
                "min_account_age_hours must be shorter than new_user_window_hours "
                "(no account could be both old enough and still new)"
            )
        if len(set(self.require_attributes)) != len(self.require_attributes):
            raise ValueError("require_attributes names an attribute twice")
        return self

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Campaign:
        foreign = sorted(
            name
            for name in self.model_fields_set
            if name in KIND_SPECIFIC and name not in KIND_FIELDS[self.kind]
        )
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)}: not a field of kind {self.kind!r} "
                f"(its own: {', '.join(sorted(KIND_FIELDS[self.kind])) or 'none'})"
            )
        if self.kind == "abandoned_cart" and self.cart_idle_hours >= self.cart_max_age_hours:
            raise ValueError("cart_idle_hours must be shorter than cart_max_age_hours")
        longest = self.max_lapse_days
        if self.kind == "win_back" and longest is not None and longest <= self.min_lapse_days:
            raise ValueError("max_lapse_days must be longer than min_lapse_days")
        return self

    @field_validator(
        "fixed_discount",
        "min_order_amount",
        "max_discount_per_day",
        "max_discount_total",
        mode="before",
    )
    @classmethod
    def _money_not_float(cls, value: Any) -> Any:
        if isinstance(value, float | bool):  # a binary float is not an exact amount
            raise ValueError('money is exact: write it as a string ("5.00") or an integer')
        return value

    @model_validator(mode="after")
    def _money(self) -> Campaign:
        """Money needs its currency, and a discount is a percent or a fixed amount."""
        if self.fixed_discount is not None and "discount_percent" in self.model_fields_set:
            raise ValueError("a discount is discount_percent or fixed_discount, not both")
        money = [name for name in MONEY_FIELDS if getattr(self, name) is not None]
        if money and self.currency is None:
            raise ValueError(f"{', '.join(money)}: needs currency (ISO 4217, e.g. EUR)")
        return self

    @property
    def discount_kind(self) -> Literal["percent", "fixed"]:
        """``fixed`` with a ``fixed_discount``, else ``percent`` (every campaign before)."""
        return "percent" if self.fixed_discount is None else "fixed"

    @property
    def recurring(self) -> bool:
        """Decided once per user per occurrence (``occasions.occasion``), not once per user."""
        return self.kind in RECURRING

    @property
    def time_driven(self) -> bool:
        """Its users qualify as time passes, so it runs on a schedule, not on a page view."""
        return self.kind in TIME_DRIVEN

    @property
    def run_every(self) -> timedelta | None:
        """How often the service sweeps a time-driven campaign (None: not time-driven)."""
        if not self.time_driven:
            return None
        minutes = self.run_every_minutes
        if minutes is None:
            minutes = DEFAULT_RUN_EVERY_MINUTES.get(self.kind, 24 * 60)
        return timedelta(minutes=minutes)

    @property
    def min_account_age(self) -> timedelta | None:
        hours = self.min_account_age_hours
        return None if hours is None else timedelta(hours=hours)

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.new_user_window_hours)

    @property
    def coupon_ttl(self) -> timedelta:
        return timedelta(hours=self.coupon_ttl_hours)

    @property
    def conversion_window(self) -> timedelta:
        return timedelta(hours=self.conversion_window_hours or self.coupon_ttl_hours)

    def is_active(self, now: datetime) -> bool:
        """Enabled and inside ``[active_from, active_until)``."""
        if not self.enabled:
            return False
        if self.active_from is not None and now < self.active_from:
            return False
        return self.active_until is None or now < self.active_until

    def public(self) -> dict[str, Any]:
        """The definition as the API shows it, every default in; a fixed discount shows no
        ``discount_percent`` (its default would read as a second discount), no kind shows the
        fields of other kinds, nor a campaign the tuning of uplift targeting it does not use; so
        what it shows validates again as the same campaign."""
        exclude = set(KIND_SPECIFIC - KIND_FIELDS[self.kind])  # other kinds' say nothing
        if self.fixed_discount is not None:
            exclude.add("discount_percent")
        if not self.uplift_targeting:
            exclude.update(UPLIFT_FIELDS)
        return self.model_dump(mode="json", exclude=exclude)


# the money fields that need the campaign's currency (issue 12, item 3)
MONEY_FIELDS = ("fixed_discount", "min_order_amount", "max_discount_per_day", "max_discount_total")


# the fields that belong to one kind or a few; every other field applies to all kinds
# (evaluate_on_view too: the lifecycle kinds qualify as time passes, not at a view, and their
# schedule sweeps them)
_NEW_USER = frozenset(
    (
        "new_user_window_hours",
        "min_views",
        "count",
        "require_no_purchase",
        "expire_at_window_end",
        "evaluate_on_view",
    )
)
_DATES = frozenset(("days_before", "days_after"))
_SCHEDULED = frozenset(("run_every_minutes",))  # every time-driven kind
KIND_FIELDS: dict[CampaignKind, frozenset[str]] = {
    "new_user_high_intent": _NEW_USER,
    "win_back": frozenset(
        ("min_orders", "lapse_rhythm_factor", "lapse_days", "min_lapse_days", "max_lapse_days")
    )
    | _SCHEDULED,
    "purchase_anniversary": _DATES | _SCHEDULED,
    "birthday": _DATES | {"birthday_attribute"} | _SCHEDULED,
    "frequent_buyer": frozenset(("min_orders", "within_days")) | _SCHEDULED,
    "abandoned_cart": frozenset(("cart_idle_hours", "cart_max_age_hours")) | _SCHEDULED,
}
# a cart goes cold in hours, the other moments in days
DEFAULT_RUN_EVERY_MINUTES: dict[CampaignKind, float] = {"abandoned_cart": 60.0}
KIND_SPECIFIC: frozenset[str] = frozenset().union(*KIND_FIELDS.values())
# the name of a campaign that gives none
KIND_NAMES: dict[str, str] = {
    "new_user_high_intent": "Coupon for hesitating new users",
    "win_back": "Win back lapsed customers",
    "purchase_anniversary": "Anniversary of the first order",
    "birthday": "Birthday coupon",
    "frequent_buyer": "Thank-you for frequent buyers",
    "abandoned_cart": "Abandoned cart reminder",
}
# the fields uplift targeting reads, refused without it (a typo must not look like targeting)
UPLIFT_FIELDS = frozenset(
    ("uplift_by", "uplift_min_users", "uplift_exploration_percent", "uplift_refresh_seconds")
)


def find_campaign(campaigns: Mapping[str, Campaign], campaign_id: str) -> Campaign:
    """The campaign ``campaign_id`` of ``campaigns``; raises UnknownCampaign (404) otherwise."""
    try:
        return campaigns[campaign_id]
    except KeyError:
        raise UnknownCampaign(campaign_id) from None


def load_campaigns(path: Path | None) -> dict[str, Campaign]:
    """The campaigns of ``path`` (TOML) on top of the built-in one, by id, built-in first.

    Raises:
        CampaignConfigError: the file is missing, not TOML, or a campaign is invalid; the
            message names the file, the campaign and the field.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise CampaignConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise CampaignConfigError(f"{path}: not valid TOML ({exc})") from None
        unknown = set(document) - {"campaigns"}
        if unknown:
            raise CampaignConfigError(
                f"{path}: unknown top-level key(s) {sorted(unknown)}; put campaigns under "
                "[campaigns.<id>]"
            )
        raw = document.get("campaigns", {})
        if not isinstance(raw, dict):
            raise CampaignConfigError(f"{path}: 'campaigns' must be a table of tables")
    campaigns: dict[str, Campaign] = {}
    for campaign_id in [BUILT_IN, *(c for c in raw if c != BUILT_IN)]:
        fields = raw.get(campaign_id, {})
        if not isinstance(fields, dict):
            raise CampaignConfigError(f"{path}: [campaigns.{campaign_id}] must be a table")
        try:
            campaigns[campaign_id] = Campaign.model_validate({**fields, "campaign_id": campaign_id})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "campaign"
            raise CampaignConfigError(
                f"{path}: campaign {campaign_id!r}, {where}: {first.get('msg', 'invalid')}"
            ) from None
    return campaigns
