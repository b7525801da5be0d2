"""Campaigns managed at run time (issue 12, item 5), on SQLite and on PostgreSQL.

Create, change, pause, resume and archive through the API; the 422s of a bad definition; the
change log; versions written exactly once under concurrency; the campaigns file synced in and
read-only; a change made through one app applied by another on the same database within a
poll; and the definition version each decision records.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.activity.repository import Repository
from service.app import create_app
from service.db import make_engine, migrate
from service.errors import CampaignVersionConflict
from service.offers.campaigns import Campaign, load_campaigns
from service.offers.repository.store import CampaignRepository
from service.offers.store import CampaignStore
from service.settings import Settings
from service.tables import campaign_changes, offer_decisions

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}
ACTOR = f"marketing:{hashlib.sha256(MARKETING.encode()).hexdigest()[:12]}"
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BUILT_IN = "new_user_high_intent"
WIN_BACK = {"campaign_id": "come_back", "kind": "win_back", "min_orders": 3}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_client(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "reload_interval_seconds": 0,
        "event_poll_seconds": 0.05,
        "offer_metrics_seconds": 0,
        "campaign_poll_seconds": 0,
        "access_log": False,
    }
    return TestClient(create_app(Settings(**{**options, **overrides}), clock=Clock(T0)))


@pytest.fixture
def client(small_model_root: Path, database_url: str) -> Iterator[TestClient]:
    with make_client(small_model_root, database_url) as c:
        yield c


def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def _history(client: TestClient, campaign_id: str) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = _ok(
        client.get(f"/v1/campaigns/{campaign_id}/history", headers=M)
    )["changes"]
    return changes


def _hesitating(client: TestClient, user_id: str, views: int = 11) -> None:
    start = T0 - timedelta(hours=2)
    _ok(client.put(f"/v1/users/{user_id}", json={"signed_up_at": start.isoformat()}, headers=F))
    events = [
        {
            "user_id": user_id,
            "type": "view",
            "item_id": f"i{n + 1:05d}",
            "timestamp": (start + timedelta(minutes=n + 1)).isoformat(),
        }
        for n in range(views)
    ]
    _ok(client.post("/v1/events", json={"events": events}, headers=F))


def _evaluate(client: TestClient, user_id: str, campaign_id: str = BUILT_IN) -> dict[str, Any]:
    body = {"user_id": user_id, "campaign_id": campaign_id}
    return _ok(client.post("/v1/offers/evaluate", json=body, headers=F))


# --- the API ---------------------------------------------------------------------------------


def test_a_campaign_is_created_read_and_listed_with_its_version(client: TestClient) -> None:
    made = _ok(client.post("/v1/campaigns", json=WIN_BACK, headers=M), 201)
    assert made["version"] == 1
    assert made["status"] == "active"
    assert made["source"] == "api"
    assert made["definition"]["min_orders"] == 3
    assert made["definition"]["lapse_days"] == 90  # the defaults, as the file's campaigns
    got = _ok(client.get("/v1/campaigns/come_back", headers=M))
    assert got == made
    listed = {c["campaign_id"]: c for c in _ok(client.get("/v1/campaigns", headers=M))["campaigns"]}
    assert list(listed) == [BUILT_IN, "come_back"]  # the built-in one (file order) first
    assert listed[BUILT_IN]["source"] == "default"
    assert listed[BUILT_IN]["version"] == 1
    (change,) = _history(client, "come_back")
    assert change["action"] == "create"
    assert change["version"] == 1
    assert change["actor"] == ACTOR
    assert change["definition"] == made["definition"]
    again = client.post("/v1/campaigns", json=WIN_BACK, headers=M)
    assert again.status_code == 409
    assert again.json()["error"] == "campaign_exists"
    assert client.post("/v1/campaigns", json=WIN_BACK, headers=F).status_code == 403
    assert client.get("/v1/campaigns/nope", headers=M).status_code == 404
    assert client.get("/v1/campaigns/nope/history", headers=M).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**WIN_BACK, "discount_percent": 0}, "discount_percent"),
        ({**WIN_BACK, "colour": "red"}, "colour"),
        ({**WIN_BACK, "kind": "flash_sale"}, "kind"),
        ({"kind": "win_back"}, "campaign_id"),
        ({**WIN_BACK, "campaign_id": "Bad Id"}, "campaign_id"),
        ({**WIN_BACK, "max_per_day": -1}, "max_per_day"),
    ],
)
def test_a_bad_definition_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/campaigns", json=body, headers=M)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()
    assert client.get("/v1/campaigns/come_back", headers=M).status_code == 404


def test_a_field_of_another_kind_is_refused_like_in_the_file(client: TestClient) -> None:
    r = client.post("/v1/campaigns", json={**WIN_BACK, "min_views": 5}, headers=M)
    assert r.status_code == 422
    assert "min_views: not a field of kind 'win_back'" in r.json()["detail"][0]["message"]


def test_a_bad_change_is_a_422_and_writes_nothing(client: TestClient) -> None:
    _ok(client.post("/v1/campaigns", json=WIN_BACK, headers=M), 201)
    for body, field in [
        ({"discount_percent": 250}, "discount_percent"),
        ({"kind": "birthday"}, "kind"),
        ({"campaign_id": "other"}, "campaign_id"),
        ({"lapse_days": "soon"}, "lapse_days"),
        ({"nonsense": 1}, "nonsense"),
    ]:
        r = client.patch("/v1/campaigns/come_back", json=body, headers=M)
        assert r.status_code == 422, (body, r.text)
        assert field in [d["field"] for d in r.json()["detail"]], (body, r.json())
    assert client.patch("/v1/campaigns/come_back", json=[1], headers=M).status_code == 422
    r = client.patch("/v1/campaigns/come_back?expected_version=0", json={}, headers=M)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "expected_version"
    assert _ok(client.get("/v1/campaigns/come_back", headers=M))["version"] == 1
    assert len(_history(client, "come_back")) == 1


def test_changes_pause_resume_archive_keep_a_trail(client: TestClient) -> None:
    _ok(client.post("/v1/campaigns", json=WIN_BACK, headers=M), 201)
    changed = _ok(client.patch("/v1/campaigns/come_back", json={"min_orders": 4}, headers=M))
    assert changed["version"] == 2
    assert changed["definition"]["min_orders"] == 4
    same = _ok(client.patch("/v1/campaigns/come_back", json={"min_orders": 4}, headers=M))
    assert same["version"] == 2  # nothing changed: no new version
    paused = _ok(client.post("/v1/campaigns/come_back/pause", headers=M))
    assert (paused["status"], paused["version"], paused["active_now"]) == ("paused", 3, False)
    assert _ok(client.post("/v1/campaigns/come_back/pause", headers=M))["version"] == 3
    resumed = _ok(client.post("/v1/campaigns/come_back/resume?expected_version=3", headers=M))
    assert (resumed["status"], resumed["version"]) == ("active", 4)
    archived = _ok(client.post("/v1/campaigns/come_back/archive", headers=M))
    assert (archived["status"], archived["version"]) == ("archived", 5)
    for r in (
        client.patch("/v1/campaigns/come_back", json={"min_orders": 5}, headers=M),
        client.post("/v1/campaigns/come_back/resume", headers=M),
        client.post("/v1/campaigns/come_back/pause", headers=M),
    ):
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "campaign_archived"
    trail = _history(client, "come_back")
    assert [(c["version"], c["action"], c["status"]) for c in trail] == [
        (1, "create", "active"),
        (2, "update", "active"),
        (3, "pause", "paused"),
        (4, "resume", "active"),
        (5, "archive", "archived"),
    ]
    assert [c["definition"]["min_orders"] for c in trail] == [3, 4, 4, 4, 4]
    assert {c["actor"] for c in trail} == {ACTOR}
    page = _ok(client.get("/v1/campaigns/come_back/history?after=3&limit=1", headers=M))
    assert [c["version"] for c in page["changes"]] == [4]
    assert page["next_after"] == 4  # a full page: there may be more
    last = _ok(client.get("/v1/campaigns/come_back/history?after=4&limit=5", headers=M))
    assert [c["version"] for c in last["changes"]] == [5]
    assert last["next_after"] is None
    # archived: decides nothing, its stats stay readable
    assert _evaluate(client, "u1", "come_back")["reasons"][:1] == ["campaign_inactive"]
    stats = _ok(client.get("/v1/campaigns/come_back/stats", headers=M))
    assert stats["definition_version"] == 5
    run = client.post("/v1/campaigns/come_back/run", headers=M)
    assert run.status_code == 409
    reused = client.post("/v1/campaigns", json=WIN_BACK, headers=M)  # an id is never reused
    assert (reused.status_code, reused.json()["error"]) == (409, "campaign_exists")
    assert "was archived" in str(reused.json()["detail"])


def test_a_stale_expected_version_is_a_409(client: TestClient) -> None:
    _ok(client.post("/v1/campaigns", json=WIN_BACK, headers=M), 201)
    _ok(
        client.patch(
            "/v1/campaigns/come_back?expected_version=1", json={"min_orders": 4}, headers=M
        )
    )
    r = client.patch(
        "/v1/campaigns/come_back?expected_version=1", json={"min_orders": 5}, headers=M
    )
    assert r.status_code == 409
    assert r.json()["error"] == "campaign_version_conflict"
    assert "version 2" in r.json()["detail"]
    r = client.post("/v1/campaigns/come_back/pause?expected_version=1", headers=M)
    assert r.status_code == 409
    assert r.json()["error"] == "campaign_version_conflict"
    assert _ok(client.get("/v1/campaigns/come_back", headers=M))["definition"]["min_orders"] == 4


# --- exactly once under concurrency ----------------------------------------------------------


def _stores(url: str, n: int) -> list[CampaignStore]:
    """``n`` stores on engines of their own, like replicas: the file's campaigns synced."""
    out = []
    for _ in range(n):
        engine = make_engine(url, timeout_seconds=30, pool_size=10)
        repository = CampaignRepository(Repository(engine, lambda: T0))
        store = CampaignStore(repository, lambda: T0, file_campaigns=load_campaigns(None))
        out.append(store)
    migrate(out[0].repository.engine)
    return out


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except CampaignVersionConflict as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_two_changes_from_one_version_one_wins(database_url: str) -> None:
    stores = _stores(database_url, 2)
    try:
        stores[0].create(Campaign.model_validate(WIN_BACK), "test")
        n = 8
        results = _race(
            [
                functools.partial(
                    stores[i % 2].update,
                    "come_back",
                    {"min_orders": 10 + i},
                    f"actor{i}",
                    expected_version=1,
                )
                for i in range(n)
            ]
        )
        won = [r for r in results if not isinstance(r, Exception)]
        lost = [r for r in results if isinstance(r, CampaignVersionConflict)]
        assert len(won) == 1
        assert len(lost) == n - 1
        assert won[0].stored.version == 2
        trail = stores[1].history("come_back")
        assert [c.version for c in trail] == [1, 2]
        assert trail[1].definition["min_orders"] == won[0].definition["min_orders"]
        # without an expected version every change lands, each on a version of its own
        results = _race(
            [
                functools.partial(stores[i % 2].update, "come_back", {"max_total": 100 + i}, "a")
                for i in range(n)
            ]
        )
        assert not any(isinstance(r, Exception) for r in results)
        trail = stores[0].history("come_back")
        assert [c.version for c in trail] == list(range(1, n + 3))
        assert sorted(c.definition["max_total"] for c in trail[2:]) == [100 + i for i in range(n)]
        assert stores[0].get("come_back").stored.version == n + 2
    finally:
        for s in stores:
            s.repository.engine.dispose()


