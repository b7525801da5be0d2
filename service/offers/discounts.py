"""A campaign's money (issue 12, item 3): the terms its coupons carry and its money budget.

A coupon takes a percent off the eligible amount (``discount_percent``, every campaign before)
or a fixed amount (``fixed_discount`` in the campaign's ``currency``) capped at it; it may need
a minimum order (``min_order_amount``). The terms are copied onto the coupon when it is issued,
so a later change of the campaign never changes a coupon already out. The money budget
(``max_discount_per_day``, ``max_discount_total``) counts the discount actually given at
redemption (``repository.spend``) and stops new coupons once reached; coupons out are honoured.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.money import QUANTUM
from service.offers.campaigns import Campaign
from service.offers.repository.spend import MoneyCaps


def coupon_terms(campaign: Campaign) -> dict[str, Any]:
    """The money fields of a coupon ``campaign`` issues (``CouponDraft``'s keywords)."""
    fixed = campaign.discount_kind == "fixed"
    return {  # amounts as the database gives them back: the same figure before and after
        # the percent column stays for compatibility; a fixed coupon takes no percent
        "discount_percent": 0.0 if fixed else campaign.discount_percent,
        "discount_kind": campaign.discount_kind,
        "discount_fixed": _stored(campaign.fixed_discount),
        "terms_currency": campaign.currency,
        "min_order_amount": _stored(campaign.min_order_amount),
    }


def _stored(amount: Decimal | None) -> Decimal | None:
    return None if amount is None else amount.quantize(QUANTUM)


def money_caps(campaign: Campaign) -> MoneyCaps | None:
    """The campaign's money budget, None without one."""
    if campaign.currency is None or (
        campaign.max_discount_per_day is None and campaign.max_discount_total is None
    ):
        return None
    return MoneyCaps(campaign.currency, campaign.max_discount_per_day, campaign.max_discount_total)


def budget_reason(period: str) -> str:
    """The reason a ``budget_exhausted`` decision gives: ``cap_<period>`` for a coupon cap,
    the name itself for a money cap (``budget_money_total``, ``budget_money_day``)."""
    return period if period.startswith("budget_money_") else f"cap_{period}"
