"""Each worker's in-memory view of recent events per user and of catalogue changes.

Filled by tailing the events table, so answering a recommendation never waits for the
database (and keeps working while it is down).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from service.activity.records import Activity, CatalogueEntry, ItemRecord, StoredEvent

if TYPE_CHECKING:
    from service.metrics import Metrics

TAIL_LOOKBACK_IDS = 2_000  # ids may commit out of order on PostgreSQL; re-read this many
# catalogue changes may commit out of the order of their updated_at (PostgreSQL, replicas'
# clocks): each poll reads again the changes this far behind the newest seen
CATALOGUE_LOOKBACK = timedelta(seconds=30)
DEFAULT_MAX_USERS = 100_000
# one slot and link of the users' OrderedDict (measured with tracemalloc on CPython 3.11)
_DICT_ENTRY_BYTES = 100
_TYPICAL_ID = "u-0000000042"


def _event_bytes() -> int:
    """What one remembered event costs: the record, its attributes, its time and item id."""
    sample = Activity(item_id=_TYPICAL_ID, type="view", ts=datetime.now(UTC))
    # the attributes' values live beside the object (a pointer each, and a small header);
    # asking for __dict__ would build a dictionary the store's events never have
    own = sys.getsizeof(sample) + 8 * (len(fields(Activity)) + 2)
    return own + sys.getsizeof(sample.ts) + sys.getsizeof(_TYPICAL_ID)


class ActivityStore:
    """Recent events per user and the catalogue overlay, in this worker's memory.

    Bounded: at most ``per_user`` events for each of at most ``max_users`` users (the least
    recently active user is forgotten first, and counted as an eviction). ``estimated_bytes``
    says what they cost; with ``metrics``, the users held, that estimate and the evictions are
    reported as they change. Thread-safe.

    ``tail_sessions=False`` (sessions in Redis, ``service.activity.sessions``): the events read
    by the tail count for popularity but are not held per user; only this worker's own writes
    are, as the fallback when Redis cannot be reached.
    """

    def __init__(
        self,
        per_user: int = 50,
        max_users: int = DEFAULT_MAX_USERS,
        lookback: int | None = None,
        metrics: Metrics | None = None,
        *,
        tail_sessions: bool = True,
    ) -> None:
        if per_user < 1 or max_users < 1:
            raise ValueError("per_user and max_users must be >= 1")
        self.per_user = per_user
        self.max_users = max_users
        self.metrics = metrics
        self.tail_sessions = tail_sessions
        self.events_held = 0
        self.evictions = 0
        self._user_bytes = (
            sys.getsizeof(deque(maxlen=per_user)) + sys.getsizeof(_TYPICAL_ID) + _DICT_ENTRY_BYTES
        )
        self._event_bytes = _event_bytes()
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
        # hidden, deleted or out of stock: never in any list (issue 14); replaced whole too
        self.unservable: frozenset[str] = frozenset()

    def add(self, rows: Iterable[StoredEvent], *, from_tail: bool = True) -> int:
        """Remember events not seen before; returns how many were new.

        Only rows read by the tail (``from_tail``) move the watermark: a worker's own writes
        may have ids above events of other workers it has not read yet.
        """
        added = evicted = 0
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
                if from_tail and not self.tail_sessions:
                    continue
                queue = self._users.get(row.user_id)
                if queue is None:
                    queue = self._users[row.user_id] = deque(maxlen=self.per_user)
                    if len(self._users) > self.max_users:
                        _, forgotten = self._users.popitem(last=False)
                        self.events_held -= len(forgotten)
                        evicted += 1
                else:
                    self._users.move_to_end(row.user_id)
                if len(queue) < self.per_user:
                    self.events_held += 1
                queue.append(Activity(item_id=row.item_id, type=row.type, ts=row.ts))
            self.evictions += evicted
            if added:
                self._report(evicted)
        return added

    @property
    def users_held(self) -> int:
        """Users whose recent events are in memory now."""
        return len(self._users)

    def estimated_bytes(self) -> int:
        """An estimate of the memory the users' recent events take (typical id lengths)."""
        return len(self._users) * self._user_bytes + self.events_held * self._event_bytes

    def _report(self, evicted: int) -> None:
        if self.metrics is None:
            return
        self.metrics.activity_users.set(len(self._users))
        self.metrics.activity_bytes.set(self.estimated_bytes())
        if evicted:
            self.metrics.activity_evictions.inc(evicted)

    def _remember_id(self, event_id: int) -> None:
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        while len(self._seen_order) > 4 * TAIL_LOOKBACK_IDS:
            self._seen.discard(self._seen_order.popleft())

    def recent(self, user_id: str) -> tuple[Activity, ...]:
        queue = self._users.get(user_id)
        return tuple(queue) if queue else ()

    def forget(self, user_id: str) -> None:
        """Drop the user's recent events (an erasure); aggregate counts are not personal."""
        with self._lock:
            forgotten = self._users.pop(user_id, None)
            if forgotten is not None:
                self.events_held -= len(forgotten)
                self._report(0)

    def forget_matching(self, erased: Callable[[str], bool]) -> int:
        """Drop every user for whom ``erased`` is true (tombstones read from the database)."""
        with self._lock:
            users = list(self._users)
        gone = [u for u in users if erased(u)]  # outside the lock: the tail keeps adding
        for user_id in gone:
            self.forget(user_id)
        return len(gone)

    def tail_from(self) -> int:
        """The id after which the next poll should read (with a safety lookback)."""
        return max(0, self.watermark - self.lookback)

    def catalogue_since(self) -> datetime | None:
        """Where the next catalogue poll reads from: the newest change seen, less
        ``CATALOGUE_LOOKBACK`` (a change committed late, or stamped by a replica whose clock
        runs behind, is still read; rows read again that changed nothing are ignored)."""
        mark = self.catalogue_watermark
        return None if mark is None else mark - CATALOGUE_LOOKBACK

    def update_catalogue(self, rows: Iterable[ItemRecord]) -> list[ItemRecord]:
        """Take in catalogue rows; returns those that changed what this worker knew."""
        changed: list[ItemRecord] = []
        with self._lock:
            hidden = set(self.hidden)
            unservable = set(self.unservable)
            for row in rows:
                entry = row.entry()
                if self.catalogue.get(row.item_id) != entry:
                    changed.append(row)
                self.catalogue[row.item_id] = entry
                (hidden.add if entry.hidden else hidden.discard)(row.item_id)
                (unservable.discard if entry.servable else unservable.add)(row.item_id)
                if self.catalogue_watermark is None or row.updated_at > self.catalogue_watermark:
                    self.catalogue_watermark = row.updated_at
            if hidden != self.hidden:
                self.hidden = frozenset(hidden)
            if unservable != self.unservable:
                self.unservable = frozenset(unservable)
        return changed
