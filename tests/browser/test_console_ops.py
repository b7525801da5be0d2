"""Ops' pages in a real browser, signed in as admin: the models page shows the API's figures,
a model is rolled back through the confirm page, health says OK in words; each page fits a
phone and is timed (time to first render), and no request leaves the server."""

from __future__ import annotations

import time
from typing import Any

import httpx

from benchmarks.demo_console import KEYS

from .console import PHONE, Console

ADMIN = {"X-API-Key": KEYS["admin"]}


def _api(console: Console, path: str) -> Any:
    answer = httpx.get(f"{console.url}{path}", headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _fits_a_phone(console: Console) -> None:
    console.tab.set_viewport_size(PHONE)
    try:
        width = console.tab.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # wide tables scroll inside their box, not the page
    finally:
        console.tab.set_viewport_size({"width": 1280, "height": 900})


def test_the_models_page_shows_the_apis_versions_and_runs(console: Console) -> None:
    console.sign_in("admin")
    ms = console.open("/console/models", name="models (admin)")
    assert ms < 5_000  # a sanity bound; the figure is reported, not asserted
    api = _api(console, "/v1/model/versions")
    tab = console.tab
    assert tab.locator("#current").inner_text() == api["current"]
    assert tab.locator("#serving").inner_text() == api["serving"]
    assert tab.locator("#previous").inner_text() == (api["previous"] or "none")
    assert len(api["versions"]) >= 2  # the demo shop trains twice
    for version in api["versions"]:
        row = tab.locator(f'tr[id="v-{version["version"]}"]')
        for figures in version["figures"]:
            cell = row.locator(f'td[data-protocol="{figures["protocol"]}"] .figure')
            assert cell.inner_text() == f"{figures['test']['ndcg@10']:.4f}"
    runs = _api(console, "/v1/model/runs")["runs"]
    rows = tab.locator("#runs tbody tr")
    assert rows.count() == len(runs)
    for i, run in enumerate(runs):
        text = rows.nth(i).inner_text()
        assert f"{run['seconds']:.1f} s" in text
        assert (run["version"] or "—") in text
    console.screenshot("models")
    _fits_a_phone(console)
    console.screenshot("models", phone=True)


def test_the_health_page_says_ok_in_words(console: Console) -> None:
    console.sign_in("admin")
    ms = console.open("/console/health", name="health (admin)")
    assert ms < 5_000
    tab = console.tab
    assert "Database: OK" in tab.locator("#check-database h2").inner_text()
    served = _api(console, "/v1/model")["version"]
    model = tab.locator("#check-model").inner_text()
    assert "Model: OK" in model
    assert f"serving {served}" in model
    jobs = tab.locator("#jobs").inner_text()
    assert "Event tail\tOK" in jobs
    assert KEYS["admin"] not in tab.content()
    console.screenshot("health")
    _fits_a_phone(console)
    console.screenshot("health", phone=True)


def test_a_marketing_session_gets_403_on_the_ops_pages(console: Console) -> None:
    console.sign_in("marketing")
    for path in ("/console/models", "/console/models/rollback", "/console/health"):
        answer = console.tab.goto(f"{console.url}{path}")
        assert answer is not None
        assert answer.status == 403
        assert "needs role admin" in console.tab.locator(".problem").inner_text()


def test_rolling_back_a_model_through_the_confirm_page(console: Console) -> None:
    before = _api(console, "/v1/model/versions")
    current, previous = before["current"], before["previous"]
    assert previous is not None
    console.sign_in("admin")
    console.open("/console/models", name="models (admin)")
    console.tab.click("text=Roll back to")
    console.tab.wait_for_url(f"{console.url}/console/models/rollback")
    ms = console.open("/console/models/rollback", name="rollback confirm (admin)")
    assert ms < 5_000
    assert console.tab.locator("#target").inner_text() == previous
    assert "What changes" in console.tab.content()
    console.screenshot("rollback")
    _fits_a_phone(console)
    console.tab.click("button.danger")
    notice = console.tab.locator(".notice").inner_text()
    assert f"rolled back from {current} to {previous}" in notice
    assert console.tab.locator("#current").inner_text() == previous
    console.screenshot("rollback-done")
    deadline = time.monotonic() + 10  # the other workers within their reload interval
    while _api(console, "/v1/model")["version"] != previous:
        assert time.monotonic() < deadline, "the served model did not change"
        time.sleep(0.2)
    assert _api(console, "/v1/model/versions")["current"] == previous
