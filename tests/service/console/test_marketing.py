"""Marketing's pages of the console: campaigns (list, create, edit, pause, archive, results
over time), segments, loyalty and cohorts; the figures shown are the API's for the same data."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from benchmarks.harness import ManualClock as Clock
from service.api.schemas import CohortsOut, LoyaltyOut
from service.app import create_app
from service.charts import percent
from service.console.figures import FiguresCache
from service.offers.history import History
from service.offers.repository.history import HistoryRepository
from service.offers.rules import in_holdout

from .pages import KEYS, console_settings, hidden, sign_in

F = {"X-API-Key": KEYS["frontend"]}
M = {"X-API-Key": KEYS["marketing"]}
CAMPAIGN = "new_user_high_intent"
T0 = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)


def _users(prefix: str, n: int, held: bool) -> list[str]:
    found = [f"{prefix}{i}" for i in range(200) if in_holdout(CAMPAIGN, f"{prefix}{i}", 50) == held]
    return found[:n]


def _decide(client: TestClient, users: list[str]) -> None:
    now = client.app.state.recoffer.clock()  # type: ignore[attr-defined]
    for user in users:
        start = now - timedelta(hours=1)
        r = client.put(f"/v1/users/{user}", json={"signed_up_at": start.isoformat()}, headers=F)
        assert r.status_code == 200, r.text
        views = [
            {
                "user_id": user,
                "type": "view",
                "item_id": f"i{n:05d}",
                "timestamp": (start + timedelta(minutes=n + 1)).isoformat(),
            }
            for n in range(11)
        ]
        assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
        r = client.post("/v1/offers/evaluate", json={"user_id": user}, headers=F)
        assert r.status_code == 200, r.text


def _buy(client: TestClient, user: str, price: str, order: str) -> None:
    event = {
        "user_id": user,
        "type": "purchase",
        "item_id": "i00001",
        "order_id": order,
        "price": price,
        "currency": "EUR",
        "quantity": 2,
    }
    assert client.post("/v1/events", json=event, headers=F).status_code == 200


def _redeem(client: TestClient, user: str, order: str, amount: str) -> str:
    offers = client.get(f"/v1/users/{user}/offers", headers=F).json()["offers"]
    code: str = offers[0]["code"]
    body = {"user_id": user, "order_id": order, "order_amount": amount, "currency": "EUR"}
    r = client.post(f"/v1/coupons/{code}/redeem", json=body, headers=F)
    assert r.status_code == 200, r.text
    return code


def run_campaign_over_days(client: TestClient, clock: Clock) -> None:
    """Four UTC days of the built-in campaign (half held out): decisions on two days,
    purchases with prices, redemptions, one of them released, coupons that expire."""
    r = client.patch(f"/v1/campaigns/{CAMPAIGN}", json={"holdout_percent": 50}, headers=M)
    assert r.status_code == 200, r.text
    treated, held = _users("day1-", 4, held=False), _users("day1-", 3, held=True)
    _decide(client, treated + held)  # 20:00 on day 1
    clock.advance(hours=2)
    for n, user in enumerate(treated[:3]):
        _buy(client, user, f"{20 + n}.50", f"o-{user}")
    _buy(client, held[0], "12.25", f"o-{held[0]}")
    _redeem(client, treated[0], f"o-{treated[0]}", "41.00")
    code = _redeem(client, treated[1], f"o-{treated[1]}", "43.00")
    clock.advance(minutes=30)
    release = {"user_id": treated[1], "order_id": f"o-{treated[1]}"}
    r = client.post(f"/v1/coupons/{code}/release", json=release, headers=F)
    assert r.status_code == 200, r.text
    clock.advance(hours=23, minutes=30)  # 22:00 on day 2: day 1's unused coupons expired
    treated2, held2 = _users("day2-", 2, held=False), _users("day2-", 2, held=True)
    _decide(client, treated2 + held2)
    clock.advance(hours=1)
    _buy(client, treated2[0], "30.00", f"o-{treated2[0]}")
    _buy(client, held2[0], "5.00", f"o-{held2[0]}")
    _redeem(client, treated2[0], f"o-{treated2[0]}", "60.00")
    clock.advance(hours=30)  # day 4: every window closed


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def shop(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(console_settings(tmp_path), clock=clock)) as client:
        yield client


def _text(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def _figure(html: str, name: str) -> list[str]:
    return re.findall(rf'data-figure="{re.escape(name)}">([^<]*)<', html)


# --- results over time -------------------------------------------------------------------


def test_the_last_day_of_the_results_is_the_stats_total(
    tmp_path: Path, clock: Clock, database_url: str
) -> None:
    settings = console_settings(tmp_path, database_url=database_url)
    with TestClient(create_app(settings, clock=clock)) as client:
        run_campaign_over_days(client, clock)
        stats = client.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        state = client.app.state.recoffer  # type: ignore[attr-defined]
        history = History(HistoryRepository(state.repository), clock).results(CAMPAIGN)
        latest = History(HistoryRepository(state.repository), clock).results(CAMPAIGN, max_days=2)
    assert [d.day for d in latest.days] == ["2026-11-22", "2026-11-23"]
    assert latest.first_day == "2026-11-20"  # the days before still count
    assert latest.days[-1] == history.days[-1]
    days = history.days
    assert [d.day for d in days] == ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]
    last = days[-1]
    assert last.decided["issued"] == stats["decisions"]["issued"] == 6
    assert last.decided["holdout"] == stats["decisions"]["holdout"] == 5
    assert last.redeemed == stats["coupons"]["redeemed"] == 2
    assert last.expired == stats["coupons"]["expired"] == 4
    assert last.converted == stats["converted"] == {"treated": 4, "holdout": 2}
    for side in ("treated", "holdout"):
        interval = last.conversion[side]
        assert interval is not None
        assert round(interval.estimate, 6) == stats["conversion"][side]["estimate"]
        assert round(interval.low, 6) == stats["conversion"][side]["low"]
        assert round(interval.high, 6) == stats["conversion"][side]["high"]
    assert last.uplift is not None
    assert round(last.uplift.estimate, 6) == stats["uplift"]["estimate"]
    assert round(last.uplift.low, 6) == stats["uplift"]["low"]
    assert round(last.uplift.high, 6) == stats["uplift"]["high"]
    spent = {c: str(a) for c, a in last.spent.items()}
    assert spent == stats["discount_given"]["total"]
    revenue = last.revenue["EUR"]
    api = stats["revenue"]["EUR"]
    assert str(revenue.treated_revenue) == api["treated_revenue"]
    assert str(revenue.holdout_revenue) == api["holdout_revenue"]
    assert revenue.incremental is not None
    assert str(revenue.incremental.estimate) == api["incremental"]["estimate"]
    assert str(revenue.incremental.low) == api["incremental"]["low"]
    assert str(revenue.net_incremental.estimate) == api["net_incremental"]["estimate"]  # type: ignore[union-attr]
    # cumulative: day 1 had 4 + 3 decisions and three treated buyers, no coupon expired yet
    first = days[0]
    assert (first.decided["issued"], first.decided["holdout"]) == (4, 3)
    assert first.converted == {"treated": 3, "holdout": 1}
    assert first.expired == 0
    assert first.redeemed == 1  # the other redemption of day 1 was released
    assert first.spent["EUR"] == Decimal("4.1000")  # 10 % of 41.00
    assert days[1].expired == 3  # day 1's unused coupons expired on day 2
    assert days[2].expired == 4


# --- the campaigns' pages ------------------------------------------------------------------


def test_the_list_shows_each_campaign_with_the_apis_figures(shop: TestClient, clock: Clock) -> None:
    run_campaign_over_days(shop, clock)
    stats = shop.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
    sign_in(shop, "marketing")
    page = shop.get("/console/campaigns")
    assert page.status_code == 200
    assert f'href="/console/campaigns/{CAMPAIGN}"' in page.text
    assert _figure(page.text, "issued") == [str(stats["coupons"]["issued"])]
    assert _figure(page.text, "holdout") == [str(stats["decisions"]["holdout"])]
    assert _figure(page.text, "redeemed") == [str(stats["coupons"]["redeemed"])]
    assert _figure(page.text, "expired") == [str(stats["coupons"]["expired"])]
    assert ">active<" in page.text  # the status in words, not a colour


def test_a_campaigns_page_shows_its_stats_and_charts_over_time(
    shop: TestClient, clock: Clock
) -> None:
    run_campaign_over_days(shop, clock)
    stats = shop.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
    sign_in(shop, "marketing")
    page = shop.get(f"/console/campaigns/{CAMPAIGN}")
    assert page.status_code == 200
    text = _text(page.text)
    uplift = stats["uplift"]
    assert f"Uplift {percent(uplift['estimate'])} (95 % interval" in text
    assert f"{percent(uplift['low'])} to {percent(uplift['high'])}" in text
    incremental = stats["revenue"]["EUR"]["incremental"]
    assert f"Incremental revenue, EUR {incremental['estimate']}" in text
    assert f"Discount given, EUR {stats['discount_given']['total']['EUR']}" in text
    assert "Cumulative" in text
    for title in ("Coupons (cumulative)", "Uplift", "Budget spent", "Incremental revenue in EUR"):
        assert title in text
    assert page.text.count("<svg") >= 5
    assert "<script" not in page.text
    assert "style=" not in page.text  # the CSP allows no inline style


def test_create_pause_resume_and_archive_through_the_forms(shop: TestClient) -> None:
    csrf = sign_in(shop, "marketing")
    form = shop.get("/console/campaigns/new?kind=win_back")
    assert form.status_code == 200
    assert 'name="min_orders"' in form.text
    assert 'name="min_views"' not in form.text  # a field of another kind is not offered
    created = shop.post(
        "/console/campaigns/new",
        data={
            "csrf": hidden(form.text, "csrf"),
            "kind": "win_back",
            "campaign_id": "come_back",
            "min_orders": "3",
            "discount_percent": "15",
            "exclude_segments": ["mercenary"],
        },
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    api = shop.get("/v1/campaigns/come_back", headers=M).json()
    assert api["status"] == "active"
    assert api["definition"]["min_orders"] == 3
    assert api["definition"]["discount_percent"] == 15
    assert api["definition"]["exclude_segments"] == ["mercenary"]
    page = shop.get("/console/campaigns/come_back?done=created")
    assert "the campaign was created" in page.text
    shop.post("/console/campaigns/come_back/pause", data={"csrf": csrf})
    assert shop.get("/v1/campaigns/come_back", headers=M).json()["status"] == "paused"
    assert "status: paused" in shop.get("/console/campaigns/come_back").text
    shop.post("/console/campaigns/come_back/resume", data={"csrf": csrf})
    assert shop.get("/v1/campaigns/come_back", headers=M).json()["status"] == "active"
    # archiving asks first: the confirm page, then its own form
    confirm = shop.get("/console/campaigns/come_back/archive")
    assert "Archiving is final" in confirm.text
    unconfirmed = shop.post(
        "/console/campaigns/come_back/archive", data={"csrf": csrf}, follow_redirects=False
    )
    assert unconfirmed.headers["location"] == "/console/campaigns/come_back/archive"
    assert shop.get("/v1/campaigns/come_back", headers=M).json()["status"] == "active"
    shop.post("/console/campaigns/come_back/archive", data={"csrf": csrf, "confirm": "yes"})
    assert shop.get("/v1/campaigns/come_back", headers=M).json()["status"] == "archived"
    history = shop.get("/v1/campaigns/come_back/history", headers=M).json()["changes"]
    assert [c["action"] for c in history] == ["create", "pause", "resume", "archive"]
    archived = shop.get("/console/campaigns/come_back")
    assert "status: archived" in archived.text
    assert "/pause" not in archived.text
    assert "/edit" not in archived.text
    again = shop.post("/console/campaigns/come_back/resume", data={"csrf": csrf})
    assert again.status_code == 409  # archived for good: a page saying so, not a 500
    assert "archived" in again.text
    fingerprint = history[0]["actor"]
    assert fingerprint.startswith("marketing:")  # the key's fingerprint, as the API records it


def test_an_edit_sends_only_what_changed_and_makes_a_new_version(shop: TestClient) -> None:
    sign_in(shop, "admin")
    page = shop.get(f"/console/campaigns/{CAMPAIGN}")
    form = dict(
        re.findall(r'<input id="f-[^"]+" name="([^"]+)" type="text" value="([^"]*)"', page.text)
    )
    form.update({"csrf": hidden(page.text, "csrf"), "version": hidden(page.text, "version")})
    form["max_per_day"] = "250"
    answer = shop.post(f"/console/campaigns/{CAMPAIGN}/edit", data=form, follow_redirects=False)
    assert answer.status_code == 303, _text(answer.text)[:500]
    api = shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()
    assert api["definition"]["max_per_day"] == 250
    assert api["version"] == 2
    changes = shop.get(f"/v1/campaigns/{CAMPAIGN}/history", headers=M).json()["changes"]
    assert changes[-1]["definition"]["max_per_day"] == 250
    unchanged = shop.post(
        f"/console/campaigns/{CAMPAIGN}/edit",
        data={**form, "version": "2"},
        follow_redirects=False,
    )
    assert unchanged.headers["location"].endswith("done=unchanged")
    assert shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()["version"] == 2


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_orders": "many"}, "min_orders"),
        ({"min_orders": "0"}, "min_orders"),
        ({"discount_percent": "150"}, "discount_percent"),
        ({"fixed_discount": "5.00"}, "fixed_discount"),  # needs its currency
        ({"campaign_id": "Not An Id!"}, "campaign_id"),
        ({"campaign_id": ""}, "campaign_id"),
        ({"min_lapse_days": "800", "max_lapse_days": "700"}, "max_lapse_days"),
    ],
)
def test_bad_input_comes_back_filled_in_naming_the_field_and_nothing_is_stored(
    shop: TestClient, fields: dict[str, str], named: str
) -> None:
    csrf = sign_in(shop, "marketing")
    data = {"csrf": csrf, "kind": "win_back", "campaign_id": "come_back", "lapse_days": "45"}
    data.update(fields)
    answer = shop.post("/console/campaigns/new", data=data)
    assert answer.status_code == 422
    assert f'class="problem field-error" id="f-{named}-error">{named}:' in answer.text
    assert 'value="45"' in answer.text  # what was typed comes back
    for value in fields.values():
        if value:
            assert f'value="{value}"' in unescape(answer.text)
    listed = shop.get("/v1/campaigns", headers=M).json()["campaigns"]
    assert [c["campaign_id"] for c in listed] == [CAMPAIGN]


def test_a_bad_edit_is_refused_with_the_field_and_nothing_changes(shop: TestClient) -> None:
    csrf = sign_in(shop, "marketing")
    answer = shop.post(
        f"/console/campaigns/{CAMPAIGN}/edit",
        data={"csrf": csrf, "version": "1", "holdout_percent": "-5", "min_views": "12"},
    )
    assert answer.status_code == 422
    assert 'id="f-holdout_percent-error">holdout_percent:' in answer.text
    assert 'value="-5"' in answer.text
    assert shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()["version"] == 1


def test_a_form_without_the_csrf_token_changes_nothing(shop: TestClient) -> None:
    sign_in(shop, "marketing")
    for path, data in (
        ("/console/campaigns/new", {"kind": "win_back", "campaign_id": "sneaky"}),
        (f"/console/campaigns/{CAMPAIGN}/pause", {}),
        (f"/console/campaigns/{CAMPAIGN}/archive", {"confirm": "yes"}),
        (f"/console/campaigns/{CAMPAIGN}/edit", {"max_per_day": "5"}),
    ):
        for token in (None, "forged"):
            sent = data if token is None else {**data, "csrf": token}
            assert shop.post(path, data=sent).status_code == 403
    api = shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()
    assert (api["status"], api["version"]) == ("active", 1)
    assert len(shop.get("/v1/campaigns", headers=M).json()["campaigns"]) == 1


@pytest.mark.parametrize("role", ["marketing", "admin"])
def test_marketing_and_admin_see_every_marketing_page(shop: TestClient, role: str) -> None:
    sign_in(shop, role)
    for path in (
        "/console",
        "/console/campaigns",
        "/console/campaigns/new",
        f"/console/campaigns/{CAMPAIGN}",
        f"/console/campaigns/{CAMPAIGN}/archive",
        "/console/segments",
        "/console/loyalty",
        "/console/cohorts",
    ):
        answer = shop.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")


def test_without_a_session_the_pages_send_to_sign_in(shop: TestClient) -> None:
    for path in ("/console/campaigns", "/console/loyalty", f"/console/campaigns/{CAMPAIGN}"):
        answer = shop.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/sign-in?next=")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/console/campaigns/new?kind=nonsense", 422),
        ("/console/campaigns/new?kind=", 422),
        ("/console/campaigns/no-such-campaign", 404),
        ("/console/campaigns/%00%ff", 404),
        ("/console/campaigns/no-such/archive", 404),
        ("/console/loyalty?period=year", 422),
        ("/console/loyalty?segment=whales", 422),
        ("/console/loyalty?period=week&segment=", 200),
        ("/console/loyalty?period=x&segment=bogus", 422),  # a page, not the API's JSON
        ("/console/cohorts?segment=%27%3B--", 422),
        (f"/console/campaigns/{CAMPAIGN}?done=%3Cscript%3E", 200),
    ],
)
def test_odd_query_parameters_get_a_page_not_a_500(
    shop: TestClient, path: str, status: int
) -> None:
    sign_in(shop, "marketing")
    answer = shop.get(path)
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"].startswith("text/html")
    assert "<script>" not in answer.text


def test_posting_to_an_unknown_campaign_is_a_404_page(shop: TestClient) -> None:
    csrf = sign_in(shop, "marketing")
    answer = shop.post("/console/campaigns/nothing-here/pause", data={"csrf": csrf})
    assert answer.status_code == 404
    assert "no campaign 'nothing-here'" in unescape(answer.text)


# --- segments, loyalty, cohorts ------------------------------------------------------------


def _orders(client: TestClient) -> None:
    """Purchases of six customers over three months, in EUR."""
    events: list[dict[str, Any]] = []
    start = datetime(2026, 8, 3, 10, 0, tzinfo=UTC)
    for n in range(6):
        for month in range(n % 3 + 1):
            at = start + timedelta(days=30 * month + n)
            for item in range(1 + n % 2):
                events.append(
                    {
                        "user_id": f"c{n}",
                        "type": "purchase",
                        "item_id": f"i{item:05d}",
                        "order_id": f"c{n}-{month}",
                        "timestamp": at.isoformat(),
                        "price": f"{10 + n}.25",
                        "currency": "EUR",
                    }
                )
    assert client.post("/v1/events", json={"events": events}, headers=F).status_code == 200


def test_the_loyalty_table_holds_the_apis_figures(shop: TestClient) -> None:
    _orders(shop)
    sign_in(shop, "marketing")
    for period in ("month", "week"):
        api = shop.get(f"/v1/analytics/loyalty?period={period}", headers=M).json()
        page = shop.get(f"/console/loyalty?period={period}")
        assert page.status_code == 200
        assert len(api["periods"]) > 1
        for row in api["periods"]:
            found = re.search(rf'<tr data-period="{row["period"]}">(.*?)</tr>', page.text, re.S)
            assert found, row["period"]
            cells = dict(re.findall(r'data-figure="([^"]+)">([^<]*)<', found.group(1)))
            for name in ("customers_at_start", "new_customers", "customers_at_end", "orders"):
                assert cells[name] == str(row[name])
            for name in ("retention", "churn", "repurchase_rate", "upsell_rate"):
                expected = "no figure" if row[name] is None else f"{row[name]:.4f}"
                assert cells[name] == expected
            assert cells.get("aov-EUR", "") == row["average_order_value"].get("EUR", "")
            ltv = row["lifetime_value"].get("EUR")
            assert cells["ltv-mean-EUR"] == (ltv["mean"] if ltv else "")
    filtered = shop.get("/console/loyalty?segment=new")
    assert filtered.status_code == 200
    assert 'option value="new" selected' in filtered.text


def test_the_cohort_matrix_prints_the_apis_shares(shop: TestClient) -> None:
    _orders(shop)
    sign_in(shop, "marketing")
    api = shop.get("/v1/analytics/cohorts", headers=M).json()
    page = shop.get("/console/cohorts")
    assert page.status_code == 200
    assert api["cohorts"]
    for cohort in api["cohorts"]:
        found = re.search(
            rf"<tr><th scope=\"row\">{cohort['cohort']} \(([\d,]+)\)</th>(.*?)</tr>", page.text
        )
        assert found, cohort["cohort"]
        assert found.group(1) == f"{cohort['size']:,}"
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", found.group(2))
        shown = [c for c in cells if c]
        assert shown == [percent(s) for s in cohort["share"] if s is not None]


def test_segment_sizes_now_and_at_each_run_match_the_api(shop: TestClient, clock: Clock) -> None:
    _orders(shop)
    state = shop.app.state.recoffer  # type: ignore[attr-defined]
    state.segments.run()
    clock.advance(days=40)
    state.segments.run()
    sign_in(shop, "marketing")
    api = shop.get("/v1/segments", headers=M).json()
    page = shop.get("/console/segments")
    assert page.status_code == 200
    for stage, n in api["stages"].items():
        assert f'data-stage="{stage}">{n:,}<' in page.text
    for kind, n in api["loyalty_types"].items():
        assert f'data-type="{kind}">{n:,}<' in page.text
    assert "Users per lifecycle stage, at each segment run" in page.text
    runs = state.segments.runs()
    assert len(runs) == 2
    assert [r.users for r in runs] == [6, 6]
    assert runs[0].per_stage() != runs[1].per_stage()  # 40 days later some have lapsed


def test_the_overview_has_marketings_headline_figures(shop: TestClient) -> None:
    sign_in(shop, "marketing")
    text = _text(shop.get("/console").text)
    assert "Campaigns deciding now 1" in text
    assert "Users with a segment 0" in text


def test_kept_loyalty_figures_follow_a_new_purchase(shop: TestClient) -> None:
    _orders(shop)
    sign_in(shop, "marketing")
    before = shop.get("/console/loyalty")
    orders = sum(int(n) for n in _figure(before.text, "orders"))
    assert orders == sum(
        p["orders"] for p in shop.get("/v1/analytics/loyalty", headers=M).json()["periods"]
    )
    late = {
        "user_id": "c0",
        "type": "purchase",
        "item_id": "i00003",
        "order_id": "late",
        "timestamp": "2026-10-30T10:00:00+00:00",
    }
    assert shop.post("/v1/events", json=late, headers=F).status_code == 200
    stale = shop.get("/console/loyalty")  # at once: the kept figures, said to be older
    assert sum(int(n) for n in _figure(stale.text, "orders")) == orders
    assert "newer figures are being computed" in stale.text
    deadline = time.monotonic() + 30
    while True:  # the background computation lands; the page then says it is current
        after = shop.get("/console/loyalty")
        if "no purchase has arrived since" in after.text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(int(n) for n in _figure(after.text, "orders")) == orders + 1
    assert "no purchase has arrived since" in after.text


def test_the_warmed_figures_are_the_apis(shop: TestClient) -> None:
    _orders(shop)
    state = shop.app.state.recoffer  # type: ignore[attr-defined]
    cache = FiguresCache(state.repository.engine)
    cache.warm()
    for period in ("month", "week"):
        api = shop.get(f"/v1/analytics/loyalty?period={period}", headers=M).json()
        assert (
            LoyaltyOut.model_validate(cache.loyalty(period, None).result).model_dump(mode="json")
            == api
        )
    assert CohortsOut.model_validate(cache.cohorts(None).result).model_dump(mode="json") == (
        shop.get("/v1/analytics/cohorts", headers=M).json()
    )


def test_an_edit_of_a_version_changed_meanwhile_is_refused(shop: TestClient) -> None:
    csrf = sign_in(shop, "marketing")
    page = shop.get(f"/console/campaigns/{CAMPAIGN}")
    version = hidden(page.text, "version")
    r = shop.patch(f"/v1/campaigns/{CAMPAIGN}", json={"max_per_day": 10}, headers=M)
    assert r.status_code == 200
    answer = shop.post(
        f"/console/campaigns/{CAMPAIGN}/edit",
        data={"csrf": csrf, "version": version, "max_per_day": "20"},
    )
    assert answer.status_code == 409
    assert "version" in _text(answer.text)
    assert hidden(answer.text, "version") == "2"  # the form is now on the current version
    assert 'value="20"' in answer.text  # with what was typed
    assert (
        shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()["definition"]["max_per_day"] == 10
    )


@pytest.mark.parametrize("version", [None, "", "²", "9" * 5000, "-1", "1.0"])
def test_an_edit_without_a_sound_version_is_refused_and_changes_nothing(
    shop: TestClient, version: str | None
) -> None:
    csrf = sign_in(shop, "marketing")
    before = shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json()
    data = {"csrf": csrf, "max_per_day": "33"}
    if version is not None:
        data["version"] = version
    answer = shop.post(f"/console/campaigns/{CAMPAIGN}/edit", data=data)
    assert answer.status_code == 422
    assert "version" in _text(answer.text)
    assert shop.get(f"/v1/campaigns/{CAMPAIGN}", headers=M).json() == before
