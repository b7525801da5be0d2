"""``Segments``: the bulk run, one user's refresh and profile, the counts.

A bulk run (``recoffer segments``, on a schedule) aggregates every user in SQL, learns the
shop's thresholds (typical interval, score breakpoints) from the customers, writes every row in
batches and records the run. Between runs a user's row is recomputed as their purchases and
views arrive, with the thresholds of the latest run (``SegmentRefresher``, in the background of
the ingest: a failure there is logged, never the ingest's).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.clock import Clock
from service.errors import UnknownUser
from service.segments.repository import SegmentRepository
from service.segments.rules import (
    STAGES,
    TYPES,
    Figures,
    Segment,
    ShopThresholds,
    ThresholdBuilder,
    segment,
)
from service.settings import SegmentSettings

log = logging.getLogger(__name__)
MAX_PENDING = 1_000  # refreshes waiting at once; beyond it an event is skipped (the next retries)
MAX_REMEMBERED = 1_000_000  # users whose last view refresh time this worker keeps


@dataclass(frozen=True)
class RunSummary:
    """What one bulk run did."""

    as_of: datetime
    users: int
    customers: int
    typical_interval_days: float
    matrix: dict[str, dict[str, int]]  # stage -> type -> users
    seconds: float

    def per_stage(self) -> dict[str, int]:
        return {stage: sum(self.matrix[stage].values()) for stage in STAGES}

    def per_type(self) -> dict[str, int]:
        return {kind: sum(self.matrix[s][kind] for s in STAGES) for kind in TYPES}


@dataclass(frozen=True)
class Profile:
    """One user's segment row, as the API shows it."""

    user_id: str
    orders: int
    coupon_orders: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    monetary: Any
    currency: str | None
    views: int
    active_days: int
    r_score: int | None
    f_score: int | None
    m_score: int | None
    lifecycle_stage: str
    loyalty_type: str
    computed_at: datetime

    @property
    def coupon_share(self) -> float:
        return round(self.coupon_orders / self.orders, 4) if self.orders else 0.0

    @property
    def recency_days(self) -> float | None:
        if self.last_order_at is None:
            return None
        return round(max(0.0, (self.computed_at - self.last_order_at).total_seconds()) / 86400, 3)


@dataclass(frozen=True)
class SegmentCounts:
    """Users per stage, per type and per stage x type, and when they were computed."""

    matrix: dict[str, dict[str, int]]
    oldest: datetime | None
    newest: datetime | None
    last_run: dict[str, Any] | None

    def per_stage(self) -> dict[str, int]:
        return {stage: sum(self.matrix[stage].values()) for stage in STAGES}

    def per_type(self) -> dict[str, int]:
        return {kind: sum(self.matrix[s][kind] for s in STAGES) for kind in TYPES}


