"""The offer flow over HTTP with an injected clock, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from benchmarks.harness import ManualClock as Clock
from service.app import create_app
from service.offers.rules import in_holdout
from service.settings import Settings
from service.state import AppState

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}
T0 = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)  # 20:00 UTC: six hours later is another day
CAMPAIGN = "new_user_high_intent"


def treated_users(
    prefix: str, n: int, campaign: str = CAMPAIGN, percent: float = 10.0
) -> list[str]:
    """User ids the holdout draw sends to the coupon side."""
    out = [
        f"{prefix}{i}" for i in range(10 * n) if not in_holdout(campaign, f"{prefix}{i}", percent)
    ]
    return out[:n]


def holdout_users(
    prefix: str, n: int, campaign: str = CAMPAIGN, percent: float = 10.0
) -> list[str]:
    out = [f"{prefix}{i}" for i in range(100 * n) if in_holdout(campaign, f"{prefix}{i}", percent)]
    return out[:n]


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def make_client(model_dir: Path, database_url: str, clock: Clock, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "offer_metrics_seconds": 0,
        "access_log": False,
    }
    return TestClient(create_app(Settings(**{**options, **overrides}), clock=clock))


@pytest.fixture
def client(small_model_root: Path, database_url: str, clock: Clock) -> Iterator[TestClient]:
    with make_client(small_model_root, database_url, clock) as c:
        yield c


def campaigns_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaigns.toml"
    path.write_text(text)
    return path


def sign_up(
    client: TestClient,
    user_id: str,
    *,
    ago: timedelta,
    views: int,
    items: list[str] | None = None,
    purchase: bool = False,
) -> None:
    """A user who signed up ``ago`` before now and viewed ``views`` products since."""
    now = client.app.state.recoffer.clock()  # type: ignore[attr-defined]
    start = now - ago
    r = client.put(f"/v1/users/{user_id}", json={"signed_up_at": start.isoformat()}, headers=F)
    assert r.status_code == 200, r.text
    items = items or [f"i{n:05d}" for n in range(1, views + 1)]
    events = [
        {
            "user_id": user_id,
            "type": "view",
            "item_id": items[n % len(items)],
            "timestamp": (start + timedelta(minutes=5 * (n + 1))).isoformat(),
        }
        for n in range(views)
    ]
    if purchase:
        events.append(
            {
                "user_id": user_id,
                "type": "purchase",
                "item_id": items[0],
                "order_id": f"o-{user_id}",
                "timestamp": (start + timedelta(minutes=1)).isoformat(),
            }
        )
    if events:
        r = client.post("/v1/events", json={"events": events}, headers=F)
        assert r.status_code == 200, r.text


def evaluate(client: TestClient, user_id: str, campaign: str = CAMPAIGN) -> dict[str, Any]:
    r = client.post(
        "/v1/offers/evaluate", json={"user_id": user_id, "campaign_id": campaign}, headers=F
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- the seed rule ---------------------------------------------------------------------------


def test_eleven_views_within_a_day_get_a_coupon(client: TestClient, clock: Clock) -> None:
    user = treated_users("eleven-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=2), views=11)
    body = evaluate(client, user)
    assert body["decision"] == "issued"
    assert body["views"] == 11
    coupon = body["coupon"]
    assert coupon["discount_percent"] == 10.0
    assert coupon["status"] == "active"
    assert coupon["item_ids"] is None  # store-wide by default
    assert datetime.fromisoformat(coupon["expires_at"]) == clock.now + timedelta(hours=24)
    assert coupon["seconds_left"] == 24 * 3600
    assert coupon["attribution_id"] == body["attribution_id"]
    code = coupon["code"]
    assert len(code) == 19
    assert code.count("-") == 3
    assert not set(code) & set("01ILO")


def test_ten_views_are_not_enough(client: TestClient) -> None:
    user = treated_users("ten-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=2), views=10)
    body = evaluate(client, user)
    assert body["decision"] == "not_eligible"
    assert body["reasons"] == ["too_few_views"]
    assert (body["views"], body["min_views"]) == (10, 11)
    assert body["coupon"] is None


def test_eleven_views_but_25_hours_after_sign_up_is_not_new(client: TestClient) -> None:
    user = treated_users("late-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=25), views=11)
    body = evaluate(client, user)
    assert body["decision"] == "not_eligible"
    assert body["reasons"] == ["not_new"]


def test_a_user_who_already_bought_is_not_eligible(client: TestClient) -> None:
    user = treated_users("buyer-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=3), views=12, purchase=True)
    body = evaluate(client, user)
    assert body["decision"] == "not_eligible"
    assert body["reasons"] == ["already_purchased"]


def test_views_outside_the_window_do_not_count(client: TestClient, clock: Clock) -> None:
    user = treated_users("slow-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=20), views=8)
    body = evaluate(client, user)
    assert body["decision"] == "not_eligible"
    # five more views; the window closes at T0 + 4 h, so only the first two count
    clock.advance(hours=6)
    events = [
        {
            "user_id": user,
            "type": "view",
            "item_id": f"i{n:05d}",
            "timestamp": (T0 + timedelta(hours=hours)).isoformat(),
        }
        for n, hours in enumerate((3, 3.5, 5, 5.5, 6))
    ]
    assert client.post("/v1/events", json={"events": events}, headers=F).status_code == 200
    body = evaluate(client, user)
    assert body["reasons"] == ["not_new", "too_few_views"]
    assert body["views"] == 10


def test_unknown_user_is_not_eligible(client: TestClient) -> None:
    body = evaluate(client, "never-seen")
    assert body["decision"] == "not_eligible"
    assert "unknown_user" in body["reasons"]


def test_a_decision_is_made_once_and_repeated_as_already_decided(client: TestClient) -> None:
    user = treated_users("once-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=1), views=11)
    first = evaluate(client, user)
    again = evaluate(client, user)
    assert again["decision"] == "already_decided"
    assert again["previous_decision"] == "issued"
    assert again["attribution_id"] == first["attribution_id"]
    assert again["coupon"]["code"] == first["coupon"]["code"]


def test_holdout_users_get_no_coupon_and_stay_held_out(client: TestClient) -> None:
    user = holdout_users("held-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=1), views=11)
    body = evaluate(client, user)
    assert body["decision"] == "holdout"
    assert body["coupon"] is None
    again = evaluate(client, user)
    assert (again["decision"], again["previous_decision"]) == ("already_decided", "holdout")
    assert client.get(f"/v1/users/{user}/offers", headers=F).json()["offers"] == []


def test_inactive_campaign_is_not_eligible(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(
        tmp_path,
        f'[campaigns.{CAMPAIGN}]\nactive_from = "{(T0 + timedelta(days=1)).isoformat()}"\n',
    )
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        user = treated_users("early-", 1)[0]
        sign_up(c, user, ago=timedelta(hours=1), views=11)
        assert evaluate(c, user)["reasons"] == ["campaign_inactive"]


def test_distinct_items_counting(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(tmp_path, f'[campaigns.{CAMPAIGN}]\ncount = "distinct_items"\n')
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        user = treated_users("same-", 1)[0]
        sign_up(c, user, ago=timedelta(hours=1), views=20, items=["i00001", "i00002"])
        body = evaluate(c, user)
        assert (body["decision"], body["views"]) == ("not_eligible", 2)


# --- coupons ---------------------------------------------------------------------------------


def issue(client: TestClient, prefix: str) -> tuple[str, str]:
    user = treated_users(prefix, 1)[0]
    sign_up(client, user, ago=timedelta(hours=1), views=11)
    body = evaluate(client, user)
    assert body["decision"] == "issued", body
    return user, body["coupon"]["code"]


def test_redeem_exactly_once_with_replay_conflict_and_ownership(client: TestClient) -> None:
    user, code = issue(client, "redeem-")
    assert client.get(f"/v1/coupons/{code}", headers=F).json()["status"] == "active"
    lower = code.lower().replace("-", "")  # customers type codes any way
    r = client.post(
        f"/v1/coupons/{lower}/redeem",
        json={"user_id": user, "order_id": "o-1", "order_amount": "80.05", "currency": "EUR"},
        headers=F,
    )
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] is False
    # exact: 10 % of 80.05 is 8.005, not the float 8.004999...
    assert (r.json()["discount_amount"], r.json()["currency"]) == ("8.0050", "EUR")
    assert r.json()["coupon"]["status"] == "redeemed"
    retry = client.post(
        f"/v1/coupons/{code}/redeem", json={"user_id": user, "order_id": "o-1"}, headers=F
    )
    assert (retry.status_code, retry.json()["replayed"]) == (200, True)
    other_order = client.post(
        f"/v1/coupons/{code}/redeem", json={"user_id": user, "order_id": "o-2"}, headers=F
    )
    assert (other_order.status_code, other_order.json()["error"]) == (
        409,
        "coupon_already_redeemed",
    )
    thief = client.post(
        f"/v1/coupons/{code}/redeem", json={"user_id": "someone-else", "order_id": "o-3"}, headers=F
    )
    assert code not in thief.text
    unknown = client.post(
        "/v1/coupons/AAAA-BBBB-CCCC-DDDD/redeem", json={"user_id": user, "order_id": "o"}, headers=F
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "coupon_not_found")
    # another user's coupon is answered exactly like an unknown one: no existence oracle
    assert (thief.status_code, thief.content) == (unknown.status_code, unknown.content)
    assert client.get(f"/v1/coupons/{code}", headers=F).json()["status"] == "redeemed"


def test_coupon_expires_after_its_time_to_live(client: TestClient, clock: Clock) -> None:
    user, code = issue(client, "expire-")
    clock.advance(hours=23, minutes=59)
    assert client.get(f"/v1/coupons/{code}", headers=F).json()["seconds_left"] == 60
    clock.advance(minutes=1)
    r = client.post(
        f"/v1/coupons/{code}/redeem", json={"user_id": user, "order_id": "o-late"}, headers=F
    )
    assert (r.status_code, r.json()["error"]) == (410, "coupon_expired")
    assert client.get(f"/v1/coupons/{code}", headers=F).json()["status"] == "expired"
    assert client.get(f"/v1/users/{user}/offers", headers=F).json()["offers"] == []


def test_malformed_input_gets_4xx_naming_the_field(client: TestClient) -> None:
    r = client.post("/v1/offers/evaluate", json={"user_id": ""}, headers=F)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "user_id"
    r = client.post("/v1/offers/evaluate", json={"user_id": "u", "extra": 1}, headers=F)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "extra"
    r = client.post(
        "/v1/coupons/ABCD/redeem",
        json={"user_id": "u", "order_id": "o", "order_amount": -1, "currency": "EUR"},
        headers=F,
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "order_amount"
    r = client.get("/v1/coupons/" + "A" * 65, headers=F)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "code"
    r = client.post("/v1/offers/evaluate", json={"user_id": "u", "campaign_id": "nope"}, headers=F)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_campaign")


# --- one call for the frontend ---------------------------------------------------------------


def test_one_call_returns_products_and_the_offer_decision(client: TestClient) -> None:
    user = treated_users("page-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=1), views=10)
    url = f"/v1/users/{user}/recommendations"
    plain = client.get(url, headers=F).json()
    assert "offer" not in plain
    decide = {"decide_offer": True}
    page = client.post(url, json=decide, headers=F).json()
    assert len(page["items"]) == 10
    assert page["offer"]["decision"] == "not_eligible"
    assert page["offer"]["reasons"] == ["too_few_views"]
    assert page["offer"]["coupon"] is None
    view = {"user_id": user, "type": "view", "item_id": "i00077"}
    assert client.post("/v1/events", json=view, headers=F).status_code == 200
    page = client.post(url, json=decide, headers=F).json()
    offer = page["offer"]
    assert offer["decision"] == "issued"  # decided by the page call itself, and recorded
    assert offer["coupon"]["attribution_id"] == offer["attribution_id"]
    again = evaluate(client, user)
    assert again["decision"] == "already_decided"
    assert again["attribution_id"] == offer["attribution_id"]
    later = client.get(url, params={"include_offer": "true"}, headers=F).json()["offer"]
    assert later["coupon"]["code"] == offer["coupon"]["code"]
    offers = client.get(f"/v1/users/{user}/offers", headers=F).json()["offers"]
    assert [o["attribution_id"] for o in offers] == [offer["attribution_id"]]
    # once used, the page shows the decision but no coupon to offer
    redeem = {"user_id": user, "order_id": "o-page"}
    code = offer["coupon"]["code"]
    assert client.post(f"/v1/coupons/{code}/redeem", json=redeem, headers=F).status_code == 200
    used = client.get(url, params={"include_offer": "true"}, headers=F).json()["offer"]
    assert (used["decision"], used["coupon"]) == ("already_decided", None)
    used = client.post(url, json=decide, headers=F).json()["offer"]
    assert (used["decision"], used["coupon"]) == ("already_decided", None)


def test_a_get_never_decides_an_offer_and_no_coupon_response_is_cached(
    client: TestClient,
) -> None:
    user = treated_users("prefetch-", 1)[0]
    sign_up(client, user, ago=timedelta(hours=1), views=11)  # qualifies
    url = f"/v1/users/{user}/recommendations"
    for _ in range(3):  # a browser prefetch, a CDN, a crawler
        page = client.get(url, params={"include_offer": "true"}, headers=F)
        assert page.status_code == 200
        assert page.json()["offer"] is None
    assert evaluate(client, user)["decision"] == "issued"  # nothing was decided before
    shown = client.get(url, params={"include_offer": "true"}, headers=F)
    assert shown.json()["offer"]["decision"] == "already_decided"
    code = shown.json()["offer"]["coupon"]["code"]
    assert shown.headers["cache-control"] == "no-store"
    carrying = [
        shown,
        client.post(url, json={"decide_offer": True}, headers=F),
        client.post(url, json={"decide_offer": False}, headers=F),
        client.post("/v1/offers/evaluate", json={"user_id": user}, headers=F),
        client.get(f"/v1/users/{user}/offers", headers=F),
        client.get(f"/v1/coupons/{code}", params={"user_id": user}, headers=F),
    ]
    for response in carrying:
        assert response.status_code == 200, response.text
        assert code in response.text
        assert response.headers["cache-control"] == "no-store", response.request.url
    assert "cache-control" not in client.get(url, headers=F).headers  # no offer: cacheable
    bad = client.post(url, json={"decide_offer": True, "include_offer": True}, headers=F)
    assert (bad.status_code, bad.json()["detail"][0]["field"]) == (422, "include_offer")


def test_coupon_restricted_to_the_models_favourites_among_viewed(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(tmp_path, f"[campaigns.{CAMPAIGN}]\nrestrict_to_top_items = 3\n")
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        user = treated_users("fav-", 1)[0]
        viewed = [f"i{n:05d}" for n in range(1, 12)]
        sign_up(c, user, ago=timedelta(hours=1), views=11, items=viewed)
        recommender = c.app.state.recoffer.models.current  # type: ignore[attr-defined]
        recent = c.app.state.recoffer.activity.recent(user)  # type: ignore[attr-defined]
        expected = recommender.rank(user, viewed, recent, clock.now)[:3]
        coupon = evaluate(c, user)["coupon"]
        assert coupon["item_ids"] == expected
        assert set(expected) <= set(viewed)


# --- caps, sweep, stats ----------------------------------------------------------------------


def test_daily_and_total_caps_are_enforced(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(
        tmp_path,
        f"[campaigns.{CAMPAIGN}]\nholdout_percent = 0\nmax_per_day = 2\nmax_total = 3\n",
    )
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        users = [f"cap-{n}" for n in range(5)]
        for user in users:
            sign_up(c, user, ago=timedelta(hours=1), views=11)
        day_one = [evaluate(c, u)["decision"] for u in users[:3]]
        assert day_one == ["issued", "issued", "budget_exhausted"]
        assert evaluate(c, users[2])["reasons"] == [f"cap_{T0.date().isoformat()}"]
        clock.advance(hours=6)  # the next UTC day; the users are still inside their window
        assert evaluate(c, users[2])["decision"] == "issued"  # a budget miss may be retried
        assert evaluate(c, users[3])["decision"] == "budget_exhausted"
        assert evaluate(c, users[3])["reasons"] == ["cap_total"]
        stats = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        assert stats["decisions"] == {
            "issued": 3,
            "holdout": 0,
            "not_targeted": 0,
            "budget_exhausted": 1,
        }
        assert stats["budget"]["left_total"] == 0
        assert stats["budget"]["used_today"] == 1


def run_sweep(client: TestClient, campaign: str = CAMPAIGN) -> dict[str, Any]:
    """POST the run (202 and the job), wait for this worker's sweep, GET the job."""
    r = client.post(f"/v1/campaigns/{campaign}/run", headers=M)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/campaigns/{campaign}/runs/{r.json()['job_id']}"
    state: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
    assert state.sweeps.wait(60)
    job = client.get(r.headers["location"], headers=M)
    assert job.status_code == 200, job.text
    body: dict[str, Any] = job.json()
    return body


