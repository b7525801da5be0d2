"""The in-memory view of recent events each worker keeps."""

from __future__ import annotations

from pathlib import Path


def test_own_writes_do_not_move_the_tail_watermark() -> None:
    from datetime import UTC, datetime

    from service.activity.records import StoredEvent
    from service.activity.store import ActivityStore

    store = ActivityStore(lookback=0)
    now = datetime.now(UTC)
    store.add([StoredEvent(94, "a", "i1", "view", now)])
    store.add([StoredEvent(101, "b", "i2", "view", now)], from_tail=False)  # this worker's write
    assert store.tail_from() == 94  # 95..100 of other workers are still to be read
    store.add([StoredEvent(n, "c", "i3", "view", now) for n in range(95, 102)])
    assert store.tail_from() == 101
    assert len(store.recent("b")) == 1  # 101 was not added twice
    assert len(store.recent("c")) == 6


def test_sqlite_change_signature_moves_with_writes_only(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from service.activity.records import NewEvent
    from service.activity.repository import Repository
    from service.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    repo = Repository(engine)
    before = repo.change_signature()
    assert before is not None
    repo.events_after(0)  # a read changes nothing
    assert repo.change_signature() == before
    repo.add_events([NewEvent("u", "view", datetime.now(UTC), item_id="i")])
    assert repo.change_signature() != before
    engine.dispose()
