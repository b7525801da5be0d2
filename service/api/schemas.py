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
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from service.ids import (
    ID_MAX_LENGTH,
    ID_PATTERN,
    EventId,
    ItemId,
    OrderId,
    ShopId,
    UserId,
    id_problem,
)
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
EventType = Literal["view", "add_to_cart", "purchase", "sign_up", "impression", "click"]
# issue 14: the feedback events, stored in rec_impressions / rec_clicks (service.feedback)
FEEDBACK_EVENTS = ("impression", "click")
Placement = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$"),
    Field(description="Where the list was shown: home, product, cart, ...", examples=["home"]),
]
# an impression's list: at most this many items shown, each at a place below this
MAX_SHOWN = 100
SEND_ITEMS = (
    "an impression is the list shown: send items (the ids shown, in order) and, when they are "
    "not the list's first places, positions; not item_id or position"
)
ShownPosition = Annotated[int, Field(ge=0, le=999, strict=True)]
# an item id checked in pydantic-core alone (no Python call per id: a list has up to 100)
ShownItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
]
ListId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512),
    Field(description="The recommendations response's request_id, unchanged."),
]


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
    pending: list[str] = Field(
        default_factory=list,
        description="Stores whose delete could not be made now and is retried by the service "
        "(redis_session: Redis could not be reached; not in removed then).",
    )