def test_sweep_decides_everyone_in_the_window_once(
    small_model_root: Path, database_url: str, clock: Clock
) -> None:
    with make_client(small_model_root, database_url, clock) as c:
        eligible = [f"sweep-{n}" for n in range(30)]
        for user in eligible:
            sign_up(c, user, ago=timedelta(hours=3), views=12)
        sign_up(c, "sweep-few", ago=timedelta(hours=3), views=4)
        sign_up(c, "sweep-old", ago=timedelta(hours=30), views=20)
        first = run_sweep(c)
        assert first["state"] == "done", first
        holdout = sum(in_holdout(CAMPAIGN, u, 10) for u in eligible)
        assert first["evaluated"] == first["processed"] == 31  # the old user is outside
        assert (first["issued"], first["holdout"], first["not_eligible"]) == (
            30 - holdout,
            holdout,
            1,
        )
        assert first["eligible"] == 30
        # repeated: nobody is decided twice, no coupon duplicated
        again = run_sweep(c)
        assert (again["evaluated"], again["not_eligible"], again["issued"]) == (1, 1, 0)
        stats = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        assert stats["coupons"]["issued"] == 30 - holdout
        assert stats["eligible"] == 30


def test_stats_report_conversion_and_uplift(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(tmp_path, f"[campaigns.{CAMPAIGN}]\nholdout_percent = 50\n")
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        treated = treated_users("stat-", 4, percent=50)
        held = holdout_users("stat-", 4, percent=50)
        for user in treated + held:
            sign_up(c, user, ago=timedelta(hours=1), views=11)
            evaluate(c, user)
        clock.advance(hours=2)
        buys = [*treated[:3], held[0]]  # 3 of 4 treated buy, 1 of 4 held out
        for user in buys:
            r = c.post(
                "/v1/events",
                json={"user_id": user, "type": "purchase", "item_id": "i00001", "order_id": user},
                headers=F,
            )
            assert r.status_code == 200
        code = c.get(f"/v1/users/{treated[0]}/offers", headers=F).json()["offers"][0]["code"]
        redeem = {
            "user_id": treated[0],
            "order_id": treated[0],
            "order_amount": "50.00",
            "currency": "EUR",
        }
        assert c.post(f"/v1/coupons/{code}/redeem", json=redeem, headers=F).status_code == 200
        clock.advance(hours=30)  # every window closed; a late purchase does not count
        late = {"user_id": held[1], "type": "purchase", "item_id": "i00002"}
        assert c.post("/v1/events", json=late, headers=F).status_code == 200
        s = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        assert s["converted"] == {"treated": 3, "holdout": 1}
        assert s["conversion"]["treated"]["estimate"] == 0.75
        assert s["conversion"]["holdout"]["estimate"] == 0.25
        assert s["uplift"]["estimate"] == 0.5
        assert -1 <= s["uplift"]["low"] < 0.5 < s["uplift"]["high"] <= 1
        assert s["coupons"] == {
            "issued": 4,
            "active": 0,
            "redeemed": 1,
            "expired": 3,
            "redemptions": 1,
            "releases": 0,
        }
        assert s["discount_cost"] == {"EUR": "5.0000"}
        assert s["open_windows"] == 0


def test_campaigns_are_listed_for_marketing_only(client: TestClient) -> None:
    r = client.get("/v1/campaigns", headers=M)
    assert r.status_code == 200
    (campaign,) = r.json()["campaigns"]
    assert campaign["campaign_id"] == CAMPAIGN
    assert campaign["active_now"] is True
    assert campaign["definition"]["min_views"] == 11
    assert campaign["definition"]["holdout_percent"] == 10
    assert client.get("/v1/campaigns", headers=F).status_code == 403
    assert client.post(f"/v1/campaigns/{CAMPAIGN}/run", headers=F).status_code == 403
    assert client.get("/v1/campaigns/nope/stats", headers=M).status_code == 404


def _drain_auto_offers(c: TestClient) -> None:
    """Wait, on the app's own event loop, for the on-view evaluations under way."""
    state: AppState = c.app.state.recoffer  # type: ignore[attr-defined]
    assert c.portal is not None, "the client is not started (outside its `with`)"
    c.portal.call(state.auto_offers.drain)


def test_evaluation_on_view_issues_without_a_call(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> None:
    path = campaigns_file(tmp_path, f"[campaigns.{CAMPAIGN}]\nevaluate_on_view = true\n")
    with make_client(small_model_root, database_url, clock, campaigns_file=path) as c:
        user = treated_users("auto-", 1)[0]
        sign_up(c, user, ago=timedelta(hours=1), views=10)
        _drain_auto_offers(c)
        assert c.get(f"/v1/users/{user}/offers", headers=F).json()["offers"] == []
        view = {"user_id": user, "type": "view", "item_id": "i00099"}
        assert c.post("/v1/events", json=view, headers=F).status_code == 200
        _drain_auto_offers(c)
        offers = c.get(f"/v1/users/{user}/offers", headers=F).json()["offers"]
        assert len(offers) == 1


def test_offer_metrics_are_exported(client: TestClient) -> None:
    issue(client, "metric-")
    client.app.state.recoffer.reports.refresh_gauges()  # type: ignore[attr-defined]
    text = client.get("/metrics").text
    assert f'recoffer_offer_decisions_total{{campaign="{CAMPAIGN}",decision="issued"}} 1.0' in text
    assert f'recoffer_coupons{{campaign="{CAMPAIGN}",state="active"}} 1.0' in text


def test_logs_never_hold_a_full_coupon_code(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    user, code = issue(client, "quiet-")
    plain = code.replace("-", "")
    body = {"user_id": user, "order_id": "o-1"}
    assert client.post(f"/v1/coupons/{code}/redeem", json=body, headers=F).status_code == 200
    again = client.post(f"/v1/coupons/{code}/redeem", json=body | {"order_id": "o-2"}, headers=F)
    assert again.status_code == 409
    # every record of the service (httpx's are the test client's own, on the shop's side)
    logged = " ".join(str(vars(r)) for r in caplog.records if not r.name.startswith("httpx"))
    assert "coupon_issued" in logged
    assert "coupon_redeemed" in logged
    assert plain not in logged
    assert code not in logged
    assert hashlib.sha256(plain.encode()).hexdigest()[:12] in logged  # found by its fingerprint


def test_a_sign_up_in_the_far_future_is_refused_not_a_500(client: TestClient) -> None:
    r = client.put("/v1/users/far", json={"signed_up_at": "9999-12-31T23:30:00Z"}, headers=F)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "signed_up_at"
    assert evaluate(client, "far")["decision"] == "not_eligible"
