"""The console's Recommendations page (issue 14): the API's figures per version, recipe,
source and placement, with intervals, and the CTR per day; marketing and admin only."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.feedback.token import ServedList
from service.state import AppState

from .pages import KEYS, console_settings, sign_in


def test_the_page_shows_the_apis_figures_for_marketing_and_admin(tmp_path: Path) -> None:
    with TestClient(create_app(console_settings(tmp_path))) as client:
        state: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
        sign_in(client, "marketing")
        empty = client.get("/console/recommendations")
        assert empty.status_code == 200
        assert "No impression yet" in empty.text
        assert 'href="/console/recommendations"' in empty.text  # in the menu
        served = ServedList("", "v7", "novel", ("model", "popular"), state.clock())
        lid = state.recommendations.list_ids.issue("r1", "u1", served)
        events = [
            {
                "type": "impression",
                "user_id": "u1",
                "item_id": item,
                "request_id": lid,
                "placement": "home",
                "position": p,
            }
            for p, item in enumerate(("a", "b"))
        ]
        events.append({"type": "click", "user_id": "u1", "item_id": "a", "request_id": lid})
        headers = {"X-API-Key": KEYS["frontend"]}
        assert (
            client.post("/v1/events", json={"events": events}, headers=headers).status_code == 200
        )
        html = client.get("/console/recommendations").text
        rows = re.findall(r'<tr data-source="(\w+)">(.*?)</tr>', html, re.S)
        assert [source for source, _ in rows] == ["model", "popular"]
        model = rows[0][1]
        assert "v7" in model
        assert "novel" in model
        assert "home" in model
        assert re.search(r'data-figure="ctr">100.0% \(\d+\.\d% to 100.0%\)', model)
        assert re.search(r'data-figure="ctr">0.0% \(0.0% to \d+\.\d%\)', rows[1][1])
        assert "Click-through rate per UTC day" in html
        assert "<svg" in html
    with TestClient(create_app(console_settings(tmp_path / "b"))) as client:
        sign_in(client, "admin")
        assert client.get("/console/recommendations").status_code == 200
