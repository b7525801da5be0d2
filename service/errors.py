"""The one error tree of recoffer, and what each kind means to an HTTP client and to the CLI.

Every error recoffer raises on purpose derives from ``RecofferError``. ``KINDS`` declares, once,
the HTTP status and body code the API answers with (``service.api.errors``) and the exit code
the ``recoffer`` command ends with (``training.cli.render``). A subclass without its own row
takes the row of its nearest listed ancestor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class RecofferError(Exception):
    """Base class of every error recoffer raises on purpose."""

    retry_after: int | None = None  # seconds; sent as Retry-After by the API when set


# --- models and their registry ------------------------------------------------------------


class ArtifactError(RecofferError):
    """A model artifact is missing, truncated, corrupt or of an unknown schema."""


class RegistryError(RecofferError):
    """The model registry cannot do what was asked (no such version, nothing to roll back)."""


class TrainerBusyError(RecofferError):
    """Another trainer holds the model root's lock."""


# --- training input and fitting -----------------------------------------------------------


class DataError(RecofferError, ValueError):
    """Input data that cannot be used; the message names the file, column and value."""


class SplitError(RecofferError, ValueError):
    """The temporal split cannot be made (window too long, too few purchases after it)."""


class ModelFitError(RecofferError, RuntimeError):
    """A fit produced unusable factors (NaN) or could not be solved."""


class UsageProblem(RecofferError):
    """A command-line value that cannot be used."""


class ScheduleError(RecofferError):
    """A retraining schedule that cannot be parsed."""


class CampaignConfigError(RecofferError):
    """A campaigns file or campaign definition that cannot be used; names campaign and field."""


# --- A/B tests of recommenders (issue 14, item 3) ----------------------------------------


class ExperimentError(RecofferError):
    """An experiment cannot be started, stopped or promoted now; says why."""


class UnknownExperiment(ExperimentError, LookupError):
    pass


class ExperimentRunning(ExperimentError):
    """Another experiment is running: one at a time."""


class ExperimentEnded(ExperimentError):
    """The experiment was stopped or promoted already."""


class ExperimentRefused(ExperimentError):
    """What was asked cannot be done in this state (no current model, a recipe arm promoted,
    the current version no longer the control)."""


# --- what the shop sends ------------------------------------------------------------------


class InvalidInput(RecofferError, ValueError):
    """A value the service's rules refuse (beyond the request schema); names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SignUpMovedLater(InvalidInput):
    """A ``signed_up_at`` later than the one stored (issue 12, item 7): it never moves later."""

    def __init__(self, stored: datetime) -> None:
        super().__init__(
            "signed_up_at",
            f"is already {stored.isoformat()}; it may move earlier, never later",
        )
        self.stored = stored


class BatchTooLarge(RecofferError):
    """More events in one request than the service accepts."""


# --- serving ------------------------------------------------------------------------------


class ModelUnavailable(RecofferError):
    """No model is loaded and there is nothing to fall back on."""

    retry_after = 30


class UnknownItem(RecofferError, LookupError):
    """An item id the model does not know."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is not in the current model")
        self.item_id = item_id


# --- offers and coupons -------------------------------------------------------------------


class OfferError(RecofferError):
    """Base of the offer engine's refusals."""


class UnknownCampaign(OfferError):
    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"no campaign {campaign_id!r}; see /v1/campaigns")
        self.campaign_id = campaign_id


class CouponNotFound(OfferError):
    pass


class CouponNotYours(OfferError):
    pass


class CouponAlreadyRedeemed(OfferError):
    pass


class CouponExpired(OfferError):
    pass


# --- releases and the failed-lookup limiter (issue 11, items 3 and 4) ---


class CouponNotRedeemed(OfferError):
    """A release of a coupon that no order is using (never redeemed, or released already)."""


class CouponOrderMismatch(OfferError):
    """A release naming another order than the one that redeemed the coupon."""


class RedemptionMismatch(OfferError):
    """A retried redemption of the same order with another amount or currency."""


class CouponReleaseLimit(OfferError):
    """The coupon has been released as often as ``coupon_max_releases`` allows."""


class LimiterUnavailable(RecofferError):
    """The shared failed-lookup limiter (Redis) cannot be reached: failed lookups are refused."""

    retry_after = 5


