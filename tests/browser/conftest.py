"""The demo shop on a real server, and a Chromium tab on its console that records every request.

Built once per session (about half a minute: the demo shop, two trainings, the database, some
offer traffic); each test gets a fresh browser profile, and fails if its tab sent a request to
any host but the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.demo_console import (
    DemoShop,
    build_demo_shop,
    seed_feedback,
    seed_offers,
    serve_demo,
)
from benchmarks.harness import BROWSER_ARGS, Server

from .console import DESKTOP, TIMINGS, Console, shots_dir


@pytest.fixture(scope="session")
def demo_shop(tmp_path_factory: pytest.TempPathFactory, chromium: Path) -> DemoShop:
    return build_demo_shop(tmp_path_factory.mktemp("demo-console"))


@pytest.fixture(scope="session")
def demo_server(demo_shop: DemoShop) -> Iterator[Server]:
    with serve_demo(demo_shop, log=demo_shop.workdir / "server.log") as server:
        seed_offers(server.url, demo_shop)
        seed_feedback(server.url, demo_shop)  # the Recommendations page's figures (issue 14)
        yield server


@pytest.fixture
def console(chromium: Path, demo_server: Server, tmp_path: Path) -> Iterator[Console]:
    """A tab of a fresh browser profile on the demo console; no request may leave the server."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(chromium),
            args=BROWSER_ARGS,
            headless=True,
            viewport={"width": DESKTOP["width"], "height": DESKTOP["height"]},
        )
        try:
            tab = Console(context.new_page(), demo_server.url, shots_dir(tmp_path))
            context.on("request", lambda request: tab.requests.append(request))
            yield tab
            assert tab.outside() == [], "requests to another host"
        finally:
            context.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not TIMINGS:
        return
    target = os.environ.get("RECOFFER_CONSOLE_TIMINGS")
    if target:
        Path(target).write_text(json.dumps(TIMINGS, indent=2, sort_keys=True))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Each console page's time to first render, as measured in this run."""
    if not TIMINGS:
        return
    terminalreporter.section("console pages: time to first render (ms)")
    for name, entry in sorted(TIMINGS.items()):
        shown = ", ".join(f"{ms:.0f}" for ms in entry["ms"])
        terminalreporter.write_line(f"{name:<40} {entry['path']:<32} {shown}")
