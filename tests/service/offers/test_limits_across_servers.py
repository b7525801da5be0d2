"""The failed-lookup limit holds across processes: two real servers on one database and one
Redis allow the limit in all, not the limit each (issue 11, item 4)."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.clock import utc_now
from service.db import make_engine, migrate
from service.offers.campaigns import Campaign
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository

from .test_concurrency import _treated

KEY = "frontend-key-across-0123456789"
LIMIT = 7


@pytest.fixture
def prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own, its keys deleted afterwards."""
    import redis

    name = f"recoffer-test-{secrets.token_hex(6)}"
    yield name
    client = redis.Redis.from_url(redis_server)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)


def _seed_coupon(url: str) -> tuple[str, str]:
    """Migrate the database and issue one coupon, as the service would."""
    engine = make_engine(url, timeout_seconds=30, pool_size=2)
    try:
        migrate(engine)
        base = Repository(engine)
        offers = OfferEngine(
            {"new_user_high_intent": Campaign(holdout_percent=10)}, OfferRepository(base), utc_now
        )
        user = _treated("across-")
        start = utc_now() - timedelta(hours=2)  # the servers run on the real clock
        base.upsert_user(user, signed_up_at=start)
        views = [
            NewEvent(user, "view", start + timedelta(minutes=n + 1), item_id=f"i{n}")
            for n in range(11)
        ]
        base.add_events(views)
        coupon = offers.evaluate(user, "new_user_high_intent").coupon
        assert coupon is not None
        return user, coupon.code
    finally:
        engine.dispose()


def test_two_servers_on_one_redis_allow_the_limit_in_all(
    redis_server: str, prefix: str, tmp_path: Path
) -> None:
    from benchmarks.harness import Server

    url = f"sqlite:///{tmp_path / 'recoffer.db'}"
    user, code = _seed_coupon(url)
    (tmp_path / "models").mkdir()
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(tmp_path / "models"),
        "RECOFFER_FRONTEND_KEYS": KEY,
        "RECOFFER_REDIS_URL": redis_server,
        "RECOFFER_REDIS_PREFIX": prefix,
        "RECOFFER_COUPON_FAILURES_PER_ADDRESS": str(LIMIT),
        "RECOFFER_COUPON_FAILURES_PER_CLIENT": "1000",
        "RECOFFER_RELOAD_INTERVAL_SECONDS": "0",
        "RECOFFER_OFFER_METRICS_SECONDS": "0",
        "RECOFFER_ACCESS_LOG": "false",
    }
    headers = {"X-API-Key": KEY}
    with Server(env) as first, Server(env) as second:
        servers = [first.url, second.url]

        def guess(n: int) -> int:
            server = servers[n % 2]  # every other guess to the other replica
            r = httpx.get(
                f"{server}/v1/coupons/AAAA-BBBB-CCCC-{'DEFGHJKM'[n // 8]}{'DEFGHJKM'[n % 8]}AA",
                params={"user_id": f"rotated-{n}"},
                headers=headers,
                timeout=30,
            )
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = Counter(pool.map(guess, range(4 * LIMIT)))
        # per process, the two would have allowed 2 x LIMIT between them
        assert statuses == {404: LIMIT, 429: 3 * LIMIT}
        # and the customer's own code is never refused, on either server
        for server in servers:
            r = httpx.get(f"{server}/v1/coupons/{code}", params={"user_id": user}, headers=headers)
            assert r.status_code == 200, r.text
        r = httpx.post(
            f"{second.url}/v1/coupons/{code}/redeem",
            json={"user_id": user, "order_id": "o-1", "order_amount": "10.00", "currency": "EUR"},
            headers=headers,
        )
        assert (r.status_code, r.json()["discount_amount"]) == (200, "1.0000")
