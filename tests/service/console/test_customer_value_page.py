"""The console's customer value page: the latest `recoffer clv --write`, as the API gives it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

from fastapi.testclient import TestClient

from service.analytics.value import CustomerValue, Run, write

from .pages import KEYS, sign_in

M = {"X-API-Key": KEYS["marketing"]}


def test_without_a_prediction_the_page_says_how_to_make_one(console: TestClient) -> None:
    sign_in(console, "marketing")
    page = console.get("/console/customer-value")
    assert page.status_code == 200
    assert "No prediction yet" in page.text
    assert "recoffer clv --database-url URL --write" in page.text


def test_the_page_shows_the_apis_summary_and_top_customers(console: TestClient) -> None:
    state = console.app.state.recoffer  # type: ignore[attr-defined]
    for n in range(30):
        state.repository.upsert_user(f"u{n:02d}")
    at = datetime(2026, 11, 30, tzinfo=UTC)
    values = [
        CustomerValue(f"u{n:02d}", 0.5 + n / 10, 0.8, Decimal("12.50"), Decimal(f"{n * 3}.25"))
        for n in range(30)
    ]
    write(state.repository.engine, values, Run("EUR", 90, at, at))
    sign_in(console, "admin")  # admin sees marketing's pages too
    page = console.get("/console/customer-value")
    assert page.status_code == 200
    api = console.get("/v1/analytics/customer-value", params={"limit": 20}, headers=M).json()
    assert f"EUR {api['total']}" in page.text
    assert f"EUR {api['mean']}" in page.text
    shown = re.findall(r'<tr data-user="([^"]+)">', page.text)
    assert shown == [c["user_id"] for c in api["top"]]
    assert shown[0] == "u29"
    values_shown = re.findall(r'data-figure="predicted_value">([^<]+)<', page.text)
    assert values_shown == [c["predicted_value"] for c in api["top"]]
    assert 'href="/console/customer-value" aria-current="page"' in page.text
