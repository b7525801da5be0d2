"""The Experiments page in a real browser: with no experiment running, then with one (its arms
and the API's figures), stopped through the confirm page as admin; each view fits a phone and
is timed, and no request leaves the server."""

from __future__ import annotations

from typing import Any

import httpx

from benchmarks.demo_console import KEYS

from .console import PHONE, Console

ADMIN = {"X-API-Key": KEYS["admin"]}


def _api(console: Console, method: str, path: str, **kwargs: Any) -> Any:
    answer = httpx.request(method, f"{console.url}{path}", headers=ADMIN, timeout=60, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json()


def _fits_a_phone(console: Console) -> None:
    console.tab.set_viewport_size(PHONE)
    try:
        width = console.tab.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
    finally:
        console.tab.set_viewport_size({"width": 1280, "height": 900})


def test_the_experiments_page_without_and_with_an_experiment(console: Console) -> None:
    for running in _api(console, "GET", "/v1/experiments")["experiments"]:
        if running["status"] == "running":  # left by an earlier test: start from none
            _api(console, "POST", f"/v1/experiments/{running['id']}/stop")
    console.sign_in("marketing")
    console.tab.click("header nav >> text=Experiments")
    console.tab.wait_for_url(f"{console.url}/console/experiments")
    console.open("/console/experiments", name="experiments, none running (marketing)")
    assert "No experiment is running" in console.tab.locator("#none-running").inner_text()
    _fits_a_phone(console)

    versions = _api(console, "GET", "/v1/model/versions")
    candidate = next(v["version"] for v in versions["versions"] if not v["current"])
    started = _api(
        console,
        "POST",
        "/v1/experiments",
        json={"name": "browser check", "candidate_version": candidate, "share": 0.5},
    )
    for i in range(40):  # some traffic in both arms (lists served; no impressions reported)
        httpx.get(
            f"{console.url}/v1/users/u{i}/recommendations",
            headers={"X-API-Key": KEYS["frontend"]},
            timeout=30,
        )
    console.open("/console/experiments", name="experiments, one running (marketing)")
    assert console.tab.locator("#running").inner_text() == "browser check"
    assert console.tab.locator("#arms tbody tr").count() == 2
    console.screenshot("experiments")
    _fits_a_phone(console)

    console.sign_in("admin")
    console.open(f"/console/experiments/{started['id']}", name="experiment (admin)")
    api = _api(console, "GET", f"/v1/experiments/{started['id']}")
    assert console.tab.locator("#status").inner_text() == "running"
    assert console.tab.locator("#candidate").inner_text() == candidate
    guard = console.tab.locator("#guard").inner_text()
    assert f"{api['results']['guard']['min_impressions']:,}" in guard
    console.screenshot("experiment")
    _fits_a_phone(console)
    console.tab.click("text=Stop…")
    console.tab.wait_for_url(f"{console.url}/console/experiments/{started['id']}/stop")
    console.tab.click("button[type=submit].danger")
    console.tab.wait_for_load_state("load")
    assert console.tab.locator("#status").inner_text() == "stopped"
    assert _api(console, "GET", f"/v1/experiments/{started['id']}")["status"] == "stopped"
