"""Evaluation on arrival: a view event may be the one that makes a user eligible.

For campaigns with ``evaluate_on_view``, every stored view schedules an evaluation of its user
in the background, so the frontend need not call ``/v1/offers/evaluate``. A cheap in-memory
pre-check (the worker's recent events of that user) skips users who cannot qualify yet, and
users already decided here are not evaluated again; the database decides the rest, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from starlette.concurrency import run_in_threadpool

from service.activity.records import Activity
from service.offers.decisions import OfferEngine
from service.offers.kinds import SETTLED
from service.offers.rules import counted_views

log = logging.getLogger(__name__)
MAX_REMEMBERED = 1_000_000  # decided (campaign, user) pairs skipped without a database call
MAX_PENDING = 1_000  # evaluations waiting at once; beyond it a view is skipped (next one retries)


class AutoEvaluator:
    """Schedules background evaluations for the campaigns that ask for them."""

    def __init__(self, engine: OfferEngine, per_user: int, concurrency: int = 4) -> None:
        self.engine = engine
        self.per_user = per_user  # the recent-events view keeps this many per user
        self.campaigns = [c for c in engine.campaigns.values() if c.evaluate_on_view]
        self._decided: set[tuple[str, str]] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)

    @property
    def enabled(self) -> bool:
        return bool(self.campaigns)

    def on_views(self, users: Iterable[str], recent: dict[str, Sequence[Activity]]) -> int:
        """Schedule evaluations for ``users`` who just viewed something; returns how many."""
        scheduled = 0
        now = self.engine.clock()
        for campaign in self.campaigns:
            if not campaign.is_active(now):
                continue
            for user_id in users:
                key = (campaign.campaign_id, user_id)
                if key in self._decided or len(self._pending) >= MAX_PENDING:
                    continue
                activity = recent.get(user_id, ())
                views = [a for a in activity if a.type == "view"]
                counted = counted_views(campaign, len(views), len({a.item_id for a in views}))
                # a full recent view may have dropped older views: let the database count
                if counted < campaign.min_views and len(activity) < self.per_user:
                    continue  # cannot qualify yet; the view that makes it will come through
                # the session read for this view: the coupon's ranking reads it no more
                evaluation = self._evaluate(campaign.campaign_id, user_id, activity)
                task = asyncio.create_task(evaluation)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                scheduled += 1
        return scheduled

    async def _evaluate(
        self, campaign_id: str, user_id: str, recent: Sequence[Activity] | None = None
    ) -> None:
        async with self._slots:
            try:
                decision = await run_in_threadpool(
                    self.engine.evaluate, user_id, campaign_id, recent
                )
            except Exception as exc:  # the next view retries; the request has been answered
                log.warning(
                    "auto_evaluation_failed",
                    extra={"campaign": campaign_id, "user_id": user_id, "error": str(exc)[:200]},
                )
                return
        if decision.decision in SETTLED:
            if len(self._decided) > MAX_REMEMBERED:
                self._decided.clear()
            self._decided.add((campaign_id, user_id))

    async def drain(self) -> None:
        """Wait for the evaluations under way (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
