"""The trainer leaves the service's erased users out (training.erasure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.errors import DataError
from service.privacy.repository import PrivacyRepository
from training.data.formats import Purchases
from training.erasure import DROP_REASON, honour_erasures


def _erase(url: str, *user_ids: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    privacy = PrivacyRepository(Repository(engine))
    for user_id in user_ids:
        privacy.erase(user_id, datetime.now(UTC))
    engine.dispose()


def test_a_file_run_with_a_database_url_leaves_erased_users_out(
    small_purchases: Purchases, database_url: str
) -> None:
    frame = small_purchases.frame
    erased = [str(u) for u in frame["user_id"].drop_duplicates().iloc[:2]]
    _erase(database_url, *erased)
    kept = honour_erasures(small_purchases, database_url)
    assert not kept.frame["user_id"].isin(erased).any()
    lines = int(frame["user_id"].isin(erased).sum())
    assert lines > 0
    assert kept.report.dropped[DROP_REASON] == lines
    assert kept.report.rows_kept == len(frame) - lines == len(kept.frame)
    assert kept.report.users == small_purchases.report.users - 2
    assert set(kept.items["item_id"]) == set(kept.frame["item_id"])
    # everyone else's purchases are untouched
    others = frame.loc[~frame["user_id"].isin(erased)].reset_index(drop=True)
    assert kept.frame.equals(others)


def test_a_database_without_tombstones_changes_nothing(
    small_purchases: Purchases, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _erase(url)
    assert honour_erasures(small_purchases, url) is small_purchases
    assert honour_erasures(small_purchases, None) is small_purchases  # files alone: no database


def test_an_unmigrated_database_is_a_one_line_error(
    small_purchases: Purchases, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    with pytest.raises(DataError, match="recoffer migrate") as caught:
        honour_erasures(small_purchases, url)
    assert "\n" not in str(caught.value)