class UserExport(BaseModel):
    """Everything the service holds about one user (issue 11, item 2)."""

    user_id: str
    erased_at: datetime | None = Field(description="When the user was erased; null if never.")
    tables: dict[str, list[dict[str, Any]]] = Field(
        description="Every row naming the user, per table (times in ISO 8601, amounts exact)."
    )
    recent_activity: list[dict[str, Any]] = Field(
        description="The recent events kept for the user: their list in Redis when "
        "RECOFFER_REDIS_URL is set, else what this worker keeps in memory."
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

    # issue 14, item 1: what an impression or a click says (those two types only)
    request_id: ListId | None = Field(
        None,
        description="Impression and click only (required): the request_id of the "
        "recommendations response that showed the item.",
        validate_default=True,
    )
    placement: Placement | None = Field(
        None,
        description="Impression (required) and click (optional): where the list was shown.",
        validate_default=True,
    )
    # issue 14: an impression is the list shown, one event per list (its items in one field)
    items: list[ShownItemId] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SHOWN,
        validate_default=True,
        description="Impression only (required): the ids of the items shown, in the order "
        f"shown (1 to {MAX_SHOWN}).",
    )
    positions: list[ShownPosition] | None = Field(
        None,
        max_length=MAX_SHOWN,
        description="Impression only: each shown item's 0-based place in the served list "
        "(default 0, 1, ...): as many as items, distinct.",
    )
    position: int | None = Field(
        None, description="Not taken: an impression sends items (and positions)."
    )

    @field_validator("item_id")
    @classmethod
    def _item_needed(cls, item_id: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind == "impression":
            if item_id is not None:
                raise ValueError(SEND_ITEMS)
            return None
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

    @field_validator("request_id")
    @classmethod
    def _feedback_needs(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if kind is None:
            return value
        needed = kind in FEEDBACK_EVENTS
        if needed and value is None:
            raise ValueError(f"{info.field_name} is required for {kind} events")
        if not needed and value is not None:
            raise ValueError(f"{info.field_name} is not for {kind} events")
        return value

    @field_validator("position")
    @classmethod
    def _no_position(cls, value: int | None, info: ValidationInfo) -> None:
        if value is not None:
            if info.data.get("type") == "impression":
                raise ValueError(SEND_ITEMS)
            raise ValueError("position is not taken: an impression sends items and positions")
        return None

    @field_validator("items", mode="wrap")
    @classmethod
    def _items_of_impressions(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        kind = info.data.get("type")
        if value is None:
            if kind == "impression":
                raise ValueError("items is required for impression events (the ids shown)")
            return None
        if kind is not None and kind != "impression":
            raise ValueError(f"items is only for impression events, not {kind}")
        try:  # each id checked by pydantic-core's pattern; the id's own words when it fails
            items: list[str] = handler(value)
        except ValidationError:
            for n, v in enumerate(value if isinstance(value, list) else ()):
                problem = id_problem(v) if isinstance(v, str) else None
                if problem is not None:
                    raise ValueError(f"items.{n}: {problem}") from None
            raise
        if len(set(items)) != len(items):
            raise ValueError("items must not repeat an id")
        return items

    # runs only on a value sent (no validate_default): the other events pay nothing for it
    @field_validator("positions")
    @classmethod
    def _positions_match(cls, positions: list[int] | None, info: ValidationInfo) -> Any:
        if positions is None:
            return None
        kind = info.data.get("type")
        if kind is not None and kind != "impression":
            raise ValueError(f"positions is only for impression events, not {kind}")
        items = info.data.get("items")
        if items is not None and len(positions) != len(items):
            raise ValueError(f"{len(positions)} positions for {len(items)} items: one each")
        if len(set(positions)) != len(positions):
            raise ValueError("positions must be distinct")
        return positions


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
    duplicates: int = Field(
        description="Events skipped: their client_event_id was seen before (an impression: "
        "also the same request_id; a click: the same request_id and item_id)."
    )


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
    created_at: datetime | None = Field(
        None, description="When the catalogue first saw the item (new arrivals count from it)."
    )


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
        False,
        description="Only items the catalogue says are in stock (items marked out of stock are "
        "never listed anyway; true also leaves out those whose stock was never sent).",
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
    source: Literal["model", "session", "popular", "new_arrivals"]


class RecommendationsOut(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    source: Literal["model", "session", "popular", "new_arrivals"] = Field(
        description="model: known user; session: folded in from recent events; popular: "
        "fallback; new_arrivals: products newer than the model (issue 14, item 4)"
    )
    model_version: str | None
    recipe: str = Field(
        description="The scoring recipe that ranked the list: all (repurchases allowed), novel "
        "(exclude_purchased), or an experiment's candidate recipe."
    )
    experiment_id: str | None = Field(
        None, description="The A/B test this user is in (null: none running)."
    )
    arm: Literal["control", "candidate"] | None = Field(
        None, description="The experiment's arm that served this list (null: no experiment)."
    )
    request_id: str = Field(
        description="The list's id: send it, unchanged, with the list's impression and click "
        "events. Signed: it says which model version, recipe, arm and source made each "
        "position (service/feedback/token.py)."
    )
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
    # the money terms (issue 12, item 3)
    discount_kind: Literal["percent", "fixed"] = Field(
        "percent",
        description="percent: discount_percent of the eligible amount; fixed: "
        "fixed_discount, capped at the eligible amount.",
    )
    fixed_discount: Decimal | None = Field(None, description="The fixed amount, in currency.")
    currency: str | None = Field(
        None,
        description="The currency of fixed_discount and min_order_amount: the order must be "
        "in it (null: any currency).",
    )
    min_order_amount: Decimal | None = Field(
        None, description="The order must be at least this (null: no minimum)."
    )


class DecisionOut(BaseModel):
    campaign_id: str
    user_id: str
    decision: DecisionKind = Field(
        description="Targeting (issue 12, item 4) adds the reasons not_in_audience and "
        "excluded_segment:<name> to not_eligible, and not_targeted (no coupon, final) with "
        "no_measured_uplift:<segment>."
    )
    reasons: list[str] = Field(
        description="not_eligible: campaign_inactive, unknown_user, not_new, too_few_views, "
        "already_purchased, account_age_unknown, account_too_new, attribute_not_true:<name>; "
        "the lifecycle kinds': too_few_orders, not_lapsed, lapsed_too_long, no_order, "
        "not_anniversary, birthday_unknown, birthday_invalid, not_birthday, "
        "too_few_recent_orders, no_open_cart, cart_still_active, cart_too_old; "
        "budget_exhausted: the cap reached (cap_total or cap_<day>; a money budget: "
        "budget_money_total or budget_money_day)"
    )
    views: int | None = Field(description="Views counted inside the window.")
    min_views: int | None
    previous_decision: FinalKind | None = Field(
        description="already_decided: what was decided the first time."
    )
    attribution_id: str | None
    decided_at: datetime | None
    coupon: CouponOut | None
    campaign_version: int | None = Field(
        None,
        description="The campaign's definition version the decision was made with (its "
        "definition: GET /v1/campaigns/{id}/history).",
    )
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
    order_total: Amount | None = Field(
        None,
        description="The whole order before the discount, when order_amount is only the "
        "restricted products' part: the coupon's minimum order is checked on it (default: "
        "order_amount). At least order_amount.",
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
        description="The discount the service computed, exact to 4 decimals, when an amount "
        "was sent: the coupon's percent of order_amount, or its fixed amount capped at it."
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
    # campaigns managed at run time (issue 12, item 5)
    status: Literal["active", "paused", "archived"] | None = Field(
        None, description="paused and archived campaigns decide nothing; archived is final."
    )
    version: int | None = Field(
        None, description="Grows by one with every change; PATCH's expected_version."
    )
    source: Literal["file", "default", "api"] | None = Field(
        None,
        description="file: the campaigns file's, read-only here (but pause and resume); "
        "default: the built-in campaign with its defaults; api: made through the API.",
    )
    created_at: datetime | None = None
    updated_at: datetime | None = None


class CampaignsOut(BaseModel):
    campaigns: list[CampaignOut]


class CampaignChangeOut(BaseModel):
    """One change of a campaign, as its append-only log keeps it (issue 12, item 5)."""

    version: int = Field(description="The campaign's version after the change.")
    action: Literal["create", "update", "pause", "resume", "archive"]
    status: Literal["active", "paused", "archived"] = Field(description="After the change.")
    definition: dict[str, Any] = Field(description="The whole definition after the change.")
    actor: str = Field(
        description="The calling API key's role and fingerprint (not the key), or file."
    )
    at: datetime


class CampaignHistoryOut(BaseModel):
    campaign_id: str
    changes: list[CampaignChangeOut] = Field(description="The oldest first.")
    next_after: int | None = Field(
        None, description="Pass as `after` for the next page; null: no more changes."
    )


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
    not_targeted: int = Field(0, description="Left out by uplift targeting (issue 12, item 4).")
    error: str | None


class SweepJobsOut(BaseModel):
    campaign_id: str
    jobs: list[SweepJobOut] = Field(description="The latest requested first.")


class IntervalOut(BaseModel):
    estimate: float
    low: float = Field(description="95 % interval, lower end.")
    high: float


class MoneyIntervalOut(BaseModel):
    estimate: Decimal
    low: Decimal = Field(description="95 % interval, lower end.")
    high: Decimal


class RevenueOut(BaseModel):
    """One currency's revenue figures of a campaign (issue 12, item 3)."""

    treated_users: int
    holdout_users: int
    treated_revenue: Decimal = Field(description="Every treated user's, in their windows.")
    holdout_revenue: Decimal
    treated_per_user: Decimal | None
    holdout_per_user: Decimal | None
    difference_per_user: MoneyIntervalOut | None = Field(
        description="Treated minus holdout revenue per user, Welch normal 95 % interval "
        "(null with fewer than two users in an arm)."
    )
    incremental: MoneyIntervalOut | None = Field(description="difference_per_user x treated users.")
    discount_cost: Decimal = Field(description="Discount given on standing redemptions.")
    net_incremental: MoneyIntervalOut | None = Field(
        description="incremental - discount_cost: what the coupons earned after paying for them."
    )


class MoneyBudgetOut(BaseModel):
    currency: str
    max_total: Decimal | None
    spent_total: Decimal
    left_total: Decimal | None
    max_per_day: Decimal | None
    spent_today: Decimal = Field(description="On today's UTC day.")
    left_today: Decimal | None


class CampaignStatsOut(BaseModel):
    campaign_id: str
    at: datetime
    eligible: int = Field(
        description="Users found eligible: issued + holdout + not_targeted + budget_exhausted."
    )
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
    segments: list[SegmentStatsOut] = Field(
        default_factory=list,
        description="Per segment of each axis (issue 12, item 4), as recorded with each "
        "decision: 'unknown' for users without a segment then.",
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
    # money (issue 12, item 3)
    revenue: dict[str, RevenueOut] = Field(
        default_factory=dict,
        description="By currency: revenue per user (price x quantity of purchase events in "
        "the conversion window) in treated and holdout, the incremental revenue and the same "
        "net of the discount cost, with Welch 95 % intervals.",
    )
    unpriced_purchases: int = Field(
        0, description="Purchases in the conversion windows without a price (not in revenue)."
    )
    budget_money: MoneyBudgetOut | None = Field(
        None, description="The money budget, the discount given against it and what is left."
    )
    discount_given: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict,
        description="Discount actually given, {total, today: {currency: amount}}, counted at "
        "redemption (releases taken back): what the money budget is checked against.",
    )
    # issue 12, item 5
    definition_version: int | None = Field(
        None, description="The campaign's definition version applied now."
    )
    decisions_by_version: dict[str, int] = Field(
        default_factory=dict,
        description="Recorded decisions by the definition version they were made with "
        "(none: before versions were recorded).",
    )


RecommendationsOut.model_rebuild()


class SegmentStatsOut(BaseModel):
    """One segment of a campaign's stats, and whether the campaign targets it now, and why."""

    axis: Literal["lifecycle_stage", "loyalty_type"]
    segment: str
    decided: int = Field(description="treated + holdout + not_targeted.")
    treated: int = Field(description="Issued a coupon (exploration included).")
    holdout: int
    not_targeted: int = Field(description="Left out by uplift targeting: no coupon.")
    converted: dict[str, int] = Field(description="treated, holdout, not_targeted.")
    uplift: IntervalOut | None = Field(
        description="Treated minus holdout conversion in the segment, Newcombe 95 % interval."
    )
    targeted: bool
    reason: str = Field(
        description="excluded, outside_audience (refused by the audience); not_measured (uplift "
        "targeting off, or on the other axis); learning (too few users decided yet); "
        "uplift_above_zero; no_measured_uplift (holdout and exploration only)."
    )


CampaignStatsOut.model_rebuild()  # its segments (SegmentStatsOut) are defined after it
# --- user segments (issue 12, item 1) ----------------------------------------------------

LifecycleStage = Literal["new", "active", "at_risk", "lapsed", "returning"]
LoyaltyTypeName = Literal["not_loyal", "habitual", "mercenary", "latent", "committed"]


class ProfileOut(BaseModel):
    """One user's segment: RFM figures and scores, lifecycle stage and loyalty type."""

    user_id: str
    lifecycle_stage: LifecycleStage
    loyalty_type: LoyaltyTypeName
    recency_days: float | None = Field(
        description="Days from the last order to computed_at; null without an order."
    )
    frequency: int = Field(description="Orders (distinct order ids) so far.")
    monetary: Decimal | None = Field(
        description="Spent, exact (price x quantity of every purchase), in `currency`; null "
        "without a priced purchase or when paid in more than one currency."
    )
    currency: str | None
    r_score: int | None = Field(description="1..5 against the shop's customers; null: no order.")
    f_score: int | None
    m_score: int | None
    orders: int
    coupon_orders: int = Field(description="Orders that redeemed a coupon.")
    coupon_share: float = Field(description="coupon_orders / orders (0 without an order).")
    first_order_at: datetime | None
    last_order_at: datetime | None
    views: int = Field(description="Views in the engagement window before computed_at.")
    active_days: int = Field(description="Days with any event in that window.")
    computed_at: datetime
    predicted_lifetime_value: PredictedValueOut | None = Field(
        default=None,
        description="The latest `recoffer clv --write` prediction; null without one.",
    )


class SegmentsOut(BaseModel):
    """Users per lifecycle stage, per loyalty type and per stage x type."""

    users: int
    stages: dict[LifecycleStage, int]
    loyalty_types: dict[LoyaltyTypeName, int]
    matrix: dict[LifecycleStage, dict[LoyaltyTypeName, int]] = Field(
        description="stage -> loyalty type -> users."
    )
    computed_from: datetime | None = Field(description="The oldest row's computed_at.")
    computed_until: datetime | None = Field(description="The newest row's computed_at.")
    last_run_at: datetime | None = Field(
        description="When the latest bulk run finished; null if none ran yet."
    )
    last_run_as_of: datetime | None = Field(description="The moment that run described.")
    typical_interval_days: float | None = Field(
        description="The shop's typical interval between orders in that run."
    )


# --- loyalty analytics (issue 13, item 1) --------------------------------------------------


class LifetimeValueOut(BaseModel):
    """Historical lifetime value in one currency over the customers with an amount in it."""

    customers: int
    mean: str = Field(description="Exact amount, rounded half-even to 4 decimals.")
    median: str


class LoyaltyPeriodOut(BaseModel):
    """One period's loyalty figures; definitions in the README section "Loyalty metrics"."""

    period: str = Field(description="The period's first day (UTC), YYYY-MM-DD.")
    start: datetime
    end: datetime
    partial: bool = Field(
        description="Without `until`, the period the data stops in (its last order is before the "
        "period's end): its figures cover only part of it, e.g. the month so far. With `until` "
        "every period counts as whole."
    )
    customers_at_start: int = Field(description="S: customers of the period before.")
    new_customers: int = Field(description="N: customers whose first order is in the period.")
    customers_at_end: int = Field(description="E: customers with an order in the period.")
    retained: int = Field(description="Customers of both this period and the one before.")
    reactivated: int = Field(description="E - N - retained: back after a gap.")
    retention: float | None = Field(description="(E - N) / S; null when S = 0.")
    churn: float | None = Field(description="1 - retention.")
    orders: int
    repeat_orders: int = Field(description="Orders whose customer has an earlier order.")
    repurchase_rate: float | None = Field(description="repeat_orders / orders.")
    repeat_customers: int = Field(description="Customers of E with 2+ orders up to the end.")
    repeat_customer_rate: float | None = Field(description="repeat_customers / E.")
    purchase_frequency: float | None = Field(description="orders / E.")
    average_order_value: dict[str, str] = Field(description="Currency -> exact amount.")
    multi_product_customers: int
    single_product_customers: int
    upsell_rate: float | None = Field(description="multi / (multi + single).")
    lifetime_value: dict[str, LifetimeValueOut] = Field(description="Currency -> mean, median.")


class LoyaltyOut(BaseModel):
    period: Literal["week", "month"]
    periods: list[LoyaltyPeriodOut]


class CohortOut(BaseModel):
    cohort: str = Field(description="Month of the first order, YYYY-MM.")
    size: int
    active: list[int] = Field(description="Customers with an order in month 0, 1, 2, ...")
    share: list[float | None] = Field(description="active / size.")


class CohortsOut(BaseModel):
    months: list[str]
    cohorts: list[CohortOut]


# --- model versions, training runs and rollback for ops (issue 13, item 2) ----------------


class ProtocolFiguresOut(BaseModel):
    protocol: str
    served: str = Field(description="The candidate served under this protocol.")
    test: dict[str, float] = Field(description="Its figures at k = 10 on the test split.")
    validation: dict[str, float] = Field(description="Its figures on the validation split.")


class GateOut(BaseModel):
    passed: bool
    method: str
    forced: bool = Field(description="Promoted with --force although the gate refused.")
    compared_with: str | None = Field(description="The current version it was compared with.")
    reasons: list[str]


class VersionOut(BaseModel):
    version: str
    current: bool = Field(description="The registry's current version.")
    serving: bool = Field(description="The version the worker that answered serves now.")
    created_at: datetime | None
    data_until: datetime | None
    users: int | None
    items: int | None
    figures: list[ProtocolFiguresOut]
    gate: GateOut | None = Field(description="The quality gate's decision on this version.")
    error: str | None = Field(description="Why the version's manifest cannot be read.")


class VersionsOut(BaseModel):
    current: str | None
    serving: str | None
    previous: str | None = Field(description="The version a rollback goes back to.")
    versions: list[VersionOut] = Field(description="Newest first.")


class TrainingRunOut(BaseModel):
    started_at: datetime
    finished_at: datetime
    seconds: float
    outcome: Literal["promoted", "refused", "failed", "skipped"]
    exit_code: int
    by: str = Field(description="train: the trainer itself; schedule: the scheduler for it.")
    version: str | None = Field(description="The version the run published.")
    current_before: str | None
    forced: bool
    reasons: list[str] = Field(description="The gate's reasons (refused, or close).")
    error: str | None = Field(description="Why the run failed or was skipped.")


class TrainingRunsOut(BaseModel):
    runs: list[TrainingRunOut] = Field(description="Newest first.")
    unreadable_lines: int = Field(
        description="Lines of runs.jsonl that are not whole records (a writer killed mid-line)."
    )


class RollbackOut(BaseModel):
    before: str | None
    current: str
    serving: str | None = Field(description="What the worker that answered serves now.")
    reloaded: bool
    error: str | None = Field(description="Why that worker could not load it (it keeps serving).")


# --- predicted lifetime value (issue 13, item 1: `recoffer clv --write`) --------------------


class CustomerValueOut(BaseModel):
    """One customer's prediction over the run's horizon (BG/NBD and Gamma-Gamma)."""

    user_id: str
    expected_purchases: float = Field(description="Expected purchase days in the horizon.")
    p_alive: float = Field(description="Probability the customer is still active (BG/NBD).")
    expected_order_value: str = Field(description="Expected value of an order (Gamma-Gamma).")
    predicted_value: str = Field(
        description="expected_purchases x expected_order_value, rounded half-even to cents."
    )


class CustomerValueSummaryOut(BaseModel):
    """The latest run's predicted lifetime value; definitions: README "Loyalty metrics"."""

    customers: int = Field(description="Customers with a prediction (0: no run written yet).")
    currency: str | None
    horizon_days: int | None
    as_of: datetime | None = Field(description="End of the data the model saw.")
    fitted_at: datetime | None
    expected_purchases: float = Field(description="Sum over the customers.")
    total: str | None = Field(description="Sum of predicted values, to cents.")
    mean: str | None
    quantiles: dict[str, str] | None = Field(description="p10 ... p99 of the predicted value.")
    top: list[CustomerValueOut] = Field(description="Highest predicted value first.")


class PredictedValueOut(CustomerValueOut):
    """A profile's prediction, with what its run says about it."""

    currency: str
    horizon_days: int
    as_of: datetime
    fitted_at: datetime


# --- A/B tests of recommenders (issue 14, item 3) -----------------------------------------


class ExperimentIn(Strict):
    name: str = Field(min_length=1, max_length=200, description="What the experiment tests.")
    candidate_version: str = Field(
        min_length=1,
        max_length=64,
        description="The version the candidate arm serves (the current one with a "
        "candidate_recipe).",
    )
    candidate_recipe: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="A candidate recipe named in the candidate version's manifest (its "
        "`candidates`); default: the version's served recipe.",
    )
    control_recipe: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="A candidate recipe of the current version for the control arm; default: "
        "its served recipe.",
    )
    share: float = Field(0.5, gt=0, lt=1, description="Share of users in the candidate arm.")


class RateOut(BaseModel):
    estimate: float
    low: float = Field(description="Wilson (a rate) or Newcombe (a difference) 95 % interval.")
    high: float


class ArmOut(BaseModel):
    arm: str
    impressions: int
    users: int = Field(description="Distinct users shown something in this arm.")
    clicks: int
    carts: int
    purchases: int
    ctr: RateOut | None = Field(description="Impressions clicked / impressions.")
    conversion: RateOut | None = Field(
        description="Impressions with an attributed purchase / impressions."
    )
    clickers: int = Field(0, description="Users who clicked at least once.")
    buyers: int = Field(0, description="Users with at least one attributed purchase.")
    user_ctr: RateOut | None = Field(
        None,
        description="Clickers / users: the rate the guard decides on (users are the unit "
        "the arms are drawn by).",
    )
    user_conversion: RateOut | None = Field(None, description="Buyers / users.")


class DifferenceOut(BaseModel):
    difference: RateOut | None = Field(description="Candidate minus control.")
    relative_lift: float | None = Field(description="The difference / control's rate.")


class SampleRatioOut(BaseModel):
    expected_share: float
    observed_share: float | None = Field(description="Of users, in the candidate arm.")
    chi_square: float | None
    p_value: float | None
    mismatch: bool = Field(description="p-value below RECOFFER_EXPERIMENT_SRM_P.")


class GuardOut(BaseModel):
    ready: bool = Field(description="Each arm has the minimum of impressions.")
    tripped: bool = Field(description="The candidate is clearly worse: the guard stops it.")
    min_impressions: int
    z: float
    ctr_upper: float | None = Field(description="Upper end of the per-user CTR difference at z.")
    conversion_upper: float | None
    reason: str | None


class ExperimentResultsOut(BaseModel):
    arms: dict[str, ArmOut]
    ctr: DifferenceOut
    conversion: DifferenceOut
    srm: SampleRatioOut
    guard: GuardOut
    user_ctr: DifferenceOut | None = Field(None, description="Per user: clickers / users.")
    user_conversion: DifferenceOut | None = Field(None, description="Per user: buyers / users.")


class ExperimentOut(BaseModel):
    id: str
    name: str
    status: Literal["running", "stopped", "promoted"]
    control_version: str
    control_recipe: str | None
    candidate_version: str
    candidate_recipe: str | None
    share: float
    settings: dict[str, Any] = Field(description="The guard's thresholds, fixed at the start.")
    created_by: str
    started_at: datetime
    ended_at: datetime | None
    outcome: dict[str, Any] | None = Field(
        description="Why it ended (reason: stopped, guard, promoted, control_changed), by whom, "
        "and the figures at that moment."
    )
    results: ExperimentResultsOut | None = Field(
        None, description="Figures now (GET /v1/experiments/{id} only)."
    )
    served_here: bool | None = Field(
        None,
        description="Whether the worker that answered serves the arms now (GET one only; "
        "every worker loads them within RECOFFER_EXPERIMENT_POLL_SECONDS).",
    )
    load_error: str | None = Field(
        None, description="Why the worker that answered could not load the arms, if so."
    )


class ExperimentsOut(BaseModel):
    experiments: list[ExperimentOut] = Field(description="The newest first.")


class PromotionOut(BaseModel):
    experiment: ExperimentOut
    before: str = Field(description="The current version before the promotion.")
    current: str
    serving: str | None = Field(description="What this worker serves after reloading.")
    error: str | None = Field(description="This worker's reload error, if any.")


# --- online metrics of recommendations (issue 14, item 2) ---------------------------------


class RevenueRateOut(BaseModel):
    currency: str
    revenue: Decimal = Field(description="Attributed purchases' price x quantity, exact.")
    per_1000_impressions: MoneyIntervalOut = Field(
        description="Revenue per 1,000 impressions: exact estimate, normal-approximation 95 % "
        "interval."
    )


class RecommendationFiguresOut(BaseModel):
    """One group's figures; every rate is per impression (service/feedback/figures.py)."""

    group: dict[str, str | None] = Field(description="The value of each dimension of `by`.")
    impressions: int
    users: int = Field(description="Distinct users shown something.")
    clicks: int = Field(description="Impressions clicked.")
    add_to_carts: int = Field(description="Impressions with an attributed add-to-cart.")
    purchases: int = Field(description="Impressions with an attributed purchase.")
    ctr: IntervalOut | None = Field(description="clicks / impressions, Wilson 95 % interval.")
    add_to_cart_rate: IntervalOut | None
    conversion: IntervalOut | None = Field(description="purchases / impressions.")
    revenue: list[RevenueRateOut] = Field(description="Per currency.")


class RecommendationMetricsOut(BaseModel):
    by: list[str]
    since: datetime | None
    until: datetime | None
    groups: list[RecommendationFiguresOut]
