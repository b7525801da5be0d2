"""What the console tests share: one key per role, settings on a temporary SQLite database,
signing in, reading a form's hidden fields."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.settings import Settings

KEYS = {
    "frontend": "frontend-key-0123456789",
    "marketing": "marketing-key-0123456789",
    "admin": "admin-key-0123456789abc",
}


def console_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_dir": tmp_path / "models",
        "database_url": f"sqlite:///{tmp_path / 'recoffer.db'}",
        "frontend_keys": [KEYS["frontend"]],
        "marketing_keys": [KEYS["marketing"]],
        "admin_keys": [KEYS["admin"]],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "offer_metrics_seconds": 0,
        "access_log": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def hidden(html: str, name: str) -> str:
    """The value of a form's hidden field."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return found.group(1)


def sign_in(client: TestClient, role: str) -> str:
    """Sign ``client`` in with the key of ``role``; returns the session's CSRF token."""
    form = client.get("/console/sign-in")
    answer = client.post(
        "/console/sign-in",
        data={"key": KEYS[role], "csrf": hidden(form.text, "csrf"), "next": "/console"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    overview = client.get("/console")
    assert overview.status_code == 200, overview.text
    return hidden(overview.text, "csrf")
