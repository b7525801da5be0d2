"""The webhooks through the service: the lifespan's sender delivers what the API issues, the
admin lists and replays, marketing pulls a campaign's coupons page by page, erasure removes
the user's events; bad webhook settings are refused at start."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from benchmarks.harness import ManualClock as Clock
from service.__main__ import main
from service.app import create_app
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.rules import format_code, in_holdout
from service.settings import Settings

from .conftest import rows
from .receiver import SECRET, Receiver
from .shop import CAMPAIGN, hesitating

FRONTEND, MARKETING, ADMIN = "f" * 16, "m" * 16, "a" * 16
F, M, A = ({"X-API-Key": k} for k in (FRONTEND, MARKETING, ADMIN))


def _client(tmp_path: Path, database_url: str, clock: Clock, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": tmp_path / "models",  # no model: coupons are store-wide
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "offer_metrics_seconds": 0,
        "access_log": False,
        "webhook_poll_seconds": 0.05,
    }
    return TestClient(create_app(Settings(**{**options, **overrides}), clock=clock))


def _offers(client: TestClient) -> OfferEngine:
    engine: OfferEngine = client.app.state.recoffer.offers  # type: ignore[attr-defined]
    return engine


def _treated(prefix: str, n: int) -> list[str]:
    users = (f"{prefix}{i}" for i in range(100 * n))
    return [u for u in users if not in_holdout(CAMPAIGN, u, 10.0)][:n]


def _issue_all(client: TestClient, users: list[str], clock: Clock) -> list[str]:
    codes = []
    for user in users:
        hesitating(_offers(client), user)
        decision = _offers(client).evaluate(user, CAMPAIGN)
        assert decision.coupon is not None
        codes.append(decision.coupon.code)
        clock.advance(seconds=1)  # one issue time each: the export's order is visible
    return codes


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait for the service's own background loop (real time: it is another thread)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the background sender did not get there"
        time.sleep(0.02)


@pytest.fixture
def clock() -> Clock:
    return Clock(time_now())


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    r = Receiver(clock)
    yield r
    r.stop()


def test_the_service_delivers_lists_and_replays_and_never_logs_a_code(
    tmp_path: Path,
    database_url: str,
    clock: Clock,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = iter([503])  # the very first try fails, every later one is answered 200
    receiver.answer = lambda _: next(answers, 200)
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_backoff_seconds": 0.01,
        "webhook_backoff_max_seconds": 0.01,
    }
    with _client(tmp_path, database_url, clock, **settings) as client:
        [user] = _treated("hook-", 1)
        [code] = _issue_all(client, [user], clock)
        Coupons(_offers(client).repository, clock).redeem(code, user, "o-1")
        _until(lambda: [e["attempts"] for e in rows(_offers(client))] == [1, 0])  # 503 noted
        clock.advance(seconds=1)  # the retry is due
        _until(lambda: len(set(receiver.ids())) == 2)
        assert [r.type for r in receiver.got] == [
            "coupon.issued",
            "coupon.issued",
            "coupon.redeemed",
        ]
        assert all(r.signed for r in receiver.got)
        assert receiver.got[0].data["code"] == format_code(code)

        r = client.get("/v1/webhooks/events", headers=A)
        assert r.status_code == 200, r.text
        listed = r.json()
        assert listed["enabled"] is True
        _until(
            lambda: (
                {e["state"] for e in client.get("/v1/webhooks/events", headers=A).json()["events"]}
                == {"delivered"}
            )
        )
        events = client.get("/v1/webhooks/events", headers=A).json()["events"]
        assert [e["type"] for e in events] == ["coupon.issued", "coupon.redeemed"]
        assert code not in r.text
        assert format_code(code) not in r.text
        assert events[0]["attempts"] == 2
        only = client.get("/v1/webhooks/events?type=coupon.redeemed", headers=A).json()
        assert [e["type"] for e in only["events"]] == ["coupon.redeemed"]
        issued_id = events[0]["event_id"]
        log = client.get(f"/v1/webhooks/deliveries?event_id={issued_id}", headers=A).json()
        assert [d["status_code"] for d in log["deliveries"]] == [503, 200]
        failed = client.get("/v1/webhooks/deliveries?failed=true", headers=A).json()
        assert [d["status_code"] for d in failed["deliveries"]] == [503]

        replayed = client.post(f"/v1/webhooks/events/{issued_id}/replay", headers=A)
        assert replayed.status_code == 200, replayed.text
        _until(lambda: receiver.ids().count(issued_id) == 3)  # same id: the shop deduplicates
        assert client.post("/v1/webhooks/events/nope/replay", headers=A).status_code == 404
        assert client.get("/v1/webhooks/events/nope", headers=A).status_code == 404
        bad = client.post(
            "/v1/webhooks/replay",
            json={"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
            headers=A,
        )
        assert bad.status_code == 422
        assert "until" in bad.text
        none_dead = client.post("/v1/webhooks/replay", json={"states": ["dead"]}, headers=A)
        assert none_dead.json() == {"replayed": 0}
        assert client.get("/v1/webhooks/events", headers=M).status_code == 403

        metrics = client.get("/metrics").text
        assert 'recoffer_webhook_deliveries_total{outcome="delivered"}' in metrics
        assert 'recoffer_webhook_deliveries_total{outcome="failed"} 1.0' in metrics
        assert 'recoffer_webhook_backlog{state="dead"} 0.0' in metrics
    for record in caplog.records:
        assert code not in record.getMessage()
        assert code not in str(record.__dict__)


def test_without_a_url_no_event_is_written_and_erasure_removes_the_users_events(
    tmp_path: Path, database_url: str, clock: Clock, receiver: Receiver
) -> None:
    with _client(tmp_path, database_url, clock) as client:
        [user] = _treated("quiet-", 1)
        _issue_all(client, [user], clock)
        listed = client.get("/v1/webhooks/events", headers=A).json()
        assert listed == {"enabled": False, "events": [], "next_after": None}
    # the same database with webhooks on: the user's events go with the user
    on = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_poll_seconds": 60,
        "webhook_expiring_lead_hours": 1,  # no coupon.expiring in this test
    }
    with _client(tmp_path, database_url, clock, **on) as client:
        [user] = _treated("erased-", 1)
        _issue_all(client, [user], clock)
        export = client.get(f"/v1/users/{user}/export", headers=A).json()
        [held] = export["tables"]["webhook_events"]
        assert held["payload"]["user_id"] == user
        r = client.delete(f"/v1/users/{user}", headers=A)
        assert r.status_code == 200, r.text
        assert r.json()["removed"]["webhook_events"] == 1
        assert client.get("/v1/webhooks/events", headers=A).json()["events"] == []


def test_marketing_pulls_a_campaigns_coupons_page_by_page(
    tmp_path: Path, database_url: str, clock: Clock
) -> None:
    with _client(tmp_path, database_url, clock) as client:
        users = _treated("pull-", 5)
        codes = _issue_all(client, users, clock)
        Coupons(_offers(client).repository, clock).redeem(codes[1], users[1], "o-1")
        url = f"/v1/campaigns/{CAMPAIGN}/coupons"
        pulled: list[dict[str, Any]] = []
        cursor = None
        while True:
            r = client.get(
                url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=M
            )
            assert r.status_code == 200, r.text
            assert r.headers["cache-control"] == "no-store"  # it carries codes
            page = r.json()
            pulled += page["coupons"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [c["code"] for c in pulled] == [format_code(c) for c in codes]  # issue order
        assert [c["user_id"] for c in pulled] == users
        redeemed = client.get(url, params={"state": "redeemed"}, headers=M).json()["coupons"]
        assert [(c["code"], c["order_id"]) for c in redeemed] == [(format_code(codes[1]), "o-1")]
        active = client.get(url, params={"state": "active"}, headers=M).json()["coupons"]
        assert len(active) == 4
        since = pulled[3]["issued_at"]
        recent = client.get(url, params={"issued_since": since}, headers=M).json()["coupons"]
        assert [c["user_id"] for c in recent] == users[3:]
        clock.advance(days=2)  # every unredeemed coupon has expired
        expired = client.get(url, params={"state": "expired"}, headers=M).json()["coupons"]
        assert len(expired) == 4
        assert client.get("/v1/campaigns/nope/coupons", headers=M).status_code == 404
        bad = client.get(url, params={"cursor": "not-a-cursor"}, headers=M)
        assert bad.status_code == 422
        assert "cursor" in bad.text
        assert client.get(url, headers=F).status_code == 403


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"webhook_url": "https://shop.example/hooks"}, "required when RECOFFER_WEBHOOK_URL"),
        ({"webhook_url": "ftp://shop.example", "webhook_secret": SECRET}, "http:// or https://"),
        ({"webhook_url": "https://shop.example", "webhook_secret": "short"}, "16 characters"),
        (
            {"webhook_backoff_seconds": 30, "webhook_backoff_max_seconds": 5},
            "at least RECOFFER_WEBHOOK_BACKOFF_SECONDS",
        ),
        ({"webhook_max_attempts": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_webhook_settings_are_refused(values: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(admin_keys=[ADMIN], **values)


def test_the_service_refuses_to_start_with_a_url_and_no_secret_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECOFFER_ADMIN_KEYS", ADMIN)
    monkeypatch.setenv("RECOFFER_WEBHOOK_URL", "https://shop.example/hooks")
    monkeypatch.delenv("RECOFFER_WEBHOOK_SECRET", raising=False)
    assert main(["--port", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("recoffer: error: bad setting RECOFFER_WEBHOOK_SECRET:")
    assert "required when RECOFFER_WEBHOOK_URL is set" in lines[0]


def test_expiring_is_announced_by_the_service_scan(
    tmp_path: Path, database_url: str, clock: Clock, receiver: Receiver
) -> None:
    on = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_expiring_lead_hours": 1,
        "webhook_expiring_scan_seconds": 0.05,
    }
    with _client(tmp_path, database_url, clock, **on) as client:
        [user] = _treated("soon-", 1)
        _issue_all(client, [user], clock)
        clock.advance(seconds=timedelta(minutes=1).total_seconds())
        time.sleep(0.3)  # scans run meanwhile: the coupon (24 h) is far from its last hour
        assert receiver.ids("coupon.expiring") == []
        clock.advance(seconds=timedelta(hours=23, minutes=30).total_seconds())
        _until(lambda: receiver.ids("coupon.expiring") != [])
        _until(lambda: len(receiver.got) >= 2)
        assert [r.type for r in receiver.got] == ["coupon.issued", "coupon.expiring"]
        assert receiver.got[1].data["user_id"] == user
