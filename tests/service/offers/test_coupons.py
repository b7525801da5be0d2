"""A coupon pays for one order; every use is in the trail; failed lookups are limited by what
a guesser cannot rotate (issue 11, items 3 and 4). On SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError

from benchmarks.harness import ManualClock as Clock
from service.db import make_engine, migrate
from service.errors import (
    CouponNotRedeemed,
    CouponOrderMismatch,
    CouponReleaseLimit,
    InvalidInput,
    RedemptionMismatch,
)
from service.offers.campaigns import Campaign
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.limiter import Caller
from service.offers.reports import Reports
from service.tables import coupon_ledger

from .test_api import FRONTEND, M, issue, make_client
from .test_concurrency import NOW, _engine_for, _hesitating, _treated

CAMPAIGN = "new_user_high_intent"
SHOP = Caller("frontend:0123456789ab", "192.0.2.10")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def offers(database_url: str) -> Iterator[OfferEngine]:

    engine = _engine_for(database_url, Campaign(holdout_percent=10))
    migrate(engine.repository.engine)
    yield engine
    engine.repository.engine.dispose()


def _coupon(offers: OfferEngine, prefix: str) -> tuple[str, str]:
    user = _treated(prefix)
    _hesitating(offers, user)
    coupon = offers.evaluate(user, CAMPAIGN).coupon
    assert coupon is not None
    return user, coupon.code


# --- item 3: one order at a time, a bounded number of releases, the trail -----------------


def test_redeem_release_redeem_keeps_every_use_and_the_release_limit_holds(
    offers: OfferEngine,
) -> None:
    user, code = _coupon(offers, "ledger-")
    coupons = Coupons(offers.repository, offers.clock)  # coupon_max_releases: 1 by default
    first, _ = coupons.redeem(code, user, "o-1", Decimal("80.05"), "EUR", caller=SHOP)
    assert first.coupon.discount_amount == Decimal("8.0050")  # exact, not 8.004999...
    coupons.release(code, user, "o-1", caller=SHOP)
    coupons.redeem(code, user, "o-2", Decimal("50"), "EUR", caller=SHOP)
    with pytest.raises(CouponReleaseLimit):
        coupons.release(code, user, "o-2", caller=SHOP)
    stored = offers.repository.coupons.coupon(code)
    assert stored is not None
    assert (stored.order_id, stored.releases) == ("o-2", 1)  # the last order still holds it
    trail = offers.repository.coupons.trail(code)
    assert [(e.action, e.redemption, e.order_id, e.order_amount) for e in trail] == [
        ("redeem", 1, "o-1", Decimal("80.05")),
        ("release", 1, "o-1", Decimal("80.05")),  # a release repeats what it undoes
        ("redeem", 2, "o-2", Decimal("50")),
    ]
    assert {(e.user_id, e.actor, e.currency) for e in trail} == {(user, SHOP.client, "EUR")}
    with pytest.raises(InvalidInput):  # money never travels without its currency
        coupons.redeem(code, user, "o-3", Decimal("10"), None, caller=SHOP)
    # a retry of the standing order: without an amount, or with the same one, answers like the
    # first; one stating another amount or currency is a conflict, not a silent replay
    assert coupons.redeem(code, user, "o-2", caller=SHOP)[1] is True
    assert coupons.redeem(code, user, "o-2", Decimal("50.00"), "EUR", caller=SHOP)[1] is True
    for amount, currency in ((Decimal("100"), "EUR"), (Decimal("50"), "GBP")):
        with pytest.raises(RedemptionMismatch):
            coupons.redeem(code, user, "o-2", amount, currency, caller=SHOP)
    # the first order is not erased: the report counts both uses and the one standing
    stats = Reports(offers.campaigns, offers.repository, offers.clock).stats(CAMPAIGN)
    assert stats.coupons["redeemed"] == 1
    assert (stats.coupons["redemptions"], stats.coupons["releases"]) == (2, 1)
    assert stats.discount_cost == {"EUR": Decimal("5.0000")}


def test_a_release_names_the_order_that_redeemed_the_coupon(offers: OfferEngine) -> None:
    user, code = _coupon(offers, "mismatch-")
    coupons = Coupons(offers.repository, offers.clock, max_releases=3)
    with pytest.raises(CouponNotRedeemed):
        coupons.release(code, user, "o-1")  # nothing redeemed yet
    coupons.redeem(code, user, "o-1")
    with pytest.raises(CouponOrderMismatch):
        coupons.release(code, user, "o-other")
    coupons.release(code, user, "o-1")
    with pytest.raises(CouponNotRedeemed):
        coupons.release(code, user, "o-1")  # a second release of the same order
    actions = [e.action for e in offers.repository.coupons.trail(code)]
    assert actions == ["redeem", "release"]


def test_no_release_at_all_when_the_setting_is_zero(offers: OfferEngine) -> None:
    user, code = _coupon(offers, "norelease-")
    coupons = Coupons(offers.repository, offers.clock, max_releases=0)
    coupons.redeem(code, user, "o-1")
    with pytest.raises(CouponReleaseLimit):
        coupons.release(code, user, "o-1")


def test_the_trail_is_append_only_except_for_erasing_the_user(offers: OfferEngine) -> None:
    user, code = _coupon(offers, "appendonly-")
    Coupons(offers.repository, offers.clock).redeem(code, user, "o-1")
    engine = offers.repository.engine
    for statement in (
        update(coupon_ledger).values(order_id="rewritten"),
        update(coupon_ledger).values(user_id="someone-else"),
        delete(coupon_ledger),
    ):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(statement)
    with engine.begin() as conn:  # what erasure (DELETE /v1/users/{id}) does to the trail
        conn.execute(
            update(coupon_ledger).where(coupon_ledger.c.user_id == user).values(user_id=None)
        )
    (entry,) = offers.repository.coupons.trail(code)
    assert (entry.user_id, entry.order_id) == (None, "o-1")
    stats = Reports(offers.campaigns, offers.repository, offers.clock).stats(CAMPAIGN)
    assert (stats.coupons["redeemed"], stats.unpriced_orders) == (1, 1)


def test_migration_0003_moves_float_money_to_exact_units_and_into_the_trail(
    database_url: str,
) -> None:
    engine = make_engine(database_url, timeout_seconds=10, pool_size=2)
    try:
        migrate(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO coupons (code, campaign_id, user_id, attribution_id, "
                    "discount_percent, issued_at, expires_at, redeemed_at, order_id, "
                    "order_amount, discount_amount) VALUES ('C1', 'c', 'u1', 'a1', 10, "
                    ":t, :t, :t, 'o-1', 19.99, 1.999), ('C2', 'c', 'u2', 'a2', 10, :t, :t, "
                    "NULL, NULL, NULL, NULL)"
                ),
                {"t": NOW.replace(tzinfo=None)},
            )
        migrate(engine)
        with engine.connect() as conn:
            money = conn.execute(
                text(
                    "SELECT code, order_amount, discount_amount, releases "
                    "FROM coupons ORDER BY code"
                )
            ).all()
            trail = conn.execute(select(coupon_ledger)).all()
        assert [tuple(r) for r in money] == [("C1", 199900, 19990, 0), ("C2", None, None, 0)]
        (row,) = trail
        assert (row.code, row.action, row.redemption, row.order_id) == ("C1", "redeem", 1, "o-1")
        assert (row.order_amount, row.user_id, row.actor) == (
            Decimal("19.99"),
            "u1",
            "migration-0003",
        )
    finally:
        engine.dispose()


def test_release_over_http_answers_409_and_records_the_key_fingerprint(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    with make_client(small_model_root, database_url, clock) as c:
        user, code = issue(c, "httprelease-")
        headers = {"X-API-Key": FRONTEND}
        body = {"user_id": user, "order_id": "o-1", "order_amount": "20", "currency": "GBP"}
        assert c.post(f"/v1/coupons/{code}/redeem", json=body, headers=headers).status_code == 200
        release = {"user_id": user, "order_id": "o-1"}
        wrong = c.post(
            f"/v1/coupons/{code}/release", json={**release, "order_id": "o-9"}, headers=headers
        )
        assert (wrong.status_code, wrong.json()["error"]) == (409, "coupon_order_mismatch")
        r = c.post(f"/v1/coupons/{code}/release", json=release, headers=headers)
        assert (r.status_code, r.json()["status"]) == (200, "active")
        again = c.post(f"/v1/coupons/{code}/release", json=release, headers=headers)
        assert (again.status_code, again.json()["error"]) == (409, "coupon_not_redeemed")
        other = {"user_id": user, "order_id": "o-2"}
        assert c.post(f"/v1/coupons/{code}/redeem", json=other, headers=headers).status_code == 200
        limit = c.post(
            f"/v1/coupons/{code}/release", json={**release, "order_id": "o-2"}, headers=headers
        )
        assert (limit.status_code, limit.json()["error"]) == (409, "coupon_release_limit")
        missing = c.post(
            f"/v1/coupons/{code}/redeem", json={**other, "order_amount": "5"}, headers=headers
        )
        assert (missing.status_code, missing.json()["detail"][0]["field"]) == (422, "currency")
        fingerprint = "frontend:" + hashlib.sha256(FRONTEND.encode()).hexdigest()[:12]
        audit = c.get(f"/v1/coupons/{code}/trail", headers=M)
        assert audit.status_code == 200, audit.text
        entries = audit.json()["entries"]
        assert [(e["action"], e["redemption"], e["order_id"]) for e in entries] == [
            ("redeem", 1, "o-1"),
            ("release", 1, "o-1"),
            ("redeem", 2, "o-2"),
        ]
        assert [(e["order_amount"], e["currency"]) for e in entries] == [
            ("20.0000", "GBP"),
            ("20.0000", "GBP"),
            (None, None),
        ]
        assert {e["actor"] for e in entries} == {fingerprint}
        assert FRONTEND not in audit.text
        assert audit.headers["cache-control"] == "no-store"
        assert c.get(f"/v1/coupons/{code}/trail", headers=headers).status_code == 403
        assert c.get("/v1/coupons/AAAA-BBBB-CCCC-DDDD/trail", headers=M).status_code == 404
        stats = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        assert stats["coupons"]["redemptions"] == 2
        assert stats["coupons"]["releases"] == 1
        assert stats["discount_cost"] == {}  # the standing redemption was sent without amount


# --- item 4: limits by what a guesser cannot rotate; never a valid code refused -------------


def _limited(model_dir: Path, database_url: str, clock: Clock, **settings: Any) -> TestClient:
    options = {"coupon_failures_per_address": 3, "coupon_failures_per_client": 100}
    return make_client(model_dir, database_url, clock, **{**options, **settings})


def _guess(c: TestClient, n: int, headers: dict[str, str] | None = None) -> int:
    """One wrong code (the n-th), for a user id never used before; the answer's status."""
    guess = f"AAAA-BBBB-CCCC-{'DEFGHJKM'[n // 8]}{'DEFGHJKM'[n % 8]}AA"
    r = c.post(
        f"/v1/coupons/{guess}/redeem",
        json={"user_id": f"rotated-{n}", "order_id": "o"},
        headers={"X-API-Key": FRONTEND, **(headers or {})},
    )
    status: int = r.status_code
    return status


