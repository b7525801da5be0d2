"""Time: the injected clock and the one definition of a day.

Rules that depend on time take a ``Clock`` (tests pass a fixed one and never sleep).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
SECONDS_PER_DAY = 86_400


def utc_now() -> datetime:
    """The real clock: now, in UTC."""
    return datetime.now(UTC)
