"""The console's Experiments pages: the list with none and with one, one experiment's arms
with their intervals, the sample-ratio check and the guard; stop and promote behind a confirm
page (admin), read-only for marketing."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from service.app import create_app
from service.artifact import ModelStore
from service.tables import rec_clicks, rec_impressions
from training.data.formats import Purchases
from training.models import ModelParams
from training.pipeline import TrainConfig, run

from .pages import KEYS, console_settings, sign_in

FAST = ModelParams(factors=8, iterations=5, threads=1)
ADMIN = {"X-API-Key": KEYS["admin"]}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tiny_purchases: Purchases) -> Path:
    root = tmp_path_factory.mktemp("experiment-pages")
    for _ in range(2):
        run(TrainConfig(model_dir=root, params=FAST, force=True), purchases=tiny_purchases)
    return root


@pytest.fixture
def console(tmp_path: Path, two_versions: Path) -> Iterator[TestClient]:
    shutil.copytree(two_versions, tmp_path / "models")
    settings = console_settings(tmp_path, experiment_poll_seconds=0, experiment_guard_seconds=0)
    with TestClient(create_app(settings)) as client:
        yield client


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _start(console: TestClient, tmp_path: Path) -> dict[str, Any]:
    previous = ModelStore(tmp_path / "models").previous()
    answer = console.post(
        "/v1/experiments",
        json={"name": "older model", "candidate_version": previous, "share": 0.5},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _show(console: TestClient, experiment_id: str, arm: str, shown: int, clicked: int) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [
        {
            "request_id": f"{arm}-{i}",
            "user_id": f"{arm}-u{i % 20}",
            "item_id": "i1",
            "position": 0,
            "placement": "home",
            "model_version": "v",
            "recipe": "all",
            "source": "model",
            "experiment_id": experiment_id,
            "arm": arm,
            "served_at": now,
            "ts": now,
        }
        for i in range(shown)
    ]
    engine = console.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(insert(rec_impressions), rows)
        if clicked:
            conn.execute(insert(rec_clicks), rows[:clicked])


def test_the_menu_leads_to_a_page_that_says_there_is_no_experiment(console: TestClient) -> None:
    sign_in(console, "marketing")
    overview = console.get("/console").text
    assert 'href="/console/experiments"' in overview
    page = console.get("/console/experiments")
    assert page.status_code == 200
    assert "No experiment is running" in _text(page.text)
    assert 'id="no-experiments"' in page.text


def test_a_running_experiment_shows_its_arms_with_the_apis_figures(
    console: TestClient, tmp_path: Path
) -> None:
    started = _start(console, tmp_path)
    _show(console, started["id"], "control", 200, 20)
    _show(console, started["id"], "candidate", 180, 27)
    api = console.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()["results"]
    sign_in(console, "marketing")
    listing = console.get("/console/experiments").text
    assert f'href="/console/experiments/{started["id"]}" id="running"' in listing
    page = console.get(f"/console/experiments/{started['id']}")
    assert page.status_code == 200
    html = page.text
    for arm in ("control", "candidate"):
        row = html.split(f'id="arm-{arm}"', 1)[1].split("</tr>", 1)[0]
        ctr = api["arms"][arm]["ctr"]
        assert f"{ctr['estimate']:.4f}" in row
        assert f"{ctr['low']:.4f}" in row
        assert f"{ctr['high']:.4f}" in row
    difference = api["ctr"]["difference"]
    assert f"{difference['low']:.4f}" in html.split('id="ctr-difference"', 1)[1]
    srm = _text(html.split('id="srm"', 1)[1].split("</dd>", 1)[0])
    assert f"{api['srm']['observed_share']:.3f}" in srm
    assert "ok" in srm
    assert "waiting for 1,000 impressions per arm" in _text(html)
    assert "Stop…" not in html  # marketing reads only
    assert "/stop" not in html


def test_stopping_through_the_confirm_page(console: TestClient, tmp_path: Path) -> None:
    started = _start(console, tmp_path)
    csrf = sign_in(console, "admin")
    detail = console.get(f"/console/experiments/{started['id']}").text
    assert f'href="/console/experiments/{started["id"]}/stop"' in detail
    confirm = console.get(f"/console/experiments/{started['id']}/stop")
    assert confirm.status_code == 200
    assert "Stop the experiment" in confirm.text
    forged = console.post(f"/console/experiments/{started['id']}/stop", data={"csrf": "forged"})
    assert forged.status_code == 403
    state = console.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert state["status"] == "running"
    done = console.post(f"/console/experiments/{started['id']}/stop", data={"csrf": csrf})
    assert done.status_code == 200
    assert 'id="status">stopped<' in done.text
    again = console.post(f"/console/experiments/{started['id']}/stop", data={"csrf": csrf})
    assert again.status_code == 409
    assert "ended already" in again.text


def test_promoting_through_the_confirm_page_switches_current(
    console: TestClient, tmp_path: Path
) -> None:
    started = _start(console, tmp_path)
    store = ModelStore(tmp_path / "models")
    before = store.current()
    csrf = sign_in(console, "admin")
    confirm = console.get(f"/console/experiments/{started['id']}/promote")
    assert confirm.status_code == 200
    assert f'id="target">{started["candidate_version"]}<' in confirm.text
    done = console.post(f"/console/experiments/{started['id']}/promote", data={"csrf": csrf})
    assert done.status_code == 200, done.text
    assert 'id="status">promoted<' in done.text
    assert store.current() == started["candidate_version"] != before


def test_marketing_cannot_stop_or_promote(console: TestClient, tmp_path: Path) -> None:
    started = _start(console, tmp_path)
    csrf = sign_in(console, "marketing")
    for action in ("stop", "promote"):
        url = f"/console/experiments/{started['id']}/{action}"
        assert console.get(url).status_code == 403
        assert console.post(url, data={"csrf": csrf}).status_code == 403
    state = console.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert state["status"] == "running"


def test_an_unknown_experiment_is_a_404_page(console: TestClient) -> None:
    sign_in(console, "admin")
    for path in ("/console/experiments/exp_nonesuch", "/console/experiments/exp_nonesuch/stop"):
        answer = console.get(path)
        assert answer.status_code == 404
        assert "no experiment &#39;exp_nonesuch&#39;" in answer.text  # escaped
        assert "<html" in answer.text.lower()
