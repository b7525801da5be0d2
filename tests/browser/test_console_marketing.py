"""Marketing's console pages in a real browser on the demo shop: every page opens, shows the
API's figures and fits a phone; a campaign is created (after a refused field) and paused
through the forms; no request leaves the server (the ``console`` fixture checks it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.demo_console import KEYS
from benchmarks.harness import Server

from .console import PHONE, Console

CAMPAIGN = "new_user_high_intent"
# (name of the screenshot and timing, path)
PAGES = (
    ("campaigns", "/console/campaigns"),
    ("campaign", f"/console/campaigns/{CAMPAIGN}"),
    ("campaign-new", "/console/campaigns/new?kind=win_back"),
    ("segments", "/console/segments"),
    ("loyalty", "/console/loyalty"),
    ("loyalty-week", "/console/loyalty?period=week"),
    ("cohorts", "/console/cohorts"),
    ("customer-value", "/console/customer-value"),  # no `recoffer clv --write` on the demo
    ("recommendations", "/console/recommendations"),  # issue 14
)


@pytest.fixture
def api(demo_server: Server) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": KEYS["marketing"]}
    with httpx.Client(base_url=demo_server.url, headers=headers, timeout=60) as client:
        yield client


def _get(api: httpx.Client, path: str) -> Any:
    answer = api.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _cells(console: Console, selector: str) -> list[str]:
    return [t.strip() for t in console.tab.locator(selector).all_inner_texts()]


def test_every_marketing_page_shows_the_apis_figures_and_fits_a_phone(
    console: Console, api: httpx.Client
) -> None:
    console.sign_in("marketing")
    console.open("/console", name="overview (marketing, pages)")
    console.screenshot("overview-marketing")
    for name, path in PAGES:
        console.open(path, name=name)
        assert console.tab.locator("main h1").count() == 1
        if not name.endswith("-week"):
            console.screenshot(name)
        console.tab.set_viewport_size(PHONE)
        width = console.tab.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide on a phone"
        if name in ("campaign", "loyalty"):
            console.screenshot(name, phone=True)
        console.tab.set_viewport_size({"width": 1280, "height": 900})
        check = CHECKS.get(name)
        if check is not None:
            console.open(path, name=name)  # a second visit: the figures as they are now
            check(console, api)


def _campaigns(console: Console, api: httpx.Client) -> None:
    stats = _get(api, f"/v1/campaigns/{CAMPAIGN}/stats")
    row = console.tab.locator("table.data tbody tr", has_text=CAMPAIGN)
    figures = {
        name: row.locator(f'[data-figure="{name}"]').inner_text()
        for name in ("issued", "holdout", "redeemed", "expired")
    }
    assert stats["coupons"]["issued"] > 0  # the demo's offer traffic is there
    assert figures == {
        "issued": f"{stats['coupons']['issued']:,}",
        "holdout": f"{stats['decisions']['holdout']:,}",
        "redeemed": f"{stats['coupons']['redeemed']:,}",
        "expired": f"{stats['coupons']['expired']:,}",
    }


def _campaign(console: Console, api: httpx.Client) -> None:
    stats = _get(api, f"/v1/campaigns/{CAMPAIGN}/stats")
    shown = dict(zip(_cells(console, ".figures dt"), _cells(console, ".figures dd"), strict=True))
    assert shown["Coupons issued"] == f"{stats['coupons']['issued']:,}"
    assert shown["Redeemed"] == f"{stats['coupons']['redeemed']:,}"
    assert shown["Held out"] == f"{stats['decisions']['holdout']:,}"
    given = stats["discount_given"]["total"]
    for currency, amount in given.items():
        assert shown[f"Discount given, {currency}"] == amount
    # the cumulative table's latest day is the stats' total
    console.tab.locator("details summary", has_text="The figures of each day").click()
    latest = console.tab.locator("table.daily tbody tr").first
    cells = [t.strip() for t in latest.locator("td").all_inner_texts()]
    assert cells[0] == f"{stats['coupons']['issued']:,}"
    assert cells[1] == f"{stats['decisions']['holdout']:,}"
    assert cells[2] == f"{stats['coupons']['redeemed']:,}"
    assert cells[3] == f"{stats['coupons']['expired']:,}"
    assert console.tab.locator("figure.chart svg").count() >= 3


def _segments(console: Console, api: httpx.Client) -> None:
    segments = _get(api, "/v1/segments")
    assert segments["users"] > 0
    for stage, n in segments["stages"].items():
        assert console.tab.locator(f'[data-stage="{stage}"]').inner_text() == f"{n:,}"
    for kind, n in segments["loyalty_types"].items():
        assert console.tab.locator(f'[data-type="{kind}"]').inner_text() == f"{n:,}"


def _loyalty(console: Console, api: httpx.Client) -> None:
    report = _get(api, "/v1/analytics/loyalty?period=month")
    assert report["periods"]
    for row in report["periods"]:
        line = console.tab.locator(f'tr[data-period="{row["period"]}"]')
        assert line.locator('[data-figure="orders"]').inner_text() == str(row["orders"])
        assert line.locator('[data-figure="customers_at_end"]').inner_text() == str(
            row["customers_at_end"]
        )
        retention = row["retention"]
        expected = "no figure" if retention is None else f"{retention:.4f}"
        assert line.locator('[data-figure="retention"]').inner_text() == expected


def _cohorts(console: Console, api: httpx.Client) -> None:
    matrix = _get(api, "/v1/analytics/cohorts")
    assert matrix["cohorts"]
    rows = console.tab.locator("table.heat tbody th").all_inner_texts()
    assert rows == [f"{c['cohort']} ({c['size']:,})" for c in matrix["cohorts"]]
    first = matrix["cohorts"][0]
    cells = console.tab.locator("table.heat tbody tr").first.locator("td").all_inner_texts()
    assert [c for c in cells if c] == [f"{s * 100:.1f}%" for s in first["share"] if s is not None]


def _recommendations(console: Console, api: httpx.Client) -> None:
    report = _get(api, "/v1/analytics/recommendations")
    groups = [g for g in report["groups"] if g["impressions"]]
    assert groups
    assert sum(g["clicks"] for g in groups) > 0
    cells = _cells(console, '#online [data-figure="impressions"]')
    assert cells == [f"{g['impressions']:,}" for g in groups]
    ctr = _cells(console, '#online [data-figure="ctr"]')
    assert [c.split(" ")[0] for c in ctr] == [f"{g['ctr']['estimate'] * 100:.1f}%" for g in groups]
    assert console.tab.locator("figure.chart").count() == 1  # the CTR per day


CHECKS = {
    "recommendations": _recommendations,
    "campaigns": _campaigns,
    "campaign": _campaign,
    "segments": _segments,
    "loyalty": _loyalty,
    "cohorts": _cohorts,
}


def test_create_and_pause_a_campaign_through_the_forms(console: Console, api: httpx.Client) -> None:
    campaign_id = f"browser-{uuid.uuid4().hex[:8]}"
    console.sign_in("marketing")
    console.open("/console/campaigns", name="campaigns")
    console.tab.click("text=New campaign")
    console.tab.click("text=Win back lapsed customers")
    assert "kind=win_back" in console.tab.url
    console.tab.fill("#f-campaign_id", campaign_id)
    console.tab.fill("#f-min_orders", "0")  # refused: at least one order
    console.tab.fill("#f-discount_percent", "15")
    console.tab.check('input[name="exclude_segments"][value="mercenary"]')
    console.tab.click("button:has-text('Create the campaign')")
    error = console.tab.locator("#f-min_orders-error")
    assert error.inner_text().startswith("min_orders:")
    assert console.tab.input_value("#f-discount_percent") == "15"  # nothing typed is lost
    assert console.tab.is_checked('input[name="exclude_segments"][value="mercenary"]')
    assert api.get(f"/v1/campaigns/{campaign_id}").status_code == 404  # nothing stored
    console.screenshot("campaign-new-refused")
    console.tab.fill("#f-min_orders", "3")
    console.tab.click("button:has-text('Create the campaign')")
    console.tab.wait_for_url(re.compile(rf".*/console/campaigns/{campaign_id}\?done=created"))
    created = _get(api, f"/v1/campaigns/{campaign_id}")
    assert created["status"] == "active"
    assert created["definition"]["kind"] == "win_back"
    assert created["definition"]["min_orders"] == 3
    assert created["definition"]["exclude_segments"] == ["mercenary"]
    console.tab.click("button:has-text('Pause')")
    console.tab.wait_for_url(re.compile(r".*done=paused"))
    assert "status: paused" in console.tab.locator(".campaign-head").inner_text()
    assert _get(api, f"/v1/campaigns/{campaign_id}")["status"] == "paused"
    console.tab.click("text=Archive…")
    console.tab.click(f"button:has-text('Archive {campaign_id}')")
    console.tab.wait_for_url(re.compile(r".*done=archived"))
    assert _get(api, f"/v1/campaigns/{campaign_id}")["status"] == "archived"
    history = _get(api, f"/v1/campaigns/{campaign_id}/history")["changes"]
    assert [c["action"] for c in history] == ["create", "pause", "archive"]
