"""The loyalty metrics and cohorts the console shows, kept while the data they come from is
unchanged.

``Analytics`` reads every purchase line to compute them (seconds on a shop of 150,000
purchases), so each result is kept with the version of its data: the count and the highest id
of the purchase events, and for a segment filter the count and newest ``computed_at`` of the
segment rows. A page reuses a result whose data has not moved since, and the overview page
warms the default views after its answer is sent; one computation per view at a time (a second
request waits for it rather than starting another).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from service.analytics.loyalty import Period
from service.analytics.service import Analytics
from service.tables import events, user_segments

Key = tuple[str, str, str | None]  # (loyalty | cohorts, period, segment)


@dataclass(frozen=True)
class Figures:
    result: dict[str, Any]
    computed_at: datetime
    version: tuple[Any, ...]


def data_version(engine: Engine, segment: str | None) -> tuple[Any, ...]:
    """What the figures depend on, cheaply: purchases (and segment rows for a filter)."""
    e, s = events.c, user_segments.c
    with engine.connect() as conn:
        purchases = conn.execute(
            select(func.count(), func.max(e.id)).where(e.type == "purchase")
        ).one()
        version: tuple[Any, ...] = (int(purchases[0]), purchases[1])
        if segment is not None:
            rows = conn.execute(select(func.count(), func.max(s.computed_at))).one()
            version += (int(rows[0]), rows[1])
    return version


class FiguresCache:
    """Loyalty and cohort results of one worker, by view, with the data version of each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.analytics = Analytics(engine)
        self._kept: dict[Key, Figures] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _get(self, key: Key, compute: Callable[[], dict[str, Any]]) -> Figures:
        version = data_version(self.engine, key[2])
        kept = self._kept.get(key)
        if kept is not None and kept.version == version:
            return kept
        with self._lock(key):
            kept = self._kept.get(key)  # computed meanwhile by the request we waited for
            if kept is not None and kept.version == version:
                return kept
            figures = Figures(compute(), datetime.now(UTC), version)
            self._kept[key] = figures
            return figures

    def loyalty(self, period: Period, segment: str | None) -> Figures:
        """``Analytics.loyalty`` over every period (what the API answers without a range)."""
        return self._get(
            ("loyalty", period, segment),
            lambda: self.analytics.loyalty(period, None, None, segment),
        )

    def cohorts(self, segment: str | None) -> Figures:
        """``Analytics.cohorts`` over every month."""
        return self._get(
            ("cohorts", "month", segment), lambda: self.analytics.cohorts(None, None, segment)
        )

    def warm(self) -> None:
        """Compute the pages' default views now (after an answer, out of a request's way)."""
        self.loyalty("month", None)
        self.cohorts(None)