def test_rotating_user_id_does_not_reset_the_count_and_a_valid_code_still_works(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    with _limited(small_model_root, database_url, clock) as c:
        user, code = issue(c, "limited-")
        assert [_guess(c, n) for n in range(5)] == [404, 404, 404, 429, 429]
        blocked = c.get("/v1/coupons/AAAA-BBBB-CCCC-DDDD", headers={"X-API-Key": FRONTEND})
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        # the limit is on failures: the customer's own code still works
        headers = {"X-API-Key": FRONTEND}
        assert c.get(f"/v1/coupons/{code}", headers=headers).status_code == 200
        r = c.post(
            f"/v1/coupons/{code}/redeem", json={"user_id": user, "order_id": "o"}, headers=headers
        )
        assert r.status_code == 200, r.text


def test_not_yours_and_unknown_answer_identically_before_and_after_the_limit(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    with _limited(small_model_root, database_url, clock, coupon_failures_per_address=4) as c:
        _, code = issue(c, "oracle-")
        headers = {"X-API-Key": FRONTEND}
        answers = []
        for _ in range(3):  # pairs of failures: four within the limit, two past it
            mine = c.get(f"/v1/coupons/{code}", params={"user_id": "intruder"}, headers=headers)
            unknown = c.get(
                "/v1/coupons/AAAA-BBBB-CCCC-DDDD", params={"user_id": "intruder"}, headers=headers
            )
            assert (mine.status_code, mine.content) == (unknown.status_code, unknown.content)
            assert code not in mine.text
            answers.append(mine.status_code)
        assert answers == [404, 404, 429]


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    # an untrusted peer (loopback included) rotating X-Forwarded-For is still one address
    with _limited(small_model_root, database_url, clock) as c:
        spoofed = [_guess(c, n, headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(4)]
        assert spoofed == [404, 404, 404, 429]
    app = make_client(
        small_model_root,
        database_url,
        clock,
        coupon_failures_per_address=3,
        trusted_proxies="10.0.0.0/8",
    ).app
    with TestClient(app, client=("10.1.2.3", 40000)) as proxied:
        # behind the trusted proxy each customer's own address counts...
        forwarded = [
            _guess(proxied, n, headers={"X-Forwarded-For": f"203.0.113.7, 198.51.100.{n}"})
            for n in range(6)
        ]
        assert forwarded == [404] * 6
        # ...and one customer's guesses are limited, whatever they write further left
        same = [
            _guess(proxied, 10 + n, headers={"X-Forwarded-For": f"1.2.3.{n}, 198.51.100.99"})
            for n in range(4)
        ]
        assert same == [404, 404, 404, 429]
    with TestClient(app, client=("192.0.2.50", 40000)) as direct:
        # the same header from a peer outside the trusted list is ignored
        assert [
            _guess(direct, 20 + n, headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(4)
        ] == [404, 404, 404, 429]


def test_the_api_key_limit_spans_every_address(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    app = make_client(
        small_model_root,
        database_url,
        clock,
        coupon_failures_per_address=100,
        coupon_failures_per_client=4,
        trusted_proxies="10.0.0.0/8",
    ).app
    with TestClient(app, client=("10.1.2.3", 40000)) as proxied:
        statuses = [
            _guess(proxied, n, headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(6)
        ]
    assert statuses == [404] * 4 + [429] * 2


def test_an_unreachable_redis_refuses_failed_lookups_only_never_500(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    # fail closed: a failure that cannot be counted is refused; valid codes do not need Redis
    with _limited(small_model_root, database_url, clock, redis_url="redis://127.0.0.1:1/0") as c:
        user, code = issue(c, "noredis-")
        headers = {"X-API-Key": FRONTEND}
        r = c.get("/v1/coupons/AAAA-BBBB-CCCC-DDDD", headers=headers)
        assert (r.status_code, r.json()["error"]) == (503, "limiter_unavailable")
        assert int(r.headers["retry-after"]) > 0
        assert c.get(f"/v1/coupons/{code}", headers=headers).status_code == 200
        body = {"user_id": user, "order_id": "o"}
        assert c.post(f"/v1/coupons/{code}/redeem", json=body, headers=headers).status_code == 200


def test_settings_name_a_bad_proxy_or_redis_url_and_trust_no_proxy_by_default() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    assert Settings(auth_disabled=True).trusted_proxies == []
    assert Settings(auth_disabled=True, redis_url="").redis_url is None
    proxies = Settings(auth_disabled=True, trusted_proxies="10.0.0.0/8, ::1").trusted_proxies
    assert [str(p) for p in proxies] == ["10.0.0.0/8", "::1/128"]
    for field, value in (("trusted_proxies", "10.0.0.0/8, proxy.local"), ("redis_url", "x://h")):
        options: dict[str, Any] = {"auth_disabled": True, field: value}
        with pytest.raises(ValidationError) as caught:
            Settings(**options)
        assert caught.value.errors()[0]["loc"] == (field,)


def test_the_client_address_reads_x_forwarded_for_from_the_right_through_trusted_proxies() -> None:
    from ipaddress import ip_network

    from service.middleware import client_address

    def scope(peer: str, *forwarded: str) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
        return {"type": "http", "client": (peer, 1234), "headers": headers}

    proxies = [ip_network("10.0.0.0/8"), ip_network("::1/128")]
    assert client_address(scope("127.0.0.1", "198.51.100.1"), []) == "127.0.0.1"
    assert client_address(scope("127.0.0.1", "198.51.100.1"), proxies) == "127.0.0.1"
    assert client_address(scope("10.0.0.2", "6.6.6.6, 198.51.100.1"), proxies) == "198.51.100.1"
    # two trusted hops, the header split over two lines, the spoofed part left of them
    chain = scope("10.0.0.2", "6.6.6.6, 198.51.100.1", "10.9.9.9")
    assert client_address(chain, proxies) == "198.51.100.1"
    assert client_address(scope("::1", "2001:db8::5"), proxies) == "2001:db8::5"
    # no header, or only trusted hops: the farthest proxy; garbage: the last address vouched for
    assert client_address(scope("10.0.0.2"), proxies) == "10.0.0.2"
    assert client_address(scope("10.0.0.2", "10.1.1.1"), proxies) == "10.1.1.1"
    assert client_address(scope("10.0.0.2", "not-an-address, 10.1.1.1"), proxies) == "10.1.1.1"
