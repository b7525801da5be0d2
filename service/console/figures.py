"""The loyalty metrics and cohorts the console shows: kept per worker, and served at once
while a newer computation runs (stale while revalidating).

``Analytics`` reads every purchase line to compute them: on columns (``service.analytics.
columns``) this is about 1 s on the demo shop's 150,000 purchases (read 0.7-1 s of it, the
figures 0.1 s; the first request of a worker also imports numpy and pandas, about 0.7 s), and
grows with the purchases (about 8-14 s per report at 1,000,000 orders: docs/benchmarks.md).
A live shop's purchases never stop, so waiting for figures that match the last purchase would
make most visits slow. Each result is kept with the version of its data (the newest purchase
event, the number of erasures and, for a segment filter, the latest segment run):

- the data has not moved and the result is younger than ``MAX_AGE``: it is served;
- it has moved (or the result is older): the kept result is served at once, marked as not
  current (the page says when it was computed and that newer figures are on their way), and
  one computation starts in the background; the next visit gets its result;
- nothing kept yet (a worker's first visit of a view): the request computes it and waits.

The overview page warms the unfiltered views (loyalty per month and per week, cohorts: one read
of the lines for the three) after its answer is sent. One computation per view at a time."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from service.analytics.loyalty import Period, cohorts, loyalty
from service.analytics.orders import read_lines
from service.analytics.service import Analytics
from service.tables import erased_users, events, segment_runs

log = logging.getLogger(__name__)
Key = tuple[str, str, str | None]  # (loyalty | cohorts, period, segment)
# a result is computed again after this long even when its data version has not moved: a
# purchase committed out of id order (PostgreSQL) or a user re-segmented between runs shows
MAX_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class Figures:
    result: dict[str, Any]
    computed_at: datetime
    version: tuple[Any, ...]
    current: bool = True  # False: newer data arrived since; a newer result is being computed


def data_version(engine: Engine, segment: str | None) -> tuple[Any, ...]:
    """What the figures depend on, in reads that stop at once: the newest purchase event, the
    erasures (the only way events are deleted) and, for a segment filter, the latest segment
    run."""
    e = events.c
    with engine.connect() as conn:
        newest = conn.execute(
            select(e.id).where(e.type == "purchase").order_by(e.id.desc()).limit(1)
        ).scalar()
        erased = conn.execute(select(func.count()).select_from(erased_users)).scalar()
        version: tuple[Any, ...] = (newest, erased)
        if segment is not None:
            run = conn.execute(select(func.max(segment_runs.c.id))).scalar()
            version += (run,)
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

    @staticmethod
    def _fresh(kept: Figures | None, version: tuple[Any, ...]) -> bool:
        return (
            kept is not None
            and kept.version == version
            and datetime.now(UTC) - kept.computed_at < MAX_AGE
        )

    def _get(self, key: Key, compute: Callable[[], dict[str, Any]]) -> Figures:
        version = data_version(self.engine, key[2])
        kept = self._kept.get(key)
        if self._fresh(kept, version):
            assert kept is not None
            return kept
        if kept is not None:  # serve what is kept now; compute the newer result meanwhile
            lock = self._lock(key)
            if lock.acquire(blocking=False):
                worker = threading.Thread(
                    target=self._refresh,
                    args=(key, compute, version, lock),
                    name="recoffer-console-figures",
                    daemon=True,
                )
                worker.start()
            return dataclasses.replace(kept, current=False)
        with self._lock(key):
            kept = self._kept.get(key)  # computed meanwhile by the request we waited for
            if self._fresh(kept, version):
                assert kept is not None
                return kept
            figures = Figures(compute(), datetime.now(UTC), version)
            self._kept[key] = figures
            return figures

    def _refresh(
        self,
        key: Key,
        compute: Callable[[], dict[str, Any]],
        version: tuple[Any, ...],
        lock: threading.Lock,
    ) -> None:
        """Compute ``key`` again in the background (``lock`` held by the caller for it)."""
        try:
            self._kept[key] = Figures(compute(), datetime.now(UTC), version)
        except Exception:  # the database may be away: the kept result stays, the next visit retries
            log.warning("console_figures_refresh_failed", exc_info=True)
        finally:
            lock.release()

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
        """Compute the pages' unfiltered views now (after an answer, out of a request's way):
        the purchase lines read once for the three of them, each then computed by the same
        functions ``Analytics`` calls (with no range it reads every line, as here)."""
        keys: list[Key] = [("loyalty", "month", None), ("loyalty", "week", None)]
        keys.append(("cohorts", "month", None))
        locks = [self._lock(key) for key in keys]  # always in this order: no deadlock
        for lock in locks:
            lock.acquire()
        try:
            version = data_version(self.engine, None)
            missing = [k for k in keys if not self._fresh(self._kept.get(k), version)]
            if not missing:
                return
            for key, result in zip(missing, self._compute(missing), strict=True):
                self._kept[key] = Figures(result, datetime.now(UTC), version)
        finally:
            for lock in reversed(locks):
                lock.release()

    def _compute(self, keys: list[Key]) -> list[dict[str, Any]]:
        """The unfiltered views ``keys`` from one read of every purchase line (on columns, or
        on ``Line`` objects for amounts beyond 62 bits, as ``Analytics`` does)."""
        from service.analytics import columns  # numpy, pandas: not at a worker's start

        def period(key: Key) -> Period:
            return "week" if key[1] == "week" else "month"

        try:
            encoded = columns.encode(columns.read_columns(self.engine))
            return [
                columns.cohorts(encoded)
                if k[0] == "cohorts"
                else columns.loyalty(encoded, period(k))
                for k in keys
            ]
        except OverflowError:
            lines = list(read_lines(self.engine))
            return [
                cohorts(lines) if k[0] == "cohorts" else loyalty(lines, period(k)) for k in keys
            ]
