"""The offer rule, the holdout draw and coupon codes: plain functions, no database, no clock.

Shared by the online engine and the offline backtest, so both apply one rule.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.offers.audience import audience_reasons
from service.offers.campaigns import Campaign
from service.offers.occasions import ONCE, occasion

# No look-alikes: 0/O, 1/I/L are gone; 31 symbols, 16 of them carry 79 bits (>= 60 asked).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 16
CODE_GROUP = 4
_CODES = len(CODE_ALPHABET) ** CODE_LENGTH


@dataclass(frozen=True)
class UserFacts:
    """What the rule needs to know about one user at one moment."""

    user_id: str
    started_at: datetime | None  # signed_up_at, else the first event seen; None: never seen
    view_events: int  # views inside the window (up to now)
    distinct_items: int  # distinct products viewed inside the window
    has_purchased: bool  # any purchase, ever
    # the shop's own sign-up time (not the first event: a client can date an event back)
    signed_up_at: datetime | None = None
    # the user's attributes; only read when a campaign requires some (else left empty)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    # --- what the lifecycle kinds read (service.offers.occasions); the new-user rule does not
    orders: int = 0  # distinct orders up to now
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    recent_orders: int = 0  # orders within the campaign's within_days (frequent_buyer)
    # the open cart: add-to-carts after the last purchase (abandoned_cart)
    cart_started_at: datetime | None = None
    cart_last_at: datetime | None = None
    cart_items: tuple[str, ...] = ()
    # --- the user's segment (issue 12, item 4), from user_segments; None: no row yet
    lifecycle_stage: str | None = None
    loyalty_type: str | None = None


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reasons: tuple[str, ...]  # why not; empty when eligible
    views: int  # what the campaign counts
    occurrence: str = ONCE  # a recurring kind's occurrence (service.offers.occasions)


def counted_views(campaign: Campaign, view_events: int, distinct_items: int) -> int:
    """What ``campaign`` counts as views: every view event, or the distinct products viewed."""
    return distinct_items if campaign.count == "distinct_items" else view_events


def check_eligibility(campaign: Campaign, facts: UserFacts, now: datetime) -> Eligibility:
    """Apply ``campaign``'s rule to ``facts`` at ``now``; every failed condition is a reason.

    Reasons: ``campaign_inactive``, ``unknown_user``; for ``new_user_high_intent``, ``not_new``
    (the window after sign-up has closed), ``too_few_views``, ``already_purchased``; for the
    lifecycle kinds, those of ``occasions.occasion`` (and the occurrence when eligible); and
    the abuse rules (issue 12, item 7):
    ``account_age_unknown`` (a minimum age is asked and the shop never sent signed_up_at),
    ``account_too_new``, and ``attribute_not_true:<name>`` for each required attribute that
    is not JSON ``true`` (missing, false, or any other value); targeting (issue 12, item 4):
    ``not_in_audience`` and ``excluded_segment:<name>`` (``audience.audience_reasons``).
    """
    views = counted_views(campaign, facts.view_events, facts.distinct_items)
    reasons: list[str] = []
    occurrence = ONCE
    if not campaign.is_active(now):
        reasons.append("campaign_inactive")
    if facts.started_at is None:
        reasons.append("unknown_user")
    elif campaign.kind != "new_user_high_intent":
        found = occasion(campaign, facts, now)
        reasons.extend(found.reasons)
        occurrence = found.occurrence
    elif now - facts.started_at > campaign.window:
        reasons.append("not_new")
    if campaign.kind == "new_user_high_intent":
        if views < campaign.min_views:
            reasons.append("too_few_views")
        if campaign.require_no_purchase and facts.has_purchased:
            reasons.append("already_purchased")
    min_age = campaign.min_account_age
    if min_age is not None:
        if facts.signed_up_at is None:
            reasons.append("account_age_unknown")
        elif now - facts.signed_up_at < min_age:
            reasons.append("account_too_new")
    for name in campaign.require_attributes:
        if facts.attributes.get(name) is not True:
            reasons.append(f"attribute_not_true:{name}")
    # targeting (issue 12, item 4): the audience and the excluded segments
    reasons.extend(audience_reasons(campaign, facts.lifecycle_stage, facts.loyalty_type))
    eligible = not reasons
    return Eligibility(eligible, tuple(reasons), views, occurrence if eligible else ONCE)


def in_holdout(campaign_id: str, user_id: str, percent: float) -> bool:
    """Deterministic: the same user in the same campaign is always on the same side.

    A SHA-256 of campaign and user, read as a number in [0, 1), below ``percent`` / 100.
    """
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{campaign_id}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < percent / 100.0


def new_code() -> str:
    """A fresh coupon code from ``secrets``: 16 symbols of CODE_ALPHABET (79 bits).

    One uniform draw below 31^16 written in base 31 (each symbol uniform and independent, as
    16 draws would give), in a fifth of the time: a sweep issues thousands at once.
    """
    number = secrets.randbelow(_CODES)
    symbols = []
    for _ in range(CODE_LENGTH):
        number, digit = divmod(number, len(CODE_ALPHABET))
        symbols.append(CODE_ALPHABET[digit])
    return "".join(symbols)


def format_code(code: str) -> str:
    """``ABCDEFGHJKMNPQRS`` -> ``ABCD-EFGH-JKMN-PQRS`` (how customers see it)."""
    return "-".join(code[i : i + CODE_GROUP] for i in range(0, len(code), CODE_GROUP))


def normalise_code(text: str) -> str | None:
    """The stored form of a code as typed (any case, dashes, spaces); None if it cannot be one."""
    code = text.replace("-", "").replace(" ", "").upper()
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


def redacted(code: str) -> str:
    """A code's fingerprint for logs: finds the coupon (hash the stored codes), reveals nothing.

    A prefix would give away bits of the code; 12 hex digits of its SHA-256 give away none
    that matter and still single out one code among millions.
    """
    return "sha256:" + hashlib.sha256(code.encode()).hexdigest()[:12]
