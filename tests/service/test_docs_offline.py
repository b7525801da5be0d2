"""/docs and /redoc work without the internet: every file they load comes from the server.

A real server (``python -m service``) and Debian's headless Chromium driven by Playwright; every
request the pages make is recorded (with no network here, one that left would fail anyway: the
test looks at the attempts). Swagger UI's "Authorize" sends the key of the declared
security scheme, and "Try it out" then gets a 200.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness import BROWSER_ARGS, Server, requests_outside

ROOT = Path(__file__).resolve().parents[2]
KEY = "frontend-key-0123456789"


@pytest.fixture(scope="module")
def server(small_model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    where = tmp_path_factory.mktemp("docs")
    env = {
        "PYTHONPATH": str(ROOT),
        "RECOFFER_MODEL_DIR": str(small_model_root),
        "RECOFFER_DATABASE_URL": f"sqlite:///{where / 'recoffer.db'}",
        "RECOFFER_FRONTEND_KEYS": KEY,
        "RECOFFER_HOST": "127.0.0.1",
        "RECOFFER_ACCESS_LOG": "false",
    }
    command = [sys.executable, "-m", "service"]
    with Server(env, command=lambda port: [*command, "--port", str(port)]) as running:
        yield running


@pytest.fixture
def page(chromium: Path, tmp_path: Path) -> Iterator[tuple[Any, list[Any]]]:
    """A page of a fresh browser profile, and every request made in it."""
    from playwright.sync_api import sync_playwright

    requests: list[Any] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(chromium),
            args=BROWSER_ARGS,
            headless=True,
        )
        context.on("request", lambda request: requests.append(request))
        try:
            yield context.new_page(), requests
        finally:
            context.close()


def _operations(server: Server) -> list[dict[str, Any]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    return [
        {"path": path, "method": method, **operation}
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    ]


def _outside(requests: list[Any], server: Server) -> list[str]:
    return requests_outside(requests, server.url)


def test_swagger_ui_shows_every_operation_and_authorizes_with_a_key(
    server: Server, page: tuple[Any, list[Any]]
) -> None:
    tab, requests = page
    tab.goto(f"{server.url}/docs", wait_until="networkidle")
    tab.wait_for_selector(".opblock", timeout=30_000)
    shown = {
        (
            block.query_selector(".opblock-summary-path").get_attribute("data-path"),
            block.query_selector(".opblock-summary-method").inner_text().lower(),
        )
        for block in tab.query_selector_all(".opblock")
    }
    expected = {(o["path"], o["method"]) for o in _operations(server)}
    assert shown == expected

    tab.click("button.authorize")
    first_scheme = tab.locator(".modal-ux .auth-container").first
    assert "X-API-Key" in first_scheme.inner_text()
    first_scheme.locator("input").fill(KEY)
    first_scheme.locator("button.authorize").click()
    tab.click(".modal-ux button.close-modal")
    operation = tab.locator("#operations-model-get_model")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip().startswith("200")
    sent = [r for r in requests if r.url == f"{server.url}/v1/model"]
    assert sent
    assert sent[-1].headers.get("x-api-key") == KEY

    assert any(r.url.endswith("/openapi.json") for r in requests)
    assert _outside(requests, server) == []
    assert [r.url for r in requests if r.failure == "csp"] == []  # nothing even attempted


def test_redoc_shows_every_operation_without_fonts_or_scripts_from_elsewhere(
    server: Server, page: tuple[Any, list[Any]]
) -> None:
    tab, requests = page
    console: list[str] = []
    tab.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    tab.goto(f"{server.url}/redoc", wait_until="networkidle")
    for operation in _operations(server):
        # ReDoc names each operation's section after its operationId
        section = tab.locator(f'[id$="operation/{operation["operationId"]}"]')
        section.first.wait_for(state="attached", timeout=30_000)
    text = tab.inner_text("body")
    for operation in _operations(server):
        assert operation["summary"] in text
    assert any(r.url.endswith("/openapi.json") for r in requests)
    assert _outside(requests, server) == []
    # ReDoc's side menu asks for its makers' logo: the page's CSP stops it in the browser
    blocked = [r for r in requests if r.failure == "csp"]
    assert [r.resource_type for r in blocked] == ["image"]
    assert all("Content Security Policy" in line for line in console if line.startswith("error"))
