"""``Privacy``: erase one user, export what is held about them, keep this worker's tombstones.

The worker that handles a DELETE honours it at once (its tombstones and recent activity are
updated before the answer); every other worker and replica within one event poll
(``RECOFFER_EVENT_POLL_SECONDS``), when ``service.background`` calls ``refresh``. With sessions
in Redis (issue 15, item 5) the user's list (named by the tombstone hash) is deleted by the
erasing worker, and by every worker when it first reads the tombstone (an event a replica
pushed before it knew), after which no worker pushes, reads or fills it; a delete Redis
refused is tried again at each ``refresh`` until it succeeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.activity.records import Activity
from service.activity.sessions import RedisSessions
from service.activity.store import ActivityStore
from service.clock import Clock
from service.privacy.repository import TOMBSTONE_LOOKBACK_IDS, PrivacyRepository
from service.privacy.tombstones import Tombstones
from service.recommend.holder import ModelHolder

log = logging.getLogger(__name__)
# what the receipt calls the user's recent events in Redis (outside the database's tables)
REDIS_SESSION = "redis_session"


@dataclass(frozen=True)
class Receipt:
    """What ``DELETE /v1/users/{user_id}`` answers: the first erasure's time, this call's counts."""

    erased_at: datetime
    removed: dict[str, int]
    # what could not be deleted now and is retried (``redis_session`` while Redis is down)
    pending: tuple[str, ...] = ()


class Privacy:
    """Erasure and export for the API; the tombstone set for ``Recommendations``."""

    def __init__(
        self,
        repository: PrivacyRepository,
        tombstones: Tombstones,
        activity: ActivityStore,
        models: ModelHolder,
        clock: Clock,
        sessions: RedisSessions | None = None,
    ) -> None:
        self.repository = repository
        self.sessions = sessions  # the users' recent events in Redis, when configured
        self.tombstones = tombstones
        self.activity = activity
        self.models = models
        self.clock = clock
        # erased here since the last poll: a poll that read their events before the erasure
        # committed adds them back after it, so the next ``refresh`` forgets them once more
        self._erased_here: set[str] = set()
        # tombstone hashes whose Redis list is still to delete (Redis refused the delete)
        self._redis_pending: set[str] = set()

    def erase(self, user_id: str) -> Receipt:
        """Remove the user's data (policy per table), write the tombstone, honour it here now."""
        erased = self.repository.erase(user_id, self.clock())
        if self.tombstones.key is None:
            self.tombstones.key = self.repository.key()
        self.tombstones.add([erased.user_hash])
        self.activity.forget(user_id)
        removed = dict(erased.removed)
        pending: tuple[str, ...] = ()
        if self.sessions is not None:  # deleted again at the next refresh in any case
            deleted = self.sessions.forget(user_id)
            if deleted is None:  # not 0: the list may be there, its delete is retried
                pending = (REDIS_SESSION,)
                self._redis_pending.add(erased.user_hash)
            else:
                removed[REDIS_SESSION] = deleted
        self._erased_here.add(user_id)
        # counts only: the id itself is not logged
        log.info("user_erased", extra={"removed": removed, "pending": pending})
        return Receipt(erased_at=erased.erased_at, removed=removed, pending=pending)

    def refresh(self) -> int:
        """Read tombstones written since the last call (by any worker); returns how many were new.

        Users newly erased elsewhere are dropped from this worker's recent activity too.
        """
        erased_here, self._erased_here = self._erased_here, set()
        for user_id in erased_here:
            self.activity.forget(user_id)
            if self.sessions is not None and self.sessions.forget(user_id) is None:
                self._erased_here.add(user_id)  # Redis refused: once more at the next refresh
        arms = self.models.experiment  # the arms an A/B test remembers per user id
        if arms is not None and erased_here:
            arms.forget(erased_here.__contains__)
        key, rows = self.repository.tombstones(
            max(0, self.tombstones.watermark - TOMBSTONE_LOOKBACK_IDS)
        )
        if key is None:
            return 0
        self.tombstones.key = key
        if not rows:
            self._forget_pending()
            return 0
        self.tombstones.watermark = max(self.tombstones.watermark, rows[-1][0])
        new = self.tombstones.add(h for _, h in rows)
        if new and self.sessions is not None:  # erased elsewhere: their list goes here too
            self._redis_pending |= new
        self._forget_pending()
        if new:
            self.activity.forget_matching(lambda user_id: self.tombstones.hash(user_id) in new)
            arms = self.models.experiment
            if arms is not None:
                arms.forget(lambda user_id: self.tombstones.hash(user_id) in new)
        return len(new)

    def _forget_pending(self) -> None:
        """Delete the Redis lists still to delete; kept for the next refresh if Redis refuses."""
        pending = self._redis_pending
        if self.sessions is not None and pending and self.sessions.forget_hashes(pending):
            self._redis_pending = set()

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything held about ``user_id``: rows per table, the recent activity (Redis's
        list when configured, else this worker's), and what the served model knows of them
        (JSON-ready values)."""
        rows = self.repository.rows_of(user_id)
        erased_at = self.repository.erased_at(user_id)
        return {
            "user_id": user_id,
            "erased_at": None if erased_at is None else erased_at.isoformat(),
            "tables": {name: [_plain(row) for row in found] for name, found in rows.items()},
            "recent_activity": [
                {"item_id": a.item_id, "type": a.type, "ts": a.ts.isoformat()}
                for a in self._recent(user_id)
            ],
            "model": self._model_part(user_id),
        }

    def _recent(self, user_id: str) -> tuple[Activity, ...]:
        if self.tombstones.is_erased(user_id):  # whatever Redis may still hold: nothing
            return ()
        if self.sessions is not None:
            return self.sessions.recent(user_id)
        return self.activity.recent(user_id)

    def _model_part(self, user_id: str) -> dict[str, Any] | None:
        recommender = self.models.current
        if recommender is None:
            return None
        model = recommender.model
        user_idx = model.user_index.get(user_id)
        purchases: list[dict[str, Any]] = []
        if user_idx is not None:
            hist = model.scorer.history_counts
            start, end = int(hist.indptr[user_idx]), int(hist.indptr[user_idx + 1])
            purchases = [
                {"item_id": model.item_labels[int(i)], "orders": float(n)}
                for i, n in zip(hist.indices[start:end], hist.data[start:end], strict=True)
            ]
        return {
            "version": model.version,
            "in_model": user_idx is not None,
            "purchases": purchases,
            "served_personally": user_idx is not None and not self.tombstones.is_erased(user_id),
        }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A database row with JSON-ready values (times in ISO 8601, exact amounts as strings)."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        out[name] = value
    return out