class BudgetExhausted(OfferError):
    """A campaign cap is reached (raised inside the issuing transaction, which rolls back)."""


class PurchasedMeanwhile(OfferError):
    """The user bought between the eligibility check and the write (the decision rolls back)."""


class ErasedMeanwhile(OfferError):
    """The user was erased between the facts' read and the write (the decision rolls back)."""


# campaign sweep jobs (issue 11, item 11)
class CampaignInactive(OfferError):
    """The campaign is disabled or outside its active period: there is nothing to sweep."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"campaign {campaign_id!r} is not active now; see /v1/campaigns")


class SweepRunning(OfferError):
    """A sweep of the campaign is queued or running (one at a time, across every worker)."""

    def __init__(self, campaign_id: str, job_id: str) -> None:
        super().__init__(
            f"campaign {campaign_id!r} is being swept by job {job_id}: "
            f"GET /v1/campaigns/{campaign_id}/runs/{job_id}"
        )
        self.job_id = job_id


class UnknownSweepJob(OfferError):
    def __init__(self, campaign_id: str, job_id: str) -> None:
        super().__init__(f"no sweep job {job_id!r} of campaign {campaign_id!r}")


# campaigns managed at run time (issue 12, item 5)
class CampaignExists(OfferError):
    """A campaign with this id exists (archived ones included: an id is never reused)."""

    def __init__(self, campaign_id: str, *, archived: bool = False) -> None:
        if archived:
            super().__init__(f"campaign {campaign_id!r} was archived; an id is never reused")
        else:
            super().__init__(f"campaign {campaign_id!r} exists; change it with PATCH")


class CampaignVersionConflict(OfferError):
    """The campaign changed since the version the caller expected (optimistic concurrency)."""

    def __init__(self, campaign_id: str, expected: int | None, current: int) -> None:
        since = "changed while this change was made" if expected is None else f"not {expected}"
        super().__init__(
            f"campaign {campaign_id!r} is at version {current}, {since}: read it again "
            "and retry with expected_version"
        )
        self.current = current


class CampaignFromFile(OfferError):
    """The campaign is defined in the campaigns file, which only the file may change."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(
            f"campaign {campaign_id!r} is defined in the campaigns file "
            "(RECOFFER_CAMPAIGNS_FILE): change it there, or remove it there to manage it here"
        )


class CampaignArchived(OfferError):
    """An archived campaign is final: it never decides again and cannot be changed."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"campaign {campaign_id!r} is archived; create a new one instead")


class TooManyAttempts(RecofferError):
    """Too many failed coupon lookups for this key; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed coupon lookups; retry in {retry_after} s")
        self.retry_after = retry_after


class UserErased(RecofferError):
    """The user id was erased (``DELETE /v1/users/{id}``): nothing new is stored under it."""

    def __init__(self) -> None:
        super().__init__("this user id was erased; give a returning customer a new id")


# --- money: minimum order and the coupon's currency (issue 12, item 3)


class BelowMinimumOrder(InvalidInput):
    """An order under the coupon's minimum order value: not redeemed, nothing written."""


class CouponCurrencyMismatch(InvalidInput):
    """An order in another currency than the coupon's terms (a fixed amount, a minimum)."""


class OrderAmountRequired(InvalidInput):
    """A coupon with money terms redeemed without the order amount they are checked on."""


class UnknownWebhookEvent(RecofferError, LookupError):
    """No webhook event with this id (issue 12, item 6)."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no webhook event {event_id!r}")


class UnknownUser(RecofferError, LookupError):
    """A user id with no event and no registration (issue 12, item 1: their profile)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no user {user_id!r}: no event and no registration under this id")
        self.user_id = user_id


@dataclass(frozen=True)
class ErrorKind:
    """How one kind of error reaches the outside.

    ``public``: a fixed text shown instead of the exception's message (coupon refusals must
    never echo the code they were given).
    """

    status: int
    code: str
    exit_code: int
    public: str | None = None