class Segments:
    """Computes and reads user segments (see the module docstring)."""

    def __init__(
        self, repository: SegmentRepository, settings: SegmentSettings, clock: Clock
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.clock = clock

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.settings.engagement_days)

    def run(self, as_of: datetime | None = None) -> RunSummary:
        """Recompute every user with events as of ``as_of`` (default now); records the run."""
        started = self.clock()
        t0 = time.perf_counter()
        now = as_of or started
        builder = ThresholdBuilder(self.settings, now)
        matrix: Counter[tuple[str, str]] = Counter()
        users = 0
        shop: ShopThresholds | None = None
        for part, figures in self.repository.stream(now, self.window, self.settings.batch_rows):
            if part == "customers":
                for f in figures:
                    builder.add(f)
                shop = builder.build()
                continue
            assert shop is not None
            batch: list[Segment] = []
            for f in figures:
                s = segment(f, now, shop, self.settings)
                matrix[s.lifecycle_stage, s.loyalty_type] += 1
                batch.append(s)
                if len(batch) >= self.settings.batch_rows:
                    self.repository.save(batch)
                    users += len(batch)
                    batch = []
            self.repository.save(batch)
            users += len(batch)
        shop = shop or builder.build()
        table: dict[str, dict[str, int]] = {
            stage: {kind: matrix[stage, kind] for kind in TYPES} for stage in STAGES
        }
        seconds = time.perf_counter() - t0
        self.repository.add_run(
            {
                "as_of": now,
                "started_at": started,
                "finished_at": self.clock(),
                "users": users,
                "customers": builder.customers,
                "typical_interval_days": shop.typical_interval_days,
                "thresholds": shop.as_json(),
                "counts": table,
                "seconds": seconds,
            }
        )
        log.info("segments_computed", extra={"users": users, "seconds": round(seconds, 2)})
        return RunSummary(
            as_of=now,
            users=users,
            customers=builder.customers,
            typical_interval_days=shop.typical_interval_days,
            matrix=table,
            seconds=seconds,
        )

    def _shop(self) -> ShopThresholds:
        latest = self.repository.latest_thresholds()
        if latest is not None:
            return latest[0]
        # never run: the default interval, no score (nothing to rank the user against)
        return ShopThresholds(typical_interval_days=self.settings.default_interval_days)

    def compute(self, user_id: str, *, require_run: bool = False) -> Segment | None:
        """Recompute and store one user's row now; None without events (or without a run
        when ``require_run``)."""
        latest = self.repository.latest_thresholds()
        if latest is None and require_run:
            return None
        shop = latest[0] if latest is not None else self._shop()
        now = self.clock()
        figures = self.repository.figures_of(user_id, now, self.window)
        if figures is None:
            return None
        s = segment(figures, now, shop, self.settings)
        self.repository.save([s])
        return s

    def profile(self, user_id: str) -> Profile:
        """The user's row; computed now when they have events but no row; UnknownUser else."""
        row = self.repository.row_of(user_id)
        if row is None:
            computed = self.compute(user_id)
            if computed is None:
                if not self.repository.is_known(user_id):
                    raise UnknownUser(user_id)
                computed = segment(
                    Figures(user_id=user_id), self.clock(), self._shop(), self.settings
                )
                self.repository.save([computed])
            row = self.repository.row_of(user_id)
            assert row is not None
        return Profile(**row)

    def counts(self) -> SegmentCounts:
        matrix, oldest, newest = self.repository.counts()
        return SegmentCounts(matrix, oldest, newest, self.repository.latest_run())

    def runs(self, limit: int = 100) -> list[RunSummary]:
        """The latest ``limit`` bulk runs, the oldest first: users per stage x type each time."""
        return [
            RunSummary(
                as_of=row["as_of"],
                users=row["users"],
                customers=row["customers"],
                typical_interval_days=row["typical_interval_days"],
                matrix={
                    s: {t: int(row["counts"].get(s, {}).get(t, 0)) for t in TYPES} for s in STAGES
                },
                seconds=row["seconds"],
            )
            for row in self.repository.runs(limit)
        ]


class SegmentRefresher:
    """Keeps users' rows current as their events arrive, in the background of the ingest.

    A purchase always schedules its user; a view at most once per ``refresh_view_seconds``
    per user and worker. Nothing is computed before the first bulk run (there are no shop
    thresholds yet). Errors are logged: the events are stored already.
    """

    def __init__(self, segments: Segments, concurrency: int = 2) -> None:
        self.segments = segments
        self.settings = segments.settings
        self._viewed: dict[str, float] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(concurrency)

    @property
    def enabled(self) -> bool:
        return self.settings.refresh_on_ingest

    def on_events(self, stored: Iterable[tuple[str, str]]) -> int:
        """Schedule the refresh of the users of ``(user_id, type)`` pairs; returns how many."""
        scheduled = 0
        now = time.monotonic()
        for user_id, kind in stored:
            if kind not in ("purchase", "view") or user_id in self._pending:
                continue
            if len(self._pending) >= MAX_PENDING:
                break
            if kind == "view":
                last = self._viewed.get(user_id)
                if last is not None and now - last < self.settings.refresh_view_seconds:
                    continue
            if len(self._viewed) > MAX_REMEMBERED:
                self._viewed.clear()
            self._viewed[user_id] = now
            task = asyncio.get_running_loop().create_task(self._refresh(user_id))
            self._pending[user_id] = task
            task.add_done_callback(functools.partial(self._done, user_id))
            scheduled += 1
        return scheduled

    def _done(self, user_id: str, _task: asyncio.Task[None]) -> None:
        self._pending.pop(user_id, None)

    async def _refresh(self, user_id: str) -> None:
        async with self._slots:
            try:
                await run_in_threadpool(self.segments.compute, user_id, require_run=True)
            except Exception as exc:  # the events are stored; the next one retries
                log.warning(
                    "segment_refresh_failed", extra={"user_id": user_id, "error": str(exc)[:200]}
                )

    async def drain(self) -> None:
        """Wait for the refreshes under way (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)
