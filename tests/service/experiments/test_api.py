"""Experiments through the API: start, arms in every response, results per arm, the guard,
stop and promote; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifact import ModelStore, read_manifest, read_runs
from service.artifact.lock import trainer_lock
from service.experiments.arms import arm_of
from service.offers.stats import uplift, wilson
from service.recommend.holder import candidate_recipes
from service.recommend.recommender import Query

from .conftest import ADMIN, FRONTEND, MARKETING, service_settings, show, state_of, versions


def _start(api: TestClient, **body: Any) -> dict[str, Any]:
    answer = api.post("/v1/experiments", json={"name": "older model", **body}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _served(api: TestClient, users: range) -> dict[str, dict[str, Any]]:
    out = {}
    for i in users:
        answer = api.get(f"/v1/users/u{i}/recommendations", headers=FRONTEND)
        assert answer.status_code == 200, answer.text
        out[f"u{i}"] = answer.json()
    return out


def test_every_response_says_its_arm_and_each_arm_serves_its_version(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    before = _served(api, range(5))
    assert all(r["arm"] is None and r["experiment_id"] is None for r in before.values())
    started = _start(api, candidate_version=previous, share=0.5)
    assert started["status"] == "running"
    assert (started["control_version"], started["candidate_version"]) == (current, previous)
    detail = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert detail["served_here"] is True
    assert detail["load_error"] is None
    served = _served(api, range(200))
    arms = {u: r["arm"] for u, r in served.items()}
    assert set(arms.values()) == {"control", "candidate"}
    assert 60 <= list(arms.values()).count("candidate") <= 140
    for user, answer in served.items():
        assert answer["experiment_id"] == started["id"]
        expected = previous if answer["arm"] == "candidate" else current
        assert answer["model_version"] == expected, user
        assert answer["arm"] == arm_of(started["id"], user, 0.5)  # the holdout's hash
    again = _served(api, range(20))  # deterministic: the same arm every time
    assert all(again[u]["arm"] == arms[u] for u in again)


def test_one_experiment_at_a_time_and_bad_input_names_its_field(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"candidate_version": "20990101T000000-none"}, "candidate_version"),
        ({"candidate_version": "../etc"}, "candidate_version"),
        ({"candidate_version": previous, "candidate_recipe": "nonesuch"}, "candidate_recipe"),
        ({"candidate_version": previous, "control_recipe": "nonesuch"}, "control_recipe"),
        ({"candidate_version": current}, "candidate_version"),  # the control itself
        ({"candidate_version": previous, "share": 0}, "share"),
        ({"candidate_version": previous, "share": 1}, "share"),
        ({"candidate_version": previous, "extra": 1}, "extra"),
    ]
    for body, field in cases:
        answer = api.post("/v1/experiments", json={"name": "x", **body}, headers=ADMIN)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["detail"][0]["field"] == field, (body, answer.text)
    assert api.post("/v1/experiments", json={"name": "x"}, headers=ADMIN).status_code == 422
    assert api.get("/v1/experiments", headers=ADMIN).json()["experiments"] == []
    first = _start(api, candidate_version=previous)
    second = api.post(
        "/v1/experiments", json={"name": "b", "candidate_version": previous}, headers=ADMIN
    )
    assert second.status_code == 409
    assert second.json()["error"] == "experiment_running"
    assert first["id"] in second.json()["detail"]


def test_marketing_reads_and_only_admin_changes(api: TestClient, models: Path) -> None:
    previous, _ = versions(models)
    body = {"name": "x", "candidate_version": previous}
    assert api.post("/v1/experiments", json=body, headers=MARKETING).status_code == 403
    assert api.post("/v1/experiments", json=body, headers=FRONTEND).status_code == 403
    started = _start(api, candidate_version=previous)
    assert api.get("/v1/experiments", headers=MARKETING).status_code == 200
    assert api.get(f"/v1/experiments/{started['id']}", headers=MARKETING).status_code == 200
    assert api.get(f"/v1/experiments/{started['id']}", headers=FRONTEND).status_code == 403
    for action in ("stop", "promote"):
        url = f"/v1/experiments/{started['id']}/{action}"
        assert api.post(url, headers=MARKETING).status_code == 403
    assert api.get("/v1/experiments/exp_nonesuch", headers=MARKETING).status_code == 404
    assert api.post("/v1/experiments/exp_nonesuch/stop", headers=ADMIN).status_code == 404


def test_results_per_arm_come_from_the_impressions_tagged_with_the_experiment(
    api: TestClient, models: Path
) -> None:
    previous, _ = versions(models)
    started = _start(api, candidate_version=previous)
    engine = state_of(api).repository.engine
    show(engine, started["id"], "control", impressions=400, users=100, clicks=40, purchases=8)
    show(engine, started["id"], "candidate", impressions=300, users=90, clicks=45, purchases=3)
    show(engine, "exp_other", "candidate", impressions=50, users=5, clicks=50)  # not counted
    found = api.get(f"/v1/experiments/{started['id']}", headers=MARKETING).json()["results"]
    control, candidate = found["arms"]["control"], found["arms"]["candidate"]
    assert (control["impressions"], control["users"], control["clicks"]) == (400, 100, 40)
    assert (candidate["impressions"], candidate["users"], candidate["purchases"]) == (300, 90, 3)
    assert candidate["ctr"]["estimate"] == pytest.approx(0.15)
    assert candidate["ctr"]["low"] == pytest.approx(wilson(45, 300).low)  # type: ignore[union-attr]
    difference = uplift(45, 300, 40, 400)
    assert difference is not None
    assert found["ctr"]["difference"]["low"] == pytest.approx(difference.low)
    assert found["ctr"]["relative_lift"] == pytest.approx(0.5)
    assert found["conversion"]["difference"]["estimate"] == pytest.approx(0.01 - 0.02)
    assert found["srm"]["observed_share"] == pytest.approx(90 / 190)
    assert found["srm"]["mismatch"] is False
    assert found["guard"] == {
        "ready": False,
        "tripped": False,
        "min_impressions": 1000,
        "z": pytest.approx(3.29, abs=0.01),
        "ctr_upper": pytest.approx(found["guard"]["ctr_upper"]),
        "conversion_upper": pytest.approx(found["guard"]["conversion_upper"]),
        "reason": None,
    }


def test_the_guard_stops_a_clearly_worse_candidate_once_across_workers(
    api: TestClient, models: Path
) -> None:
    previous, _ = versions(models)
    started = _start(api, candidate_version=previous)
    state = state_of(api)
    assert state.experiments is not None
    engine = state.repository.engine
    show(engine, started["id"], "control", impressions=1500, users=300, clicks=300)
    show(engine, started["id"], "candidate", impressions=1500, users=300, clicks=60)
    ended: list[object] = []
    barrier = threading.Barrier(8)

    def look() -> None:
        barrier.wait()
        assert state.experiments is not None
        ended.append(state.experiments.check())

    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([e for e in ended if e is not None]) == 1  # one worker acted
    found = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert found["status"] == "stopped"
    outcome = found["outcome"]
    assert outcome["reason"] == "guard"
    assert outcome["by"] == "guard"
    assert "clearly worse" in outcome["detail"]
    assert outcome["results"]["arms"]["candidate"]["clicks"] == 60
    assert found["ended_at"] is not None
    # released: nobody is in an arm any more
    assert all(r["arm"] is None for r in _served(api, range(10)).values())
    assert state.experiments.check() is None


def test_stop_releases_the_arms_and_a_second_stop_is_a_conflict(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    started = _start(api, candidate_version=previous)
    state = state_of(api)
    assert state.models.experiment is not None
    stopped = api.post(f"/v1/experiments/{started['id']}/stop", headers=ADMIN)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["outcome"]["reason"] == "stopped"
    assert stopped.json()["outcome"]["by"].startswith("admin:")
    assert state.models.experiment is None
    served = _served(api, range(30))
    assert {r["model_version"] for r in served.values()} == {current}
    assert all(r["arm"] is None for r in served.values())
    again = api.post(f"/v1/experiments/{started['id']}/stop", headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["error"] == "experiment_ended"
    assert api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN).status_code == 409
    # a new one may start now
    _start(api, candidate_version=previous)


def test_promotion_switches_current_and_is_recorded_for_the_gate(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    started = _start(api, candidate_version=previous)
    engine = state_of(api).repository.engine
    show(engine, started["id"], "control", impressions=100, users=50, clicks=5)
    show(engine, started["id"], "candidate", impressions=100, users=50, clicks=9)
    with trainer_lock(models):  # a training run holds the lock: refused, nothing changed
        busy = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert busy.status_code == 409
    assert busy.json()["error"] == "trainer_busy"
    assert str(models) not in busy.text
    assert ModelStore(models).current() == current
    done = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["before"], body["current"], body["serving"]) == (current, previous, previous)
    assert body["experiment"]["status"] == "promoted"
    assert ModelStore(models).current() == previous
    assert ModelStore(models).previous() == current  # a rollback goes back to the control
    run = read_runs(models).runs[0]
    assert (run.outcome, run.by, run.version, run.current_before) == (
        "promoted",
        "experiment",
        previous,
        current,
    )
    extra = run.model_dump()
    assert extra["experiment_id"] == started["id"]
    assert extra["experiment_results"]["arms"]["candidate"]["clicks"] == 9
    assert started["id"] in run.reasons[0]
    served = _served(api, range(10))
    assert {r["model_version"] for r in served.values()} == {previous}
    assert all(r["arm"] is None for r in served.values())


def test_a_recipe_of_the_current_version_is_served_and_not_promoted(
    api: TestClient, models: Path
) -> None:
    _, current = versions(models)
    started = _start(api, candidate_version=current, candidate_recipe="popularity")
    served = _served(api, range(60))
    candidates = [r for r in served.values() if r["arm"] == "candidate"]
    controls = [r for r in served.values() if r["arm"] == "control"]
    assert candidates
    assert controls
    assert {r["recipe"] for r in candidates} == {"popularity"}
    assert {r["recipe"] for r in controls} == {"all"}
    assert {r["model_version"] for r in served.values()} == {current}
    refused = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert refused.status_code == 409
    assert refused.json()["error"] == "experiment_refused"
    assert "recipe popularity" in refused.json()["detail"]
    status = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()["status"]
    assert status == "running"


def test_a_changed_current_version_disables_and_stops_the_experiment(
    api: TestClient, models: Path
) -> None:
    previous, _ = versions(models)
    started = _start(api, candidate_version=previous)
    state = state_of(api)
    ModelStore(models).rollback()  # what a rollback or a training run does meanwhile
    state.recommendations.reload()
    served = _served(api, range(20))
    assert all(r["arm"] is None for r in served.values())  # no arm: nobody is the control
    assert state.experiments is not None
    assert state.experiments.check() is not None
    found = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert found["status"] == "stopped"
    assert found["outcome"]["reason"] == "control_changed"


def test_every_worker_picks_up_a_start_and_a_stop_within_a_poll(
    tmp_path: Path, models: Path, database_url: str
) -> None:
    previous, _ = versions(models)
    settings = service_settings(tmp_path, database_url, experiment_poll_seconds=0.05)
    with (
        TestClient(create_app(settings)) as first,
        TestClient(create_app(settings)) as second,
    ):
        started = _start(first, candidate_version=previous)
        other = state_of(second)
        assert _wait(lambda: other.models.experiment is not None)
        assert {r["arm"] for r in _served(second, range(40)).values()} == {"control", "candidate"}
        first.post(f"/v1/experiments/{started['id']}/stop", headers=ADMIN)
        assert _wait(lambda: other.models.experiment is None)


def _wait(condition: Any, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def test_of_many_starts_at_once_one_wins(api: TestClient, models: Path) -> None:
    from service.errors import ExperimentRunning

    previous, _ = versions(models)
    experiments = state_of(api).experiments
    assert experiments is not None
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start(n: int) -> None:
        barrier.wait()
        try:
            experiments.start(name=f"race {n}", candidate_version=previous)
            outcomes.append("started")
        except ExperimentRunning:
            outcomes.append("running")

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["running"] * 7 + ["started"]
    listed = api.get("/v1/experiments", headers=ADMIN).json()["experiments"]
    assert [e["status"] for e in listed] == ["running"]


def test_a_version_name_no_file_system_takes_is_a_422(api: TestClient) -> None:
    for name in ("a\x00b", "x" * 64, "."):
        answer = api.post(
            "/v1/experiments", json={"name": "x", "candidate_version": name}, headers=ADMIN
        )
        assert answer.status_code == 422, (name, answer.text)
        assert answer.json()["detail"][0]["field"] == "candidate_version"


def test_the_background_guard_stops_a_worse_candidate_and_every_worker_lets_go(
    tmp_path: Path, models: Path, database_url: str
) -> None:
    previous, _ = versions(models)
    settings = service_settings(
        tmp_path, database_url, experiment_poll_seconds=0.05, experiment_guard_seconds=0.1
    )
    with TestClient(create_app(settings)) as client:
        started = _start(client, candidate_version=previous)
        engine = state_of(client).repository.engine
        show(engine, started["id"], "control", impressions=1200, users=300, clicks=240)
        show(engine, started["id"], "candidate", impressions=1200, users=300, clicks=30)

        def stopped() -> bool:
            found = client.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
            return bool(found["status"] == "stopped")

        assert _wait(stopped)
        outcome = client.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()["outcome"]
        assert outcome["reason"] == "guard"
        assert _wait(lambda: state_of(client).models.experiment is None)


def test_rank_and_top_items_follow_the_users_arm_and_similar_has_none(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    started = _start(api, candidate_version=previous)
    state = state_of(api)
    arms = state.models.experiment
    current_model = state.models.current
    assert arms is not None
    assert current_model is not None
    users = list(arms.candidate.model.user_index)[:40]
    items = list(arms.candidate.model.item_index)[:30]
    by_arm = {u: arm_of(started["id"], u, 0.5) for u in users}
    assert set(by_arm.values()) == {"control", "candidate"}
    for user, arm in by_arm.items():
        model = arms.candidate if arm == "candidate" else current_model
        assert state.recommendations.rank(user, items) == model.rank(user, items)
        assert state.recommendations.top_items(user, 5) == [
            r.item_id for r in model.recommend(Query(user_id=user, limit=5)).items
        ]
    item = next(i for i in items if i in current_model.model.item_index)
    similar = api.get(f"/v1/items/{item}/similar", headers=FRONTEND)
    assert similar.status_code == 200, similar.text
    assert similar.json()["model_version"] == current  # always the current version
    assert "arm" not in similar.json()


def test_a_worker_that_cannot_load_the_candidate_serves_without_an_arm(
    tmp_path: Path, models: Path, database_url: str
) -> None:
    previous, current = versions(models)
    settings = service_settings(tmp_path, database_url)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        started = _start(first, candidate_version=previous)
        # the candidate's files damaged after the start, before the second worker's poll
        version_dir = ModelStore(models).version_path(previous)
        damaged = next(p for p in sorted(version_dir.glob("*.npy")))
        damaged.chmod(0o644)
        damaged.write_bytes(damaged.read_bytes()[:-8])
        other = state_of(second)
        assert other.experiments is not None
        other.experiments.refresh()
        assert other.models.experiment is None
        detail = second.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
        assert detail["served_here"] is False
        assert detail["load_error"] is not None
        assert str(models) not in detail["load_error"]
        served = _served(second, range(20))
        assert all(r["arm"] is None for r in served.values())
        assert {r["model_version"] for r in served.values()} == {current}


def test_impressions_and_clicks_posted_as_events_are_counted_per_arm(
    api: TestClient, models: Path
) -> None:
    """End to end with the feedback events: lists served in the experiment, shown and clicked
    through ``POST /v1/events`` with their signed request ids, counted per arm."""
    previous, _ = versions(models)
    started = _start(api, candidate_version=previous)
    served = _served(api, range(60))
    events: list[dict[str, Any]] = []
    expected = {"control": [0, 0], "candidate": [0, 0]}  # impressions, clicks
    for user, answer in served.items():
        arm = answer["arm"]
        shown = [item["item_id"] for item in answer["items"][:3]]
        events.append(
            {
                "type": "impression",
                "user_id": user,
                "items": shown,
                "request_id": answer["request_id"],
                "placement": "home",
            }
        )
        expected[arm][0] += len(shown)
        if arm == "control":  # only the control's users click: the candidate looks worse
            first = answer["items"][0]["item_id"]
            events.append(
                {
                    "type": "click",
                    "user_id": user,
                    "item_id": first,
                    "request_id": answer["request_id"],
                }
            )
            expected[arm][1] += 1
    posted = api.post("/v1/events", json={"events": events}, headers=FRONTEND)
    assert posted.status_code == 200, posted.text
    found = api.get(f"/v1/experiments/{started['id']}", headers=MARKETING).json()["results"]
    for arm, (impressions, clicks) in expected.items():
        figures = found["arms"][arm]
        assert (figures["impressions"], figures["clicks"]) == (impressions, clicks), arm
        assert figures["users"] == sum(1 for r in served.values() if r["arm"] == arm)
    assert found["ctr"]["difference"]["estimate"] < 0


def test_new_arrivals_are_left_out_of_both_arms_of_two_versions(
    api: TestClient, models: Path
) -> None:
    """New products are indexed for the current version only: while the candidate arm is
    another version, neither arm gets them, so the two are compared on the same terms."""
    previous, _ = versions(models)
    ops = [{"op": "upsert", "item_id": "brand-new", "category": "new", "in_stock": True}]
    assert api.post("/v1/items:batch", json={"items": ops}, headers=MARKETING).is_success

    def sources(users: range) -> set[str]:
        return {i["source"] for r in _served(api, users).values() for i in r["items"]}

    assert "new_arrivals" in sources(range(3))  # users nobody knows: the newest product
    started = _start(api, candidate_version=previous, share=0.5)
    assert "new_arrivals" not in sources(range(40))
    assert api.post(f"/v1/experiments/{started['id']}/stop", headers=ADMIN).is_success
    assert "new_arrivals" in sources(range(3))


def test_a_candidate_that_would_serve_the_controls_lists_is_a_422(
    api: TestClient, models: Path
) -> None:
    """One arm twice measures nothing: the same version with the same recipe on both sides,
    or with the candidate recipe the version already serves, is refused naming the recipe."""
    _, current = versions(models)
    manifest = read_manifest(ModelStore(models).version_path(current))
    name = next(iter(manifest.candidates))
    same = {"candidate_version": current, "candidate_recipe": name, "control_recipe": name}
    answer = api.post("/v1/experiments", json={"name": "x", **same}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["field"] == "candidate_recipe"
    served = [
        n for n in manifest.candidates if candidate_recipes(manifest, n)[0] == manifest.recipes
    ]
    for n in served:  # the names whose recipes are the served ones, when there are any
        body = {"name": "x", "candidate_version": current, "candidate_recipe": n}
        answer = api.post("/v1/experiments", json=body, headers=ADMIN)
        assert answer.status_code == 422, answer.text
    assert api.get("/v1/experiments", headers=ADMIN).json()["experiments"] == []


def test_an_erased_user_is_forgotten_by_the_arms_an_experiment_remembers(
    api: TestClient, models: Path
) -> None:
    previous, _ = versions(models)
    _start(api, candidate_version=previous, share=0.5)
    _served(api, range(3))
    arms = state_of(api).models.experiment
    assert arms is not None
    assert "u1" in arms._arms
    assert api.delete("/v1/users/u1", headers=ADMIN).status_code == 200
    state_of(api).privacy.refresh()  # the worker's poll; another worker: from the tombstones
    assert "u1" not in arms._arms
    assert "u2" in arms._arms
