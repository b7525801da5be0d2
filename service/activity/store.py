"""Each worker's in-memory view of recent events per user and of catalogue changes.

Filled by tailing the events table, so answering a recommendation never waits for the
database (and keeps working while it is down).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from datetime import datetime

from service.activity.records import Activity, CatalogueEntry, ItemRecord, StoredEvent

TAIL_LOOKBACK_IDS = 2_000  # ids may commit out of order on PostgreSQL; re-read this many


class ActivityStore:
    """Recent events per user and the catalogue overlay, in this worker's memory.

    Bounded: at most ``per_user`` events for each of at most ``max_users`` users (least
    recently active users are forgotten first). Thread-safe.
    """

    def __init__(
        self, per_user: int = 50, max_users: int = 1_000_000, lookback: int | None = None
    ) -> None:
        self.per_user = per_user
        self.max_users = max_users
        # SQLite commits ids in order (one writer); PostgreSQL may not, so re-read a window
        self.lookback = TAIL_LOOKBACK_IDS if lookback is None else lookback
        self._users: OrderedDict[str, deque[Activity]] = OrderedDict()
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._lock = threading.Lock()
        self.watermark = 0
        self.purchases: Counter[str] = Counter()
        self.catalogue: dict[str, CatalogueEntry] = {}
        self.catalogue_watermark: datetime | None = None
        # hidden or deleted items (never recommended); replaced whole, so readers need no lock
        self.hidden: frozenset[str] = frozenset()

    def add(self, rows: Iterable[StoredEvent], *, from_tail: bool = True) -> int:
        """Remember events not seen before; returns how many were new.

        Only rows read by the tail (``from_tail``) move the watermark: a worker's own writes
        may have ids above events of other workers it has not read yet.
        """
        added = 0
        with self._lock:
            for row in rows:
                if from_tail:
                    self.watermark = max(self.watermark, row.id)
                if row.id in self._seen:
                    continue
                self._remember_id(row.id)
                added += 1
                if row.item_id is None:
                    continue
                if row.type == "purchase":
                    self.purchases[row.item_id] += 1
                queue = self._users.get(row.user_id)
                if queue is None:
                    queue = self._users[row.user_id] = deque(maxlen=self.per_user)
                    if len(self._users) > self.max_users:
                        self._users.popitem(last=False)
                else:
                    self._users.move_to_end(row.user_id)
                queue.append(Activity(item_id=row.item_id, type=row.type, ts=row.ts))
        return added

    def _remember_id(self, event_id: int) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        while len(self._seen_order) > 4 * TAIL_LOOKBACK_IDS:
            self._seen.discard(self._seen_order.popleft())

    def recent(self, user_id: str) -> tuple[Activity, ...]:
        queue = self._users.get(user_id)
        return tuple(queue) if queue else ()

    def tail_from(self) -> int:
        """The id after which the next poll should read (with a safety lookback)."""
        return max(0, self.watermark - self.lookback)

    def update_catalogue(self, rows: Iterable[ItemRecord]) -> None:
        with self._lock:
            hidden = set(self.hidden)
            for row in rows:
                entry = self.catalogue[row.item_id] = row.entry()
                (hidden.add if entry.hidden else hidden.discard)(row.item_id)
                if self.catalogue_watermark is None or row.updated_at > self.catalogue_watermark:
                    self.catalogue_watermark = row.updated_at
            if hidden != self.hidden:
                self.hidden = frozenset(hidden)
