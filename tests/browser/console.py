"""What the console's browser tests share: signing in through the form, opening a page and
timing its first render, screenshots, and the pages' timings for the report.

Screenshots go to ``RECOFFER_CONSOLE_SHOTS`` when it is set (``benchmarks/console_pages.py``
sets it to ``docs/img``), else to the test's temporary directory: the tests never change the
project's files. Each page's time to first render is collected in :data:`TIMINGS`; the session
prints them at its end and, with ``RECOFFER_CONSOLE_TIMINGS`` set, writes them to that JSON file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.demo_console import KEYS
from benchmarks.harness import requests_outside

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}
# page -> (role, milliseconds to first contentful paint, ... one per visit)
TIMINGS: dict[str, dict[str, Any]] = {}


@dataclass
class Console:
    """One browser tab on the demo console, and every request it made."""

    tab: Any  # playwright.sync_api.Page
    url: str  # the server's base URL
    shots: Path
    requests: list[Any] = field(default_factory=list)
    role: str | None = None

    def sign_in(self, role: str) -> None:
        """Sign in with the key of ``role`` through the form; lands on the overview."""
        self.tab.goto(f"{self.url}/console/sign-in")
        self.tab.fill("#key", KEYS[role])
        self.tab.click("button[type=submit]")
        self.tab.wait_for_url(f"{self.url}/console")
        self.role = role

    def open(self, path: str, *, name: str | None = None) -> float:
        """Go to ``path``, wait for it to load and return its time to first render in ms
        (first contentful paint, from the browser's own paint timing), recorded under
        ``name`` in :data:`TIMINGS`."""
        answer = self.tab.goto(f"{self.url}{path}", wait_until="load")
        assert answer is not None
        assert answer.status == 200, f"{path}: {answer.status}"
        paint = self.tab.evaluate(
            "() => { const p = performance.getEntriesByName('first-contentful-paint')[0];"
            " return p ? p.startTime : performance.getEntriesByType('navigation')[0]"
            ".responseEnd; }"
        )
        ms = float(paint)
        entry = TIMINGS.setdefault(name or path, {"path": path, "role": self.role, "ms": []})
        entry["ms"].append(round(ms, 1))
        return ms

    def screenshot(self, name: str, *, phone: bool = False) -> Path:
        """A full-page screenshot ``console-<name>.png`` (phone width when asked)."""
        if phone:
            self.tab.set_viewport_size(PHONE)
        path = self.shots / f"console-{name}{'-phone' if phone else ''}.png"
        self.tab.screenshot(path=str(path), full_page=True)
        if phone:
            self.tab.set_viewport_size(DESKTOP)
        return path

    def outside(self) -> list[str]:
        """Requests that went anywhere but the server."""
        return requests_outside(self.requests, self.url)


def shots_dir(default: Path) -> Path:
    chosen = os.environ.get("RECOFFER_CONSOLE_SHOTS")
    path = Path(chosen) if chosen else default
    path.mkdir(parents=True, exist_ok=True)
    return path
