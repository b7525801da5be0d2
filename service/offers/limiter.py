"""Brute-force guard for coupon codes: failed lookups per key in a sliding window.

OWASP OAT-002 (token cracking): a code is only as strong as the number of guesses allowed.
Each failed lookup (unknown code, another user's code) counts against the user it was made for,
or, when made for no user, against the calling client (whom it counts against is the coupons'
policy: ``service.offers.coupons.LookupGuard``); past a limit, lookups are refused until the
window moves on.
The counts live in this process (several workers each count their own share).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from service.errors import TooManyAttempts


class FailureLimiter:
    """At most ``limit`` failures per key within ``window`` seconds (bounded memory)."""

    def __init__(
        self,
        window: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, limits: Iterable[tuple[str, int]]) -> None:
        """Raise TooManyAttempts when any (key, limit) has used its failures up."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, limit in limits:
                times = self._failures.get(key)
                if times is None:
                    continue
                self._expire(times, now)
                if len(times) >= limit:
                    wait = max(wait, times[len(times) - limit] + self.window - now)
        if wait > 0:
            raise TooManyAttempts(max(1, math.ceil(wait)))

    def fail(self, keys: Iterable[str]) -> None:
        """Count one failure against each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    times = self._failures[key] = deque(maxlen=10_000)
                    if len(self._failures) > self.max_keys:
                        self._failures.popitem(last=False)
                else:
                    self._failures.move_to_end(key)
                self._expire(times, now)
                times.append(now)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()
