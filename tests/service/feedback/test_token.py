"""The signed id of a recommendation list: read back on any worker, refused when altered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.feedback.token import InvalidListId, ListIds, ServedList

KEY = b"k" * 32
SERVED = ServedList(
    request_id="",
    model_version="20261201T195500-abcd",
    recipe="all",
    sources=("model", "model", "session", "popular", "new_arrivals"),
    served_at=datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC),
    experiment_id="exp-1",
    arm="candidate",
)


def test_round_trip_on_another_worker() -> None:
    list_id = ListIds(lambda: KEY).issue("0123456789abcdef", "u1", SERVED)
    read = ListIds(lambda: KEY).read(list_id, "u1")  # a second process with the same key
    assert read.request_id == "0123456789abcdef"
    assert read.model_version == SERVED.model_version
    assert read.sources == SERVED.sources
    assert (read.experiment_id, read.arm, read.recipe) == ("exp-1", "candidate", "all")
    assert read.served_at == SERVED.served_at
    assert read.source_at(4) == "new_arrivals"
    assert read.source_at(5) is None


def test_refused_for_another_user_key_or_altered_payload() -> None:
    ids = ListIds(lambda: KEY)
    list_id = ids.issue("r1", "u1", SERVED)
    with pytest.raises(InvalidListId, match="this user_id"):
        ids.read(list_id, "u2")
    with pytest.raises(InvalidListId):
        ListIds(lambda: b"other" * 8).read(list_id, "u1")
    rid, payload, sig = list_id.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    with pytest.raises(InvalidListId):
        ids.read(f"{rid}.{tampered}.{sig}", "u1")
    with pytest.raises(InvalidListId, match="not a recommendation list"):
        ids.read("0123456789abcdef", "u1")


def test_without_a_key_the_plain_id_and_nothing_is_read() -> None:
    ids = ListIds(lambda: None)
    assert ids.issue("r1", "u1", SERVED) == "r1"
    with pytest.raises(InvalidListId, match="cannot be checked"):
        ids.read("a.b.c", "u1")


@given(st.text(max_size=600))
def test_any_text_is_refused_cleanly(text: str) -> None:
    ids = ListIds(lambda: KEY)
    try:
        ids.read(text, "u1")
    except InvalidListId:
        return
    raise AssertionError("an unsigned text was read as a list id")
