"""Coupons at checkout: validate, redeem exactly once, release, and the failed-lookup limits.

Plain Python over ``OfferRepository.coupons``; the clock is injected. Exactly-once is the
repository's conditional UPDATE (shared/RELIABILITY.md); this module turns what it did into an
answer or one of the domain's errors. Failed lookups (an unknown code, another user's code)
are limited here, next to the lookups themselves (OWASP OAT-002, token cracking).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from service.errors import (
    CouponAlreadyRedeemed,
    CouponExpired,
    CouponNotFound,
    CouponNotYours,
    TooManyAttempts,
)
from service.offers.kinds import CouponState
from service.offers.limiter import FailureLimiter
from service.offers.repository import OfferRepository
from service.offers.repository.coupons import CouponRecord
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


@dataclass(frozen=True)
class LookupGuard:
    """Failed lookups allowed within the limiter's window, and whom they count against.

    A lookup made for a user counts against that user only: the shop's backend calls for all
    its customers from one address, and one customer's typos must not lock out the others.
    Anonymous lookups count against the calling client (its address).
    """

    limiter: FailureLimiter
    per_user: int
    per_client: int

    def limits(self, user_id: str | None, client: str) -> list[tuple[str, int]]:
        if user_id is not None:
            return [(f"user:{user_id}", self.per_user)]
        return [(f"client:{client}", self.per_client)]


class Coupons:
    """The coupons of one service process: look-ups, redemptions, releases."""

    def __init__(
        self,
        repository: OfferRepository,
        clock: Callable[[], datetime],
        *,
        guard: LookupGuard | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repository = repository.coupons
        self.clock = clock
        self.guard = guard  # None: lookups are not limited (in-process callers, tests)
        self.metrics = metrics

    def active(self, user_id: str) -> list[CouponStatus]:
        """The user's usable coupons, the soonest to expire first."""
        now = self.clock()
        return [coupon_status(c, now) for c in self.repository.active(user_id, now)]

    def validate(
        self, text: str, user_id: str | None = None, *, client: str = "unknown"
    ) -> CouponStatus:
        """The coupon behind ``text`` and whether it can be used now; redeems nothing.

        Raises:
            TooManyAttempts: the user's (or, without a user, the client's) failed lookups
                are used up; CouponNotFound, CouponNotYours: a failed lookup, counted.
        """
        with self._guarded(user_id, client):
            coupon = self._find(text)
            if user_id is not None and coupon.user_id != user_id:
                raise CouponNotYours(redacted(coupon.code))
            return coupon_status(coupon, self.clock())

    def redeem(
        self, text: str, user_id: str, order_id: str, order_amount: float | None = None
    ) -> tuple[CouponStatus, bool]:
        """Use the coupon for ``order_id``, exactly once; returns (status, replayed).

        A retry with the same order id answers like the first call (``replayed`` True).
        Failed lookups count against ``user_id`` as in ``validate``.
        """
        with self._guarded(user_id):
            return self._redeem(text, user_id, order_id, order_amount)

    def release(self, text: str, user_id: str, order_id: str) -> CouponStatus:
        """Undo a redemption (the order was cancelled) while the coupon has time left."""
        with self._guarded(user_id):
            coupon = self._find(text)
            if coupon.user_id != user_id:
                raise CouponNotYours(redacted(coupon.code))
            now = self.clock()
            released = self.repository.release(coupon.code, user_id, order_id, now)
            if released is not None:
                return coupon_status(released, now)
            if coupon.expires_at <= now:
                raise CouponExpired(redacted(coupon.code))
            if coupon.redeemed_at is None:
                return coupon_status(coupon, now)  # nothing to undo: idempotent
            raise CouponAlreadyRedeemed(redacted(coupon.code))  # used by another order

    def _redeem(
        self, text: str, user_id: str, order_id: str, order_amount: float | None
    ) -> tuple[CouponStatus, bool]:
        code = normalise_code(text)
        if code is None:
            raise CouponNotFound("not a coupon code")
        now = self.clock()
        used = self.repository.redeem(code, user_id, order_id, order_amount, now)
        coupon = None if used is not None else self.repository.coupon(code)
        if coupon is not None and coupon.redeemed_at is None and coupon.expires_at > now:
            # usable after all: another order's use was released between the two reads
            used = self.repository.redeem(code, user_id, order_id, order_amount, now)
            coupon = None if used is not None else self.repository.coupon(code)
        if used is not None:
            if self.metrics is not None:
                self.metrics.coupons_redeemed.labels(used.campaign_id).inc()
            log.info(
                "coupon_redeemed",
                extra={"campaign": used.campaign_id, "code": redacted(code), "order_id": order_id},
            )
            return coupon_status(used, now), False
        if coupon is None:
            raise CouponNotFound(redacted(code))
        if coupon.user_id != user_id:
            raise CouponNotYours(redacted(code))
        if coupon.redeemed_at is not None:
            if coupon.order_id == order_id:
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
    def _guarded(self, user_id: str | None, client: str = "unknown") -> Iterator[None]:
        """Refuse (429) once the failed lookups are used up; count this one if it fails."""
        if self.guard is None:
            yield
            return
        limits = self.guard.limits(user_id, client)
        try:
            self.guard.limiter.check(limits)
        except TooManyAttempts:
            self._refused("rate_limited")
            raise
        try:
            yield
        except (CouponNotFound, CouponNotYours) as exc:
            self.guard.limiter.fail(key for key, _ in limits)
            self._refused("not_found" if isinstance(exc, CouponNotFound) else "not_yours")
            raise

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.coupon_refusals.labels(reason).inc()
