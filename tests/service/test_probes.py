"""What the probes and /metrics tell a caller: a key for /metrics, no paths of this machine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifact import ModelStore
from service.settings import Settings

FRONTEND = "frontend-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
SCRAPER = "prometheus-scrape-key-0123"


def _client(model_dir: Path, tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        model_dir=model_dir,
        database_url=f"sqlite:///{tmp_path / 'recoffer.db'}",
        frontend_keys=[FRONTEND],
        admin_keys=[ADMIN],
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
        **overrides,
    )
    return TestClient(create_app(settings))


def test_metrics_need_a_metrics_or_admin_key_when_metrics_keys_are_set(
    small_model_root: Path, tmp_path: Path
) -> None:
    with _client(small_model_root, tmp_path, metrics_keys=[SCRAPER]) as c:
        missing = c.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "recoffer_" not in missing.text
        assert c.get("/metrics", headers={"X-API-Key": FRONTEND}).status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": SCRAPER + "x"}).status_code == 401
        for headers in (
            {"X-API-Key": SCRAPER},
            {"Authorization": f"Bearer {SCRAPER}"},  # Prometheus' authorization: credentials
            {"X-API-Key": ADMIN},
        ):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 200, headers
            assert "recoffer_http_request_duration_seconds" in r.text
        assert c.get("/healthz").status_code == 200  # the probes stay open
        assert c.get("/readyz").status_code == 200


def test_metrics_are_open_without_metrics_keys_and_show_the_process(
    small_model_root: Path, tmp_path: Path
) -> None:
    with _client(small_model_root, tmp_path) as c:
        text = c.get("/metrics").text
    assert "recoffer_model_info{" in text
    assert "process_resident_memory_bytes" in text  # the default process metrics, in-process
    assert "python_info{" in text
    assert "python_gc_collections_total" in text


def test_short_metrics_keys_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="metrics keys must be at least 16 characters"):
        Settings(frontend_keys=[FRONTEND], metrics_keys=["short"])


def test_readiness_names_no_absolute_path(small_model_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    current = store.current()
    assert current is not None
    (store.version_path(current) / "manifest.json").write_text("{}")  # the served version breaks
    with _client(root, tmp_path) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert f"RECOFFER_MODEL_DIR/versions/{current}" in detail, detail
    assert str(tmp_path) not in r.text
    assert str(root.resolve()) not in r.text


def test_the_model_routes_name_no_absolute_path_either(
    small_model_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    current = store.current()
    assert current is not None
    (store.version_path(current) / "manifest.json").write_text("{}")
    with _client(root, tmp_path) as c:
        described = c.get("/v1/model", headers={"X-API-Key": ADMIN})
        reloaded = c.post("/v1/model/reload", headers={"X-API-Key": ADMIN})
    assert described.status_code == 503
    assert reloaded.status_code == 409
    assert "nothing served yet" in reloaded.json()["detail"]
    for r in (described, reloaded):
        assert "RECOFFER_MODEL_DIR" in r.json()["detail"], r.text
        assert str(tmp_path) not in r.text
        assert str(root.resolve()) not in r.text


def test_readiness_detail_keeps_the_file_name_of_any_other_path(
    small_model_root: Path, tmp_path: Path
) -> None:
    with _client(small_model_root, tmp_path) as c:
        health = c.app.state.recoffer.health  # type: ignore[attr-defined]
        text = health.public("sqlite file /var/lib/shop/recoffer.db is locked (see /etc/x.conf)")
    assert text == "sqlite file recoffer.db is locked (see x.conf)"
