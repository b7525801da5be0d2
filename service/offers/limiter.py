"""Brute-force guard for coupon codes: failed lookups per caller in a moving window.

OWASP OAT-002 (token cracking): a code is only as strong as the number of guesses allowed.
Each failed lookup (an unknown code, another user's code) counts against what a guesser
cannot rotate: the API client (a fingerprint of the key that called) and the caller's
address (``service.middleware.client_address``: X-Forwarded-For only from trusted proxies).
Never against the ``user_id`` in the request, which the caller chooses freely. Only failures
are counted and only failures are refused: a valid code is never refused, so a guesser's
failures cannot lock customers behind the same shop backend out of their coupons.

The counts live in the maintained ``limits`` library: in Redis when ``RECOFFER_REDIS_URL`` is
set, so that every worker and replica shares one count (its moving window is one atomic Lua
script per hit); otherwise in this process's memory, which suits the embedded single-process
setup only (N workers would allow N times the limit).

When Redis is configured but cannot be reached, the guard fails closed: a failed lookup is
answered 503 (``LimiterUnavailable``) instead of being let through uncounted, since failing
open would hand unlimited guesses to whoever can slow Redis down. Valid codes never touch the
limiter, so customers are unaffected.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import LimiterUnavailable, TooManyAttempts

if TYPE_CHECKING:  # ``limits`` is imported when a limiter is built, not with this module
    from limits import RateLimitItem
    from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.5  # a lookup waits at most this long for an unreachable Redis


@dataclass(frozen=True)
class Caller:
    """Who made a lookup, in the terms the limiter counts by."""

    client: str  # the API key's role and fingerprint ("frontend:1a2b3c4d5e6f"), never the key
    address: str  # the peer, or the forwarded address when the peer is a trusted proxy


IN_PROCESS = Caller("in-process", "in-process")  # calls made from Python, not over HTTP


class FailureLimiter:
    """At most ``per_client`` failures per API client and ``per_address`` per address within
    ``window_seconds``, counted in Redis (``redis_url``) or in this process.
    """

    def __init__(
        self,
        *,
        per_client: int | None,
        per_address: int,
        window_seconds: float,
        redis_url: str | None = None,
        prefix: str = "recoffer",
        name: str = "coupon-failures",
    ) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage, RedisStorage, Storage
        from limits.strategies import MovingWindowRateLimiter

        window = max(1, math.ceil(window_seconds))
        # per_client None: counted per address only (the console's sign-in has no key yet)
        self._items: dict[str, RateLimitItem] = {
            "address": RateLimitItemPerSecond(per_address, window)
        }
        if per_client is not None:
            self._items["client"] = RateLimitItemPerSecond(per_client, window)
        self.shared = redis_url is not None
        storage: Storage
        if redis_url is None:
            storage = MemoryStorage()
        else:
            storage = RedisStorage(
                redis_url,
                key_prefix=f"{prefix}:{name}",
                wrap_exceptions=True,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
        self._limiter: MovingWindowRateLimiter = MovingWindowRateLimiter(storage)

    def fail(self, caller: Caller) -> None:
        """Count one failed lookup against the caller's client and address.

        Raises:
            TooManyAttempts: one of them had used its failures up (this one is refused).
            LimiterUnavailable: Redis cannot be reached; the failure cannot be counted.
        """
        self._apply(caller, count=True)

    def check(self, caller: Caller) -> None:
        """Refuse, without counting, a caller that has used its failures up (TooManyAttempts);
        for an attempt whose success must not be told apart (a sign-in): refused before the
        key is even compared."""
        self._apply(caller, count=False)

    def _keys(self, caller: Caller) -> list[tuple[str, str]]:
        pairs = (("client", caller.client), ("address", caller.address))
        return [(kind, value) for kind, value in pairs if kind in self._items]

    def _apply(self, caller: Caller, *, count: bool) -> None:
        """Hit (``count``) or test each of the caller's windows; TooManyAttempts with the
        latest reset among those used up."""
        from limits.errors import StorageError

        step = self._limiter.hit if count else self._limiter.test
        try:
            refused = [
                (self._items[kind], kind, value)
                for kind, value in self._keys(caller)
                if not step(self._items[kind], kind, value)
            ]
            if not refused:
                return
            reset = max(
                self._limiter.get_window_stats(item, kind, value).reset_time
                for item, kind, value in refused
            )
        except StorageError as exc:
            log.warning("failure_limiter_unavailable", extra={"error": type(exc).__name__})
            raise LimiterUnavailable("the failure limiter cannot be reached") from None
        raise TooManyAttempts(max(1, math.ceil(reset - time.time())))

    def clear(self, caller: Caller) -> None:
        """Forget the caller's failures (an operator unblocking a client)."""
        from limits.errors import StorageError

        try:
            for kind, value in self._keys(caller):
                self._limiter.clear(self._items[kind], kind, value)
        except StorageError:
            raise LimiterUnavailable("the failure limiter cannot be reached") from None
