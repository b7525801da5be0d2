"""Coupons at checkout: validate, redeem exactly once, release a bounded number of times,
and the failed-lookup limits.

Plain Python over ``OfferRepository.coupons``; the clock is injected. Exactly-once is the
repository's conditional UPDATE (shared/RELIABILITY.md), and every redemption and release is
appended, in the same transaction, to the trail ``coupon_ledger``; this module turns what it
did into an answer or one of the domain's errors. Failed lookups (an unknown code, another
user's code) are limited here, next to the lookups themselves (OWASP OAT-002, token
cracking), and another user's code is refused exactly like an unknown one.

A coupon's money terms (issue 12, item 3: its currency, its minimum order) are part of the
redemption's WHERE; when the write refuses, ``check_terms`` says why from the row read
afterwards (the terms never change once issued, so that read cannot go stale).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from service.errors import (
    BelowMinimumOrder,
    CouponAlreadyRedeemed,
    CouponCurrencyMismatch,
    CouponExpired,
    CouponNotFound,
    CouponNotRedeemed,
    CouponNotYours,
    CouponOrderMismatch,
    CouponReleaseLimit,
    InvalidInput,
    LimiterUnavailable,
    OrderAmountRequired,
    RedemptionMismatch,
    TooManyAttempts,
)
from service.offers.kinds import CouponState
from service.offers.limiter import IN_PROCESS, Caller, FailureLimiter
from service.offers.repository import OfferRepository
from service.offers.repository.coupons import CouponRecord, LedgerEntry, Use
from service.offers.rules import normalise_code, redacted

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CouponStatus:
    coupon: CouponRecord
    status: CouponState
    seconds_left: int


def coupon_status(coupon: CouponRecord, now: datetime) -> CouponStatus:
    """Whether ``coupon`` can be used at ``now``, and for how many more seconds."""
    if coupon.redeemed_at is not None:
        status: CouponState = "redeemed"
    elif coupon.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    left = max(0, int((coupon.expires_at - now).total_seconds()))
    return CouponStatus(coupon, status, left if status == "active" else 0)


def check_terms(coupon: CouponRecord, use: Use) -> None:
    """Refuse ``use`` when it does not meet ``coupon``'s money terms (issue 12, item 3).

    Raises:
        OrderAmountRequired: the coupon has terms and no amount was sent;
        CouponCurrencyMismatch: the order is in another currency than the terms';
        BelowMinimumOrder: the order is under the minimum.
    """
    terms = coupon.terms_currency
    if terms is None:
        return
    if use.order_amount is None or use.currency is None:
        raise OrderAmountRequired(
            "order_amount", f"this coupon's discount is checked on the order amount, in {terms}"
        )
    if use.currency != terms:
        raise CouponCurrencyMismatch(
            "currency", f"this coupon is redeemed in {terms}, not {use.currency}"
        )
    minimum, total = coupon.min_order_amount, use.checked_total
    if minimum is not None and total is not None and total < minimum:
        field = "order_amount" if use.order_total is None else "order_total"
        raise BelowMinimumOrder(field, f"the minimum order for this coupon is {minimum} {terms}")


class Coupons:
    """The coupons of one service process: look-ups, redemptions, releases."""

    def __init__(
        self,
        repository: OfferRepository,
        clock: Callable[[], datetime],
        *,
        limiter: FailureLimiter | None = None,
        max_releases: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self.repository = repository.coupons
        self.clock = clock
        self.limiter = limiter  # None: lookups are not limited (in-process callers, tests)
        self.max_releases = max_releases
        self.metrics = metrics

    def active(self, user_id: str) -> list[CouponStatus]:
        """The user's usable coupons, the soonest to expire first."""
        now = self.clock()
        return [coupon_status(c, now) for c in self.repository.active(user_id, now)]

    def validate(
        self, text: str, user_id: str | None = None, *, caller: Caller = IN_PROCESS
    ) -> CouponStatus:
        """The coupon behind ``text`` and whether it can be used now; redeems nothing.

        Raises:
            CouponNotFound, CouponNotYours: a failed lookup (both answer alike), counted;
            TooManyAttempts: a failed lookup past the caller's limit.
        """
        with self._guarded(caller):
            coupon = self._find(text)
            if user_id is not None and coupon.user_id != user_id:
                raise CouponNotYours("no such coupon")
            return coupon_status(coupon, self.clock())

    def redeem(
        self,
        text: str,
        user_id: str,
        order_id: str,
        order_amount: Decimal | None = None,
        currency: str | None = None,
        *,
        caller: Caller = IN_PROCESS,
        order_total: Decimal | None = None,
    ) -> tuple[CouponStatus, bool]:
        """Use the coupon for ``order_id``, exactly once; returns (status, replayed).

        A retry with the same order id answers like the first call (``replayed`` True).
        ``order_amount`` (with its ``currency``) is what the discount applies to; the
        redemption is kept in the trail with the amount, the discount and ``caller.client``.
        Failed lookups count against ``caller`` as in ``validate``.

        The discount is the service's: the coupon's percent of ``order_amount``, or its fixed
        amount capped at it. A coupon with money terms needs the amount in its currency, and
        at least its minimum order, checked on ``order_total`` (the whole order; default
        ``order_amount``): otherwise OrderAmountRequired, CouponCurrencyMismatch or
        BelowMinimumOrder (422), and nothing is written.
        """
        if (order_amount is None) != (currency is None):
            raise InvalidInput("currency", "an order amount and its currency go together")
        if order_total is not None and (order_amount is None or order_total < order_amount):
            raise InvalidInput("order_total", "needs order_amount, and is at least order_amount")
        use = Use(order_id, caller.client, order_amount, currency, order_total)
        with self._guarded(caller):
            return self._redeem(text, user_id, use)

    def release(
        self, text: str, user_id: str, order_id: str, *, caller: Caller = IN_PROCESS
    ) -> CouponStatus:
        """Undo the redemption by ``order_id`` (the order was cancelled) while the coupon has
        time left, at most ``max_releases`` times per coupon; kept in the trail.

        Raises:
            CouponNotRedeemed: no order is using the coupon (a second release lands here);
            CouponOrderMismatch: another order redeemed it; CouponReleaseLimit: released as
            often as allowed; CouponExpired; CouponNotFound, CouponNotYours as in ``validate``.
        """
        use = Use(order_id, caller.client)
        with self._guarded(caller):
            coupon = self._find(text)
            if coupon.user_id != user_id:
                raise CouponNotYours("no such coupon")
            now = self.clock()
            for _ in range(2):  # a second try only when the row changed between two reads
                released = self.repository.release(
                    coupon.code, user_id, use, now, max_releases=self.max_releases
                )
                if released is not None:
                    log.info(
                        "coupon_released",
                        extra={
                            "campaign": released.campaign_id,
                            "code": redacted(released.code),
                            "order_id": order_id,
                            "client": caller.client,
                        },
                    )
                    return coupon_status(released, now)
                # nothing changed: say why, from the row as it is now
                coupon = self.repository.coupon(coupon.code) or coupon
                if coupon.redeemed_at is None:
                    raise CouponNotRedeemed(redacted(coupon.code))
                if coupon.order_id != order_id:
                    raise CouponOrderMismatch(redacted(coupon.code))
                if coupon.expires_at <= now:
                    raise CouponExpired(redacted(coupon.code))
                if coupon.releases >= self.max_releases:
                    raise CouponReleaseLimit(redacted(coupon.code))
            raise CouponNotRedeemed(redacted(coupon.code))

    def trail(self, text: str) -> tuple[CouponRecord, list[LedgerEntry]] | None:
        """The coupon and every redemption and release of it, oldest first; None if unknown.

        For marketing and accounting: not a customer's lookup, not limited.
        """
        code = normalise_code(text)
        coupon = self.repository.coupon(code) if code is not None else None
        if coupon is None:
            return None
        return coupon, self.repository.trail(coupon.code)

    def _redeem(self, text: str, user_id: str, use: Use) -> tuple[CouponStatus, bool]:
        code = normalise_code(text)
        if code is None:
            raise CouponNotFound("not a coupon code")
        now = self.clock()
        used = self.repository.redeem(code, user_id, use, now)
        coupon = None if used is not None else self.repository.coupon(code)
        usable = coupon is not None and coupon.redeemed_at is None and coupon.expires_at > now
        if usable and coupon is not None and coupon.user_id == user_id:
            check_terms(coupon, use)  # the order may be what the WHERE refused
        if coupon is not None and coupon.redeemed_at is None and coupon.expires_at > now:
            # usable after all: another order's use was released between the two reads
            used = self.repository.redeem(code, user_id, use, now)
            coupon = None if used is not None else self.repository.coupon(code)
        if used is not None:
            if self.metrics is not None:
                self.metrics.coupons_redeemed.labels(used.campaign_id).inc()
            log.info(
                "coupon_redeemed",
                extra={
                    "campaign": used.campaign_id,
                    "code": redacted(code),
                    "order_id": use.order_id,
                    "client": use.actor,
                },
            )
            return coupon_status(used, now), False
        if coupon is None:
            raise CouponNotFound(redacted(code))
        if coupon.user_id != user_id:
            raise CouponNotYours(redacted(code))
        if coupon.redeemed_at is not None:
            if coupon.order_id == use.order_id:
                # a retry may leave the amount out; one that states it must state the same
                stated = use.order_amount is not None
                if stated and (coupon.order_amount, coupon.currency) != (
                    use.order_amount,
                    use.currency,
                ):
                    raise RedemptionMismatch(redacted(code))
                return coupon_status(coupon, now), True
            raise CouponAlreadyRedeemed(redacted(code))
        raise CouponExpired(redacted(code))

    def _find(self, text: str) -> CouponRecord:
        code = normalise_code(text)
        coupon = self.repository.coupon(code) if code is not None else None
        if coupon is None:
            raise CouponNotFound("no such coupon")
        return coupon

    @contextlib.contextmanager
    def _guarded(self, caller: Caller) -> Iterator[None]:
        """Count a failed lookup against ``caller``; past its limit, refuse it (429).

        Nothing is checked before the lookup: a valid code is never refused.
        """
        try:
            yield
        except (CouponNotFound, CouponNotYours) as exc:
            reason = "not_found" if isinstance(exc, CouponNotFound) else "not_yours"
            if self.limiter is not None:
                try:
                    self.limiter.fail(caller)
                except TooManyAttempts:
                    self._refused("rate_limited")
                    raise
                except LimiterUnavailable:
                    self._refused("limiter_unavailable")
                    raise
            self._refused(reason)
            raise

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.coupon_refusals.labels(reason).inc()