KINDS: dict[type[RecofferError], ErrorKind] = {
    RecofferError: ErrorKind(500, "internal_error", 1),
    ArtifactError: ErrorKind(500, "artifact_error", 1),
    RegistryError: ErrorKind(409, "registry_error", 2),
    TrainerBusyError: ErrorKind(409, "trainer_busy", 1),
    DataError: ErrorKind(422, "invalid_data", 2),
    SplitError: ErrorKind(422, "invalid_split", 2),
    ModelFitError: ErrorKind(500, "model_fit_failed", 1),
    UsageProblem: ErrorKind(400, "invalid_usage", 2),
    ScheduleError: ErrorKind(422, "invalid_schedule", 2),
    CampaignConfigError: ErrorKind(422, "invalid_campaign", 2),
    InvalidInput: ErrorKind(422, "invalid_request", 2),
    BatchTooLarge: ErrorKind(413, "too_large", 2),
    ModelUnavailable: ErrorKind(503, "model_unavailable", 1),
    UnknownItem: ErrorKind(404, "unknown_item", 2),
    OfferError: ErrorKind(409, "offer_refused", 1),
    UnknownCampaign: ErrorKind(404, "unknown_campaign", 2),
    CouponNotFound: ErrorKind(404, "coupon_not_found", 2, "no such coupon"),
    # another user's coupon answers exactly like an unknown one: no existence oracle (item 4)
    CouponNotYours: ErrorKind(404, "coupon_not_found", 2, "no such coupon"),
    CouponAlreadyRedeemed: ErrorKind(409, "coupon_already_redeemed", 2, "used by another order"),
    CouponExpired: ErrorKind(410, "coupon_expired", 2, "this coupon has expired"),
    TooManyAttempts: ErrorKind(429, "too_many_requests", 1),
    UserErased: ErrorKind(410, "user_erased", 2),  # issue 11, item 2
    CouponNotRedeemed: ErrorKind(
        409, "coupon_not_redeemed", 2, "no order is using this coupon: nothing to release"
    ),
    RedemptionMismatch: ErrorKind(
        409,
        "redemption_mismatch",
        2,
        "this order redeemed the coupon with another amount or currency",
    ),
    CouponOrderMismatch: ErrorKind(
        409, "coupon_order_mismatch", 2, "this coupon was redeemed by another order"
    ),
    CouponReleaseLimit: ErrorKind(
        409, "coupon_release_limit", 2, "this coupon has been released as often as allowed"
    ),
    LimiterUnavailable: ErrorKind(
        503, "limiter_unavailable", 1, "failed coupon lookups cannot be counted now; retry later"
    ),
    SweepRunning: ErrorKind(409, "sweep_running", 1),  # issue 11, item 11
    UnknownSweepJob: ErrorKind(404, "unknown_sweep_job", 2),  # issue 11, item 11
    SignUpMovedLater: ErrorKind(409, "signed_up_at_conflict", 2),  # issue 12, item 7
    # issue 12, item 3: each names its field in the 422's detail
    BelowMinimumOrder: ErrorKind(422, "below_minimum_order", 2),
    CouponCurrencyMismatch: ErrorKind(422, "coupon_currency_mismatch", 2),
    OrderAmountRequired: ErrorKind(422, "order_amount_required", 2),
    # issue 12, item 5
    CampaignExists: ErrorKind(409, "campaign_exists", 2),
    CampaignVersionConflict: ErrorKind(409, "campaign_version_conflict", 2),
    CampaignFromFile: ErrorKind(409, "campaign_from_file", 2),
    CampaignArchived: ErrorKind(409, "campaign_archived", 2),
    UnknownWebhookEvent: ErrorKind(404, "unknown_webhook_event", 2),  # issue 12, item 6
    UnknownUser: ErrorKind(404, "unknown_user", 2),  # issue 12, item 1
    # issue 14, item 3: experiments
    ExperimentError: ErrorKind(409, "experiment_refused", 1),
    UnknownExperiment: ErrorKind(404, "unknown_experiment", 2),
    ExperimentRunning: ErrorKind(409, "experiment_running", 1),
    ExperimentEnded: ErrorKind(409, "experiment_ended", 1),
    ExperimentRefused: ErrorKind(409, "experiment_refused", 1),
}


def kind_of(exc: RecofferError) -> ErrorKind:
    """The row of ``exc``'s class, or of its nearest ancestor that has one."""
    for cls in type(exc).__mro__:
        kind = KINDS.get(cls)
        if kind is not None:
            return kind
    return KINDS[RecofferError]


def public_detail(exc: RecofferError) -> str:
    """What a client or a terminal may be shown about ``exc``."""
    return kind_of(exc).public or str(exc)
