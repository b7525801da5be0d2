"""``Feedback``: impressions (one per list shown) and clicks checked against their signed list
ids, stored with the events batch they came in, carts and purchases credited (last touch), the
online figures.

``Ingest`` calls :meth:`Feedback.check` for every impression and click of a batch before
anything is written (a list id that is not this service's for that user refuses the whole
batch, naming ``events.N.request_id``), then runs :meth:`Feedback.writer`'s function inside
the batch's transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from service.activity.records import StoredEvent
from service.clock import Clock
from service.errors import InvalidInput
from service.feedback.figures import Tally, tally
from service.feedback.repository import (
    UNKNOWN,
    ClickRow,
    FeedbackRepository,
    ShownList,
    Windows,
    Written,
)
from service.feedback.token import (
    LETTER_SOURCES,
    SOURCE_LETTERS,
    InvalidListId,
    ListIds,
    ServedList,
)
from service.metrics import Metrics
from service.settings import Settings

FEEDBACK_TYPES = ("impression", "click")


@dataclass(frozen=True, slots=True)
class FeedbackDraft:
    """One impression (a list shown: ``items``, ``positions``) or click (``item_id``) as sent
    (``list_id``: the response's whole ``request_id``)."""

    type: str
    user_id: str
    item_id: str | None
    list_id: str
    ts: datetime
    placement: str | None = None
    items: tuple[str, ...] | None = None
    positions: tuple[int, ...] | None = None  # None: 0, 1, ... len(items) - 1
    client_event_id: str | None = None


class BatchWrite:
    """The function run in the batch's transaction; ``written`` once it has run."""

    def __init__(self, feedback: Feedback, rows: Sequence[ShownList | ClickRow]) -> None:
        self.feedback = feedback
        self.rows = rows
        self.written = Written()

    def __call__(self, conn: Connection, stored: list[StoredEvent]) -> None:
        self.written = self.feedback.repository.write(
            conn, self.rows, stored, self.feedback.windows
        )


class Feedback:
    """What the events route, the analytics route and the console ask of feedback."""

    def __init__(
        self,
        repository: FeedbackRepository,
        list_ids: ListIds,
        clock: Clock,
        *,
        windows: Windows,
        metrics: Metrics | None = None,
        retention: timedelta | None = None,
    ) -> None:
        self.repository = repository
        self.list_ids = list_ids
        self.clock = clock
        self.windows = windows
        self.metrics = metrics
        self.retention = retention

    @classmethod
    def from_settings(
        cls,
        repository: FeedbackRepository,
        list_ids: ListIds,
        clock: Clock,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> Feedback:
        days = settings.feedback_retention_days
        return cls(
            repository,
            list_ids,
            clock,
            windows=Windows(
                click=timedelta(hours=settings.attribution_click_hours),
                impression=timedelta(hours=settings.attribution_impression_hours),
            ),
            metrics=metrics,
            retention=timedelta(days=days) if days else None,
        )

    def check(
        self, drafts: Sequence[tuple[int, FeedbackDraft]], *, batch: bool
    ) -> list[ShownList | ClickRow]:
        """Each (index in the request, draft) read against its list id; InvalidInput naming
        ``events.N.request_id`` (``request_id`` alone) for the first that is not valid, or
        ``events.N.positions`` (``items``) for a place past the end of the list."""
        rows: list[ShownList | ClickRow] = []
        read: dict[tuple[str, str], ServedList] = {}  # a list's click and impression: one check
        for index, d in drafts:
            prefix = f"events.{index}." if batch else ""
            served = read.get((d.list_id, d.user_id))
            if served is None:
                try:
                    served = self.list_ids.read(d.list_id, d.user_id)
                except InvalidListId as exc:
                    raise InvalidInput(f"{prefix}request_id", str(exc)) from None
                if len(served.request_id) > 64:  # never one of ours: ours are 24
                    raise InvalidInput(
                        f"{prefix}request_id", "the list's id part is longer than 64 characters"
                    )
                read[(d.list_id, d.user_id)] = served
            sources = served.sources
            if d.type == "impression":
                items = d.items
                assert items is not None  # the schema requires them
                positions = d.positions if d.positions is not None else tuple(range(len(items)))
                if max(positions) >= len(sources):
                    named = "positions" if d.positions is not None else "items"
                    raise InvalidInput(
                        f"{prefix}{named}",
                        f"the list has {len(sources)} items (positions from 0); "
                        f"{named} goes past its end",
                    )
                rows.append(
                    ShownList(
                        request_id=served.request_id,
                        user_id=d.user_id,
                        placement=d.placement or UNKNOWN,
                        items=items,
                        positions=positions,
                        letters="".join(SOURCE_LETTERS.get(sources[p], "p") for p in positions),
                        model_version=served.model_version,
                        recipe=served.recipe,
                        experiment_id=served.experiment_id,
                        arm=served.arm,
                        served_at=served.served_at,
                        ts=d.ts,
                        client_event_id=d.client_event_id,
                    )
                )
                continue
            assert d.item_id is not None  # the schema requires it
            distinct = set(sources)
            rows.append(
                ClickRow(
                    request_id=served.request_id,
                    user_id=d.user_id,
                    item_id=d.item_id,
                    placement=d.placement,
                    model_version=served.model_version,
                    recipe=served.recipe,
                    list_source=distinct.pop() if len(distinct) == 1 else UNKNOWN,
                    experiment_id=served.experiment_id,
                    arm=served.arm,
                    served_at=served.served_at,
                    ts=d.ts,
                    client_event_id=d.client_event_id,
                )
            )
        return rows

    def writer(self, rows: Sequence[ShownList | ClickRow]) -> BatchWrite:
        """The function ``activity.Repository.add_events`` runs in the batch's transaction."""
        return BatchWrite(self, rows)

    def count(self, written: Written) -> None:
        """The ingest counters on ``/metrics``."""
        if self.metrics is None:
            return
        for letter, n in Counter("".join(written.shown)).items():  # shown items per source
            self.metrics.rec_impressions.labels(LETTER_SOURCES.get(letter, UNKNOWN)).inc(n)
        for source, n in Counter(written.clicks).items():
            self.metrics.rec_clicks.labels(source).inc(n)
        for (kind, via), n in Counter((c.kind, c.via) for c in written.credits).items():
            self.metrics.rec_attributed.labels(kind, via).inc(n)

    # --- the figures -----------------------------------------------------------------------

    def tally(
        self, by: Sequence[str], since: datetime | None, until: datetime | None
    ) -> list[Tally]:
        with self.repository.base.engine.connect() as conn:
            return tally(conn, by, since=since, until=until)

    def daily(self, since: datetime | None, until: datetime | None) -> list[tuple[str, int, int]]:
        return self.repository.daily(since, until)

    def prune(self) -> int:
        """Delete what is past the retention (every worker may: the deletes are idempotent)."""
        if self.retention is None:
            return 0
        return self.repository.prune(self.clock() - self.retention)