def test_replicas_starting_together_sync_the_file_once(database_url: str) -> None:
    stores = _stores(database_url, 4)
    try:
        _race([s.refresh for s in stores])
        for s in stores:
            assert s.get(BUILT_IN).stored.version == 1
        assert len(stores[0].history(BUILT_IN)) == 1
        engine = stores[0].repository.engine
        with engine.connect() as conn:
            assert conn.execute(select(campaign_changes.c.version)).scalars().all() == [1]
    finally:
        for s in stores:
            s.repository.engine.dispose()


# --- the campaigns file ----------------------------------------------------------------------


def test_the_files_campaigns_are_synced_in_and_read_only(
    small_model_root: Path, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text('[campaigns.spring]\nkind = "birthday"\ndays_before = 5\n')
    with make_client(small_model_root, database_url, campaigns_file=path) as c:
        spring = _ok(c.get("/v1/campaigns/spring", headers=M))
        assert (spring["source"], spring["version"]) == ("file", 1)
        assert _history(c, "spring")[0]["actor"] == "file"
        r = c.patch("/v1/campaigns/spring", json={"days_before": 6}, headers=M)
        assert r.status_code == 409
        assert r.json()["error"] == "campaign_from_file"
        r = c.post("/v1/campaigns/spring/archive", headers=M)
        assert r.status_code == 409
        assert r.json()["error"] == "campaign_from_file"
        # the emergency brake works on the file's campaigns too
        assert _ok(c.post("/v1/campaigns/spring/pause", headers=M))["status"] == "paused"
        # the built-in campaign, which the file does not name, is the API's
        assert (
            _ok(c.patch(f"/v1/campaigns/{BUILT_IN}", json={"min_views": 12}, headers=M))["version"]
            == 2
        )
    path.write_text('[campaigns.spring]\nkind = "birthday"\ndays_before = 7\n')
    with make_client(small_model_root, database_url, campaigns_file=path) as c:
        spring = _ok(c.get("/v1/campaigns/spring", headers=M))
        assert spring["definition"]["days_before"] == 7
        assert spring["version"] == 3
        assert spring["status"] == "paused"  # the sync never undoes a pause
        assert [(h["action"], h["actor"]) for h in _history(c, "spring")] == [
            ("create", "file"),
            ("pause", ACTOR),
            ("update", "file"),
        ]
        built_in = _ok(c.get(f"/v1/campaigns/{BUILT_IN}", headers=M))
        assert built_in["definition"]["min_views"] == 12  # a restart keeps the API's change
    path.write_text("")
    with make_client(small_model_root, database_url, campaigns_file=path) as c:
        spring = _ok(c.get("/v1/campaigns/spring", headers=M))
        assert (spring["source"], spring["version"], spring["status"]) == ("api", 4, "paused")
        assert (
            _ok(c.patch("/v1/campaigns/spring", json={"days_before": 6}, headers=M))["version"] == 5
        )


# --- every replica ---------------------------------------------------------------------------


def _until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not applied in time"
        time.sleep(0.02)


def test_a_change_through_one_app_is_applied_by_another_within_a_poll(
    small_model_root: Path, database_url: str
) -> None:
    with (
        make_client(small_model_root, database_url, campaign_poll_seconds=0.05) as a,
        make_client(small_model_root, database_url, campaign_poll_seconds=0.05) as b,
    ):
        eager = {"campaign_id": "come_back", "min_views": 3, "evaluate_on_view": True}
        _ok(a.post("/v1/campaigns", json=eager, headers=M), 201)

        def b_knows() -> bool:
            body = {"user_id": "u1", "campaign_id": "come_back"}
            status: int = b.post("/v1/offers/evaluate", json=body, headers=F).status_code
            return status == 200

        _until(b_knows)
        state = b.app.state.recoffer  # type: ignore[attr-defined]
        assert [c.campaign_id for c in state.auto_offers.campaigns] == ["come_back"]
        assert "come_back" in state.reports.campaigns
        _ok(a.post(f"/v1/campaigns/{BUILT_IN}/pause", headers=M))
        _until(lambda: not state.offers.campaigns[BUILT_IN].enabled)
        _hesitating(b, "u2")
        assert _evaluate(b, "u2")["reasons"][:1] == ["campaign_inactive"]
        _ok(a.post(f"/v1/campaigns/{BUILT_IN}/resume", headers=M))
        _until(lambda: state.offers.campaigns[BUILT_IN].enabled)
        decided = _evaluate(b, "u2")
        assert decided["decision"] in ("issued", "holdout"), decided
        assert decided["campaign_version"] == 3


# --- the definition each decision was made with ----------------------------------------------


def test_each_decision_records_the_definition_version_in_force(client: TestClient) -> None:
    _hesitating(client, "u1")
    first = _evaluate(client, "u1")
    assert first["decision"] in ("issued", "holdout")
    assert first["campaign_version"] == 1
    _ok(client.patch(f"/v1/campaigns/{BUILT_IN}", json={"holdout_percent": 20}, headers=M))
    _hesitating(client, "u2")
    second = _evaluate(client, "u2")
    assert second["decision"] in ("issued", "holdout")
    assert second["campaign_version"] == 2
    again = _evaluate(client, "u1")
    assert again["decision"] == "already_decided"
    assert again["campaign_version"] == 1
    trail = {h["version"]: h["definition"] for h in _history(client, BUILT_IN)}
    assert (trail[1]["holdout_percent"], trail[2]["holdout_percent"]) == (10, 20)
    stats = _ok(client.get(f"/v1/campaigns/{BUILT_IN}/stats", headers=M))
    assert stats["definition_version"] == 2
    assert stats["decisions_by_version"] == {"1": 1, "2": 1}
    engine = client.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            select(offer_decisions.c.user_id, offer_decisions.c.campaign_version).order_by(
                offer_decisions.c.user_id
            )
        ).all()
    assert [tuple(r) for r in rows] == [("u1", 1), ("u2", 2)]


def test_the_change_log_is_append_only(client: TestClient) -> None:
    engine = client.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    for statement in (campaign_changes.delete(), campaign_changes.update().values(actor="x")):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(statement)
    assert len(_history(client, BUILT_IN)) == 1


def test_a_sweep_records_the_definition_version_in_force(client: TestClient) -> None:
    for user_id in ("s1", "s2", "s3"):
        _hesitating(client, user_id)
    _ok(client.patch(f"/v1/campaigns/{BUILT_IN}", json={"max_total": 2}, headers=M))
    _ok(client.post(f"/v1/campaigns/{BUILT_IN}/run", headers=M), 202)
    state = client.app.state.recoffer  # type: ignore[attr-defined]
    assert state.sweeps.wait(30)
    engine = state.repository.engine
    with engine.connect() as conn:
        rows = conn.execute(
            select(offer_decisions.c.decision, offer_decisions.c.campaign_version)
        ).all()
    # none of the three is held out: two coupons, then the cap (a miss, written by the batch)
    assert sorted(r[0] for r in rows) == ["budget_exhausted", "issued", "issued"]
    assert {r[1] for r in rows} == {2}
