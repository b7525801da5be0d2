"""The sender against a real receiver: signed, at least once, retried with backoff, in order
per coupon, dead after the last try and replayed; two senders never hold one event. On SQLite
and on PostgreSQL, with the clock moved by the test."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import ManualClock as Clock
from benchmarks.harness import all_at_once
from service.delivery.events import body, sign, verify
from service.delivery.repository import DeliveryRepository
from service.delivery.sender import backoff
from service.metrics import Metrics
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine

from .conftest import make_sender, rows, step
from .receiver import SECRET, Receiver
from .shop import NOW, issue


def test_the_signature_covers_time_and_body_and_refuses_anything_else() -> None:
    payload = body("e1", "coupon.issued", NOW, {"code": "ABCD-EFGH-JKMN-PQRS"})
    header = sign(SECRET, 1_700_000_000, payload)
    assert verify(SECRET, header, payload, now=1_700_000_100)
    assert not verify(SECRET, header, payload + b" ", now=1_700_000_100)  # body changed
    assert not verify("another-secret-of-16", header, payload, now=1_700_000_100)
    assert not verify(SECRET, header, payload, now=1_700_000_000 + 301)  # too old: a replay
    forged = header.replace("t=1700000000", "t=1700000200")  # a fresh time on an old mac
    assert not verify(SECRET, forged, payload, now=1_700_000_200)
    assert not verify(SECRET, "garbage", payload, now=1_700_000_000)


def test_backoff_doubles_up_to_the_cap_and_jitter_keeps_at_least_half() -> None:
    top = [backoff(n, 2.0, 60.0, lambda: 1.0) for n in range(1, 9)]
    assert top == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert [backoff(n, 2.0, 60.0, lambda: 0.0) for n in (1, 6)] == [1.0, 30.0]
    assert backoff(10_000, 2.0, 60.0, lambda: 0.5) == 45.0  # no overflow on a long outage


def test_an_event_is_delivered_signed_with_its_id_and_logged(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    issue(offers, "u-signed")
    sender = make_sender(offers, receiver.url, clock)
    assert step(sender) == 1
    [got] = receiver.got
    [event] = rows(offers)
    assert got.signed
    assert got.header_id == got.event_id == event["event_id"]
    assert got.type == "coupon.issued"
    assert got.data == event["payload"]
    assert (event["state"], event["attempts"], event["last_status"]) == ("delivered", 1, 200)
    [line] = DeliveryRepository(offers.repository.base).deliveries()
    assert (line.event_id, line.attempt, line.status_code, line.error) == (
        event["event_id"],
        1,
        200,
        None,
    )
    assert line.duration_ms > 0
    assert step(sender) == 0  # delivered: never sent again


def test_failures_are_retried_after_a_growing_wait_until_delivered(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    answers = iter([503, 500, 429, 200])
    receiver.answer = lambda _: next(answers)
    issue(offers, "u-retried")
    sender = make_sender(offers, receiver.url, clock, backoff_seconds=2.0)
    waits = []
    for expected in (2.0, 4.0, 8.0):
        assert step(sender) == 1
        [event] = rows(offers)
        wait = (event["next_attempt_at"] - clock()).total_seconds()
        waits.append(wait)
        assert event["state"] == "pending"
        clock.advance(seconds=expected - 0.5)
        assert step(sender) == 0  # not due yet
        clock.advance(seconds=0.5)
    assert waits == [2.0, 4.0, 8.0]
    assert step(sender) == 1
    assert rows(offers)[0]["state"] == "delivered"
    log = DeliveryRepository(offers.repository.base).deliveries()
    assert [(d.attempt, d.status_code) for d in log] == [(1, 503), (2, 500), (3, 429), (4, 200)]
    assert len(set(receiver.ids())) == 1
    assert len(receiver.got) == 4


def test_a_receiver_that_is_down_gets_everything_once_it_is_back(
    offers: OfferEngine, clock: Clock
) -> None:
    for n in range(5):
        issue(offers, f"u-down-{n}")
    down = Receiver(clock)
    url = down.url
    down.stop()  # nothing listens there now: connection refused
    sender = make_sender(offers, url, clock, backoff_seconds=1.0, backoff_max_seconds=4.0)
    for _ in range(4):
        assert step(sender) == 5
        clock.advance(seconds=4)
    log = DeliveryRepository(offers.repository.base).deliveries(failed=True)
    assert len(log) == 20
    assert all(d.status_code is None and d.error for d in log)
    back = Receiver(clock)
    try:
        sender = make_sender(offers, back.url, clock)
        assert step(sender) == 5
        assert sorted(back.ids()) == sorted(e["event_id"] for e in rows(offers))
        assert {e["state"] for e in rows(offers)} == {"delivered"}
    finally:
        back.stop()


def test_a_coupons_events_are_sent_in_order_even_when_the_first_fails(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    failed_once: set[str] = set()

    def first_try_of_issued_fails(doc: dict[str, Any]) -> int:
        if doc["type"] == "coupon.issued" and doc["id"] not in failed_once:
            failed_once.add(doc["id"])
            return 503
        return 200

    receiver.answer = first_try_of_issued_fails
    shop = Coupons(offers.repository, offers.clock)
    codes = {f"u-order-{n}": issue(offers, f"u-order-{n}") for n in range(6)}
    for user, code in codes.items():
        shop.redeem(code, user, f"o-{user}", Decimal("20"), "EUR")
    sender = make_sender(offers, receiver.url, clock, backoff_seconds=1.0)
    for _ in range(6):
        step(sender)
        clock.advance(seconds=2)
    assert {e["state"] for e in rows(offers)} == {"delivered"}
    delivered = [r for r in receiver.got if r.type != "coupon.issued" or r.event_id in failed_once]
    for user in codes:
        mine = [r.type for r in delivered if r.data["user_id"] == user]
        # the failed issued, the issued again, only then the redemption
        assert mine == ["coupon.issued", "coupon.issued", "coupon.redeemed"], mine


def test_an_event_tried_too_often_is_dead_holds_back_its_coupon_and_can_be_replayed(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    receiver.answer = lambda _: 500
    code = issue(offers, "u-dead")
    Coupons(offers.repository, offers.clock).redeem(code, "u-dead", "o-1")
    sender = make_sender(offers, receiver.url, clock, max_attempts=2, backoff_seconds=1.0)
    step(sender)
    clock.advance(seconds=1)
    step(sender)
    clock.advance(seconds=60)
    assert step(sender) == 0  # the issued event is dead; the redemption waits behind it
    issued, redeemed = rows(offers)
    assert (issued["state"], issued["attempts"], redeemed["state"]) == ("dead", 2, "pending")
    assert receiver.ids("coupon.redeemed") == []
    receiver.answer = lambda _: 200
    repo = DeliveryRepository(offers.repository.base)
    assert repo.replay(clock(), states=("dead",)) == 1
    step(sender)
    step(sender)
    assert [e["state"] for e in rows(offers)] == ["delivered", "delivered"]
    assert receiver.ids()[-2:] == [issued["event_id"], redeemed["event_id"]]


def test_two_senders_never_claim_the_same_event(offers: OfferEngine, clock: Clock) -> None:
    for n in range(30):
        issue(offers, f"u-claim-{n}")
    repo = DeliveryRepository(offers.repository.base)
    lease = timedelta(seconds=30)
    claims = all_at_once(4, lambda i: repo.claim(f"sender-{i}", clock(), lease, 10))
    held = [e.event_id for c in claims if isinstance(c, list) for e in c]
    assert not [c for c in claims if isinstance(c, BaseException)], claims
    assert len(held) == len(set(held)) == 30
    clock.advance(seconds=31)  # the claims expired (their senders died): free again
    assert len(repo.claim("sender-late", clock(), lease, 100)) == 30


def test_the_readmes_verification_snippet_accepts_our_signature_and_nothing_else() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("**Verify the signature.**", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # the shop's code, as the README gives it
    payload = body("e1", "coupon.redeemed", NOW, {"order_id": "o-1"})
    header = sign(SECRET, int(time.time()), payload)
    assert scope["verified"](SECRET, header, payload)
    assert not scope["verified"](SECRET, header, payload.replace(b"o-1", b"o-2"))
    assert not scope["verified"](SECRET, sign(SECRET, int(time.time()) - 600, payload), payload)


def test_done_events_and_their_log_go_after_the_retention_pending_ones_stay(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    issue(offers, "u-old")  # delivered at once
    sender = make_sender(offers, receiver.url, clock, retention=timedelta(days=30))
    step(sender)
    receiver.answer = lambda _: 500
    issue(offers, "u-owed")  # failing: stays pending however old it gets
    step(sender)
    clock.advance(days=29)
    assert asyncio.run(sender.prune_if_due()) == 0  # nothing is 30 days old yet
    clock.advance(days=2)
    assert asyncio.run(sender.prune_if_due()) == 3  # the delivered event and both attempts
    assert asyncio.run(sender.prune_if_due()) == 0  # not again within the hour
    [left] = rows(offers)
    assert (left["user_id"], left["state"]) == ("u-owed", "pending")
    assert DeliveryRepository(offers.repository.base).deliveries() == []
    receiver.answer = lambda _: 200
    clock.advance(hours=1)
    assert step(sender) == 1  # still delivered once the receiver answers


def test_without_a_retention_nothing_is_pruned(
    offers: OfferEngine, receiver: Receiver, clock: Clock
) -> None:
    issue(offers, "u-kept")
    sender = make_sender(offers, receiver.url, clock, retention=None)
    step(sender)
    clock.advance(days=3650)
    assert asyncio.run(sender.prune_if_due()) == 0
    assert len(rows(offers)) == 1


def test_a_retention_shorter_than_the_expiring_lead_is_refused() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="longer than RECOFFER_WEBHOOK_EXPIRING_LEAD"):
        Settings(auth_disabled=True, webhook_retention_days=0.1)  # 2.4 h against 6 h
    assert Settings(auth_disabled=True, webhook_retention_days=0).webhook_retention_days == 0


def test_the_backlog_gauges_say_what_waits_and_since_when(
    offers: OfferEngine, clock: Clock, receiver: Receiver
) -> None:
    """Issue 13, item 4: the oldest pending event's age, for the alert on an old backlog."""
    metrics = Metrics()
    sender = make_sender(offers, receiver.url, clock)
    sender.metrics = metrics

    def gauges() -> tuple[float, float | None]:
        asyncio.run(sender.refresh_backlog())
        pending = metrics.registry.get_sample_value(
            "recoffer_webhook_backlog", {"state": "pending"}
        )
        age = metrics.registry.get_sample_value("recoffer_webhook_oldest_pending_age_seconds")
        assert age is not None
        return age, pending

    assert gauges() == (0.0, 0.0)
    issue(offers, "u-old")
    clock.advance(minutes=5)
    issue(offers, "u-new")
    clock.advance(minutes=10)
    assert gauges() == (15 * 60.0, 2.0)  # since the first coupon's event was written
    assert step(sender) == 2
    assert gauges() == (0.0, 0.0)
