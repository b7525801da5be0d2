"""Request and response bodies. Requests refuse unknown fields; every size is bounded."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
)

from service.ids import EventId, ItemId, OrderId, ShopId, UserId
from service.money import Amount, Currency
from service.offers.campaigns import BUILT_IN, CampaignId
from service.offers.kinds import CouponState, DecisionKind, FinalKind

# every id of the shop's: one alphabet (service.ids); ``Id`` names any of them
Id = ShopId
# a category is a label, not an id: it never travels in a URL path, so only control characters
# and blanks at either end are refused
Category = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^\S(?:[^\x00-\x1f]*\S)?$"),
    Field(description="A label such as 'Home decor': no control character, no blank at an end."),
]
Text = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\x00]*$")]  # no NUL


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("date out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
AttributeValue = Text | int | float | bool | None
EventType = Literal["view", "add_to_cart", "purchase", "sign_up"]


# on every response that carries a coupon code: no browser, proxy or CDN keeps a copy
NO_STORE = {"Cache-Control": "no-store"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class UserIn(Strict):
    signed_up_at: UtcDatetime | None = Field(
        None,
        description="When the user signed up (with a time zone).",
        examples=["2026-11-23T09:30:00Z"],
    )
    attributes: dict[Annotated[Text, StringConstraints(max_length=64)], AttributeValue] | None = (
        Field(None, max_length=50, description="Free-form attributes, replaced as a whole.")
    )


class UserOut(BaseModel):
    user_id: str
    signed_up_at: datetime | None
    first_seen_at: datetime
    attributes: dict[str, Any]


class ErasureOut(BaseModel):
    """The answer to an erasure, the same status on every repeat (issue 11, item 2)."""

    erased_at: datetime = Field(description="When the user was first erased.")
    removed: dict[str, int] = Field(
        description="Rows this call deleted or unlinked, per table (zeros on a repeat)."
    )


class UserExport(BaseModel):
    """Everything the service holds about one user (issue 11, item 2)."""

    user_id: str
    erased_at: datetime | None = Field(description="When the user was erased; null if never.")
    tables: dict[str, list[dict[str, Any]]] = Field(
        description="Every row naming the user, per table (times in ISO 8601, amounts exact)."
    )
    recent_activity: list[dict[str, Any]] = Field(
        description="The recent events this worker keeps in memory for the user."
    )
    model: dict[str, Any] | None = Field(
        description="What the served model holds: version, in_model, purchases (item_id, "
        "orders), served_personally; null without a model."
    )


class EventIn(Strict):
    user_id: UserId
    type: EventType
    item_id: ItemId | None = Field(
        None, description="Required except for sign_up.", validate_default=True
    )
    timestamp: UtcDatetime | None = Field(None, description="When it happened; default now.")
    order_id: OrderId | None = None
    client_event_id: EventId | None = Field(
        None, description="Your id for this event: a retry with the same id is not counted twice."
    )
    # issue 11, item 10: what a purchase line says (purchases only)
    quantity: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        strict=True,
        description="Purchase only: units bought (default 1); the trainer weighs it.",
    )
    price: Amount | None = Field(
        None, description='Purchase only: the unit price, exact ("12.50"); needs currency.'
    )
    currency: Currency | None = Field(
        None,
        description="The price's ISO 4217 currency; required with price.",
        validate_default=True,
    )

    @field_validator("item_id")
    @classmethod
    def _item_needed(cls, item_id: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if item_id is None and kind is not None and kind != "sign_up":
            raise ValueError(f"item_id is required for {kind} events")
        return item_id

    @field_validator("quantity", "price")
    @classmethod
    def _purchase_only(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if value is not None and kind is not None and kind != "purchase":
            raise ValueError(f"{info.field_name} is only for purchase events, not {kind}")
        return value

    @field_validator("currency")
    @classmethod
    def _currency_with_price(cls, currency: str | None, info: ValidationInfo) -> str | None:
        if currency is None and info.data.get("price") is not None:
            raise ValueError("a price needs its currency")
        return currency


class EventBatch(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


def _event_shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "one"


# one event or a batch, told apart by the "events" key, so errors name the fields of one shape
EventsBody = Annotated[
    Annotated[EventIn, Tag("one")] | Annotated[EventBatch, Tag("batch")],
    Discriminator(_event_shape),
]


class IngestOut(BaseModel):
    accepted: int = Field(description="Events stored now.")
    duplicates: int = Field(description="Events skipped: their client_event_id was seen before.")


ItemAttributes = dict[Annotated[Text, StringConstraints(max_length=64)], AttributeValue]


class ItemIn(Strict):
    name: Text | None = None
    category: Category | None = None
    price: Amount | None = Field(None, description='Exact unit price ("12.50"); needs currency.')
    currency: Currency | None = Field(
        None,
        description="The price's ISO 4217 currency; required with price.",
        validate_default=True,
    )
    in_stock: bool | None = None
    attributes: ItemAttributes | None = Field(
        None, max_length=50, description="Free-form attributes (JSON), replaced as a whole."
    )

    @field_validator("price", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `false` is not a price
            raise ValueError("a price is a decimal string or number")
        return value

    @field_validator("currency")
    @classmethod
    def _currency_with_price(cls, currency: str | None, info: ValidationInfo) -> str | None:
        if currency is None and info.data.get("price") is not None:
            raise ValueError("a price needs its currency")
        return currency


class ItemOut(BaseModel):
    item_id: str
    name: str | None
    category: str | None
    price: Decimal | None = Field(description="Exact, as a string.")
    currency: str | None
    in_stock: bool | None
    attributes: dict[str, Any] | None
    status: Literal["active", "hidden", "deleted"] = Field(
        description="hidden and deleted items are never recommended."
    )
    updated_at: datetime


class ItemUpsert(ItemIn):
    op: Literal["upsert"]
    item_id: Id


class ItemAction(Strict):
    op: Literal["hide", "show", "delete"]
    item_id: Id


ItemOperation = Annotated[ItemUpsert | ItemAction, Field(discriminator="op")]


class ItemBatchIn(Strict):
    items: list[ItemOperation] = Field(
        min_length=1,
        max_length=10_000,  # the setting RECOFFER_MAX_BATCH_ITEMS bounds it further
        description="Applied in order, in one transaction: all or nothing. upsert: create or "
        "update (fields not sent keep their value; brings a deleted item back); hide: kept "
        "but never recommended; show: undo hide; delete: never recommended, fields cleared.",
    )


class ItemResultOut(BaseModel):
    item_id: str
    op: str
    result: Literal["created", "updated", "hidden", "shown", "deleted", "not_found"] = Field(
        description="not_found: hide, show or delete of an item that does not exist."
    )


class ItemBatchOut(BaseModel):
    results: list[ItemResultOut] = Field(description="One per operation, in the order sent.")


class RecommendationFilters(BaseModel):
    """What a list may hold: its length and its filters (GET query or POST body)."""

    limit: int = Field(10, ge=1, le=100, description="How many items.")
    exclude_purchased: bool = Field(False, description="Leave out items the user already bought.")
    exclude: list[ItemId] = Field(
        default_factory=list, max_length=100, description="Item ids to leave out (repeatable)."
    )
    category: Category | None = Field(None, description="Only items of this category.")
    in_stock: bool = Field(
        False, description="Only items the catalogue does not mark out of stock."
    )
    purchased_within_days: int | None = Field(
        None, ge=1, le=3650, description="Replenishment: only items bought in the last N days."
    )


class RecommendationParams(RecommendationFilters):
    """Path and query parameters of the GET endpoint (validated in one step)."""

    model_config = ConfigDict(extra="ignore")  # unknown query parameters (cache busters) pass

    user_id: UserId = Field(description="The shop's user id.", examples=["17850"])
    include_offer: bool = Field(
        False,
        description="Also return the offer already decided for the user, with its coupon. A GET "
        "never decides: POST the same parameters with decide_offer to decide now.",
    )


class RecommendationsIn(RecommendationFilters):
    """The POST body: the GET's parameters, and whether to decide the user's offer now."""

    model_config = ConfigDict(extra="forbid")

    decide_offer: bool = Field(
        True,
        description="Decide the user's offer now (recorded like /v1/offers/evaluate) and return "
        "it with its coupon: products and offer in one call. false: only an offer already "
        "decided.",
    )


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reason: str = Field(examples=["because you bought WHITE HANGING HEART T-LIGHT HOLDER"])
    source: Literal["model", "session", "popular"]


class RecommendationsOut(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    source: Literal["model", "session", "popular"] = Field(
        description="model: known user; session: folded in from recent events; popular: fallback"
    )
    model_version: str | None
    request_id: str
    offer: DecisionOut | None = Field(
        None,
        description="The offer decision found (GET with include_offer=true) or made now (POST), "
        "with the coupon to show; null when no campaign is active or, on a GET, none has "
        "decided yet. A response with a coupon is never cached (Cache-Control: no-store).",
    )


class SimilarOut(BaseModel):
    item_id: str
    items: list[RecommendedItem]
    model_version: str
    request_id: str


class ModelOut(BaseModel):
    version: str
    trained_at: str
    data_until: str
    loaded_at: datetime
    served: dict[str, str]
    metrics: dict[str, Any]
    counts: dict[str, Any]
    signals: dict[str, Any] | None = Field(
        None,
        description="Views and add-to-carts the model learnt from (counts and weights); "
        "null when it learnt from purchases only.",
    )
    candidates_precomputed: bool


class ReloadOut(BaseModel):
    changed: bool
    version: str | None


class ErrorOut(BaseModel):
    error: str = Field(examples=["invalid_request"])
    detail: Any = Field(
        None,
        examples=[[{"field": "limit", "message": "Input should be less than or equal to 100"}]],
    )


# --- offers ------------------------------------------------------------------------------

CampaignRef = CampaignId


class EvaluateIn(Strict):
    user_id: UserId
    campaign_id: CampaignRef = Field(
        BUILT_IN, description="Which campaign decides (default: the built-in)."
    )


class CouponOut(BaseModel):
    code: str = Field(description="Show this to the customer.", examples=["ABCD-EFGH-JKMN-PQRS"])
    campaign_id: str
    user_id: str | None = Field(description="Null once the user was erased.")
    status: CouponState
    discount_percent: float
    item_ids: list[str] | None = Field(description="Only these products; null: store-wide.")
    issued_at: datetime
    expires_at: datetime
    seconds_left: int
    attribution_id: str = Field(description="Shared by the decision, the coupon and its use.")


class DecisionOut(BaseModel):
    campaign_id: str
    user_id: str
    decision: DecisionKind
    reasons: list[str] = Field(
        description="not_eligible: campaign_inactive, unknown_user, not_new, too_few_views, "
        "already_purchased, account_age_unknown, account_too_new, attribute_not_true:<name>; "
        "the lifecycle kinds': too_few_orders, not_lapsed, lapsed_too_long, no_order, "
        "not_anniversary, birthday_unknown, birthday_invalid, not_birthday, "
        "too_few_recent_orders, no_open_cart, cart_still_active, cart_too_old; "
        "budget_exhausted: the cap reached (cap_total or cap_<day>)"
    )
    views: int | None = Field(description="Views counted inside the window.")
    min_views: int | None
    previous_decision: FinalKind | None = Field(
        description="already_decided: what was decided the first time."
    )
    attribution_id: str | None
    decided_at: datetime | None
    coupon: CouponOut | None
    occurrence: str = Field(
        "",
        description="A recurring campaign's occurrence (lapse:<day>, year:<year>, orders:<m>, "
        "cart:<time>): decided once per user per occurrence; '' for a once-per-user campaign.",
    )


class UserOffersOut(BaseModel):
    user_id: str
    offers: list[CouponOut] = Field(description="Active coupons, the soonest to expire first.")


class RedeemIn(Strict):
    user_id: UserId = Field(description="The customer placing the order; must own the coupon.")
    order_id: OrderId = Field(
        description="A retry with the same order id is answered like the first."
    )
    order_amount: Amount | None = Field(
        None,
        description="What the discount applies to, before it (the order total; for a coupon "
        'restricted to products, those products\' total), exact: a string such as "80.00". '
        "Kept in the coupon's trail and reported as the discount's cost.",
    )
    currency: Currency | None = Field(
        None, validate_default=True, description="The order's currency; required with an amount."
    )

    @field_validator("currency")
    @classmethod
    def _currency_with_amount(cls, currency: str | None, info: ValidationInfo) -> str | None:
        if "order_amount" not in info.data:
            return currency  # the amount itself was refused; that error names it
        if info.data["order_amount"] is not None and currency is None:
            raise ValueError("required with order_amount (ISO 4217, e.g. EUR)")
        if info.data["order_amount"] is None and currency is not None:
            raise ValueError("given without order_amount")
        return currency


class ReleaseIn(Strict):
    user_id: UserId
    order_id: OrderId = Field(
        description="The order that redeemed the coupon and was cancelled (409 for another)."
    )


class RedemptionOut(BaseModel):
    coupon: CouponOut
    order_id: str | None
    redeemed_at: datetime | None
    order_amount: Decimal | None = Field(description="As sent with the redemption.")
    discount_amount: Decimal | None = Field(
        description="order_amount x discount, exact to 4 decimals, when an amount was sent."
    )
    currency: str | None = Field(description="The currency of both amounts.")
    replayed: bool = Field(description="True when this repeats an earlier, successful call.")


class LedgerEntryOut(BaseModel):
    action: Literal["redeem", "release"]
    redemption: int = Field(description="Which redemption of the coupon; a release undoes it.")
    order_id: str
    user_id: str | None = Field(description="null once the user was erased.")
    order_amount: Decimal | None
    discount_amount: Decimal | None
    currency: str | None
    actor: str = Field(description="The calling API key's role and fingerprint (not the key).")
    at: datetime


class CouponTrailOut(BaseModel):
    code: str
    campaign_id: str
    entries: list[LedgerEntryOut] = Field(description="Every redemption and release, in order.")


class CampaignOut(BaseModel):
    campaign_id: str
    active_now: bool
    definition: dict[str, Any] = Field(description="Every parameter, defaults included.")


class CampaignsOut(BaseModel):
    campaigns: list[CampaignOut]


class SweepJobOut(BaseModel):
    """A campaign sweep run in the background (issue 11, item 11)."""

    job_id: str
    campaign_id: str
    state: Literal["queued", "running", "done", "failed"] = Field(
        description="failed: the sweep raised, its worker shut down, or its worker went silent "
        "(no heartbeat for RECOFFER_SWEEP_STALE_SECONDS); run the campaign again to finish."
    )
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime = Field(description="Written by the running worker after each batch.")
    evaluated: int | None = Field(
        description="Users inside the window without a final decision (None until counted); "
        "for a lifecycle kind, the candidates its SQL pre-filter found."
    )
    processed: int = Field(description="Of those, how many are done.")
    progress: float | None = Field(description="processed / evaluated.")
    eligible: int = Field(
        description="Users the rule accepted: issued, holdout, budget "
        "exhausted or decided meanwhile by another call."
    )
    issued: int
    holdout: int
    budget_exhausted: int
    not_eligible: int
    already_decided: int
    seconds: float | None = Field(description="The sweep's own time, once done.")
    error: str | None


class SweepJobsOut(BaseModel):
    campaign_id: str
    jobs: list[SweepJobOut] = Field(description="The latest requested first.")


class IntervalOut(BaseModel):
    estimate: float
    low: float = Field(description="95 % interval, lower end.")
    high: float


class CampaignStatsOut(BaseModel):
    campaign_id: str
    at: datetime
    eligible: int = Field(description="Users found eligible: issued + holdout + budget_exhausted.")
    decisions: dict[str, int]
    coupons: dict[str, int] = Field(
        description="issued, active, redeemed (standing redemptions), expired; from the "
        "coupons' trail: redemptions (all, released ones included) and releases."
    )
    budget: dict[str, int | None]
    converted: dict[str, int] = Field(
        description="Users with a purchase within the conversion window after the decision."
    )
    conversion: dict[str, IntervalOut | None] = Field(
        description="treated and holdout conversion rates with Wilson 95 % intervals."
    )
    uplift: IntervalOut | None = Field(
        description="Treated minus holdout conversion, Newcombe 95 % interval."
    )
    open_windows: int = Field(description="Decided users still inside their conversion window.")
    discount_cost: dict[str, Decimal] = Field(
        description="Discount given on the redemptions standing (released ones excluded), by "
        "currency, exact, from the coupons' trail; XXX: amounts recorded before currencies were."
    )
    discount_cost_estimated: Decimal = Field(
        description="Estimated from catalogue prices for standing redemptions sent without an "
        "amount (in the catalogue's currency; not part of discount_cost)."
    )

    unpriced_orders: int
    notes: list[str]


RecommendationsOut.model_rebuild()
