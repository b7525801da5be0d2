"""What a review of the experiments found (issue 14): a failed promotion leaves the row and
``current`` in agreement, a worker tries a failed candidate again, a promotion loads nothing
a second time, a stale refresh or start never brings back a stopped experiment's arms, and an
orphaned experiment is stopped with the guard off; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import service.recommend.holder as holder_module
from service.app import create_app
from service.artifact import Artifact, ModelStore, load_artifact, read_runs
from service.artifact.lock import trainer_lock
from service.experiments.repository import Experiment
from service.experiments.service import Experiments

from .conftest import ADMIN, FRONTEND, service_settings, state_of, versions


def _start(api: TestClient, candidate_version: str) -> dict[str, Any]:
    answer = api.post(
        "/v1/experiments",
        json={"name": "older model", "candidate_version": candidate_version},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _experiments(api: TestClient) -> Experiments:
    experiments = state_of(api).experiments
    assert experiments is not None
    return experiments


def _stopped(experiment_id: str) -> dict[str, Any]:
    return {"reason": "stopped", "detail": "by a test", "by": "test", "at": "", "results": {}}


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- 1. a promotion that fails changes nothing ---------------------------------------------


def test_a_registry_switch_that_fails_leaves_the_experiment_running_and_promotable(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, current = versions(models)
    started = _start(api, previous)
    experiments = _experiments(api)
    real_promote = experiments.store.promote

    def full_disk(version: str) -> None:
        raise OSError(28, f"No space left on device: '{models}/registry.json'")

    monkeypatch.setattr(experiments.store, "promote", full_disk)
    failed = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert failed.status_code == 409, failed.text
    assert failed.json()["error"] == "registry_error"
    assert str(models) not in failed.text
    found = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
    assert found["status"] == "running"  # not a false "promoted"
    assert found["served_here"] is True  # the arms are still served
    assert ModelStore(models).current() == current
    assert not [r for r in read_runs(models).runs if r.by == "experiment"]
    # once the disk has room again, the same experiment is promoted
    monkeypatch.setattr(experiments.store, "promote", real_promote)
    done = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert done.status_code == 200, done.text
    assert done.json()["experiment"]["status"] == "promoted"
    assert ModelStore(models).current() == previous
    assert [r.version for r in read_runs(models).runs if r.by == "experiment"] == [previous]


def test_a_stop_during_the_promotion_rolls_the_registry_back(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, current = versions(models)
    started = _start(api, previous)
    experiments = _experiments(api)
    real_promote = experiments.store.promote

    def promote_while_a_stop_lands(version: str) -> None:
        real_promote(version)  # a stop (which takes no trainer lock) ends the row right now
        experiments.repository.end(
            started["id"], "stopped", _stopped(started["id"]), datetime.now(UTC)
        )

    monkeypatch.setattr(experiments.store, "promote", promote_while_a_stop_lands)
    lost = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert lost.status_code == 409, lost.text
    assert lost.json()["error"] == "experiment_ended"
    assert ModelStore(models).current() == current  # switched back: the row says stopped
    assert api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()["status"] == (
        "stopped"
    )
    assert not [r for r in read_runs(models).runs if r.by == "experiment"]


# --- 2. a worker that failed to load the candidate tries again -------------------------------


def test_a_worker_that_failed_to_load_the_candidate_tries_again_after_a_back_off(
    tmp_path: Path, models: Path, database_url: str
) -> None:
    previous, _ = versions(models)
    settings = service_settings(tmp_path, database_url)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        started = _start(first, previous)
        version_dir = ModelStore(models).version_path(previous)
        damaged = sorted(version_dir.glob("*.npy"))[0]
        damaged.chmod(0o644)
        intact = damaged.read_bytes()
        damaged.write_bytes(intact[:-8])  # a transient fault: a file half copied, a mount gone
        other = state_of(second)
        holder = other.models
        now = [1000.0]
        holder.monotonic = lambda: now[0]
        assert other.experiments is not None
        other.experiments.refresh()
        assert holder.experiment is None
        assert holder.experiment_error is not None
        damaged.write_bytes(intact)
        other.experiments.refresh()  # within the back-off: not tried yet, the error still shown
        assert holder.experiment is None
        detail = second.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
        assert detail["served_here"] is False
        assert detail["load_error"] is not None
        now[0] += holder_module.RETRY_FIRST_SECONDS + 0.1
        assert other.experiments.refresh()
        assert holder.experiment is not None
        assert holder.experiment.experiment_id == started["id"]
        detail = second.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
        assert (detail["served_here"], detail["load_error"]) == (True, None)


def test_each_failed_try_doubles_the_wait(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = versions(models)
    started = _start(api, previous)
    experiments = _experiments(api)
    holder = experiments.models
    tries: list[str] = []

    def broken(holder: object, experiment: Experiment) -> None:
        tries.append(experiment.id)
        raise OSError("the candidate's disk is gone")

    monkeypatch.setattr(holder_module, "build_arms", broken)
    holder_module._load_experiment(holder, None)  # released; the row still runs
    now = [0.0]
    holder.monotonic = lambda: now[0]
    experiments.refresh()
    assert tries == [started["id"]]
    first = holder_module.RETRY_FIRST_SECONDS
    for wait in (first, 2 * first, 4 * first):
        now[0] += wait - 0.5
        experiments.refresh()
        count = len(tries)
        now[0] += 0.5
        experiments.refresh()
        assert len(tries) == count + 1  # tried exactly when the wait was over
    assert holder.experiment_error is not None


# --- 4. a promotion serves the candidate it holds ------------------------------------------


def test_a_promotion_serves_the_candidate_arm_without_loading_it_again(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = versions(models)
    started = _start(api, previous)
    state = state_of(api)
    arms = state.models.experiment
    assert arms is not None
    loads: list[Path] = []

    def counted(path: Path, *, mmap: bool = False) -> Artifact:
        loads.append(path)
        return load_artifact(path, mmap=mmap)

    monkeypatch.setattr(holder_module, "load_artifact", counted)
    done = api.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
    assert done.status_code == 200, done.text
    assert done.json()["serving"] == previous
    assert loads == []  # no second copy of the candidate
    assert state.models.current is arms.candidate
    assert state.models.experiment is None
    answer = api.get("/v1/users/u1/recommendations", headers=FRONTEND)
    assert answer.json()["model_version"] == previous
    assert state.recommendations.reload().changed is False  # the registry's current is served


# --- 5. a stale refresh or start never serves a stopped experiment -------------------------


def test_a_refresh_that_read_the_row_before_a_stop_does_not_bring_the_arms_back(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = versions(models)
    started = _start(api, previous)
    experiments = _experiments(api)
    holder = experiments.models
    assert holder.experiment is not None
    repository = experiments.repository
    real_running = repository.running
    read = threading.Event()

    def running() -> Experiment | None:
        found = real_running()
        read.set()
        return found

    monkeypatch.setattr(repository, "running", running)
    with holder._lock:  # a load elsewhere holds the lock: the poll's refresh waits for it
        poll = threading.Thread(target=experiments.refresh)
        poll.start()
        read.wait(0.5)  # a refresh that reads the row before the lock has read it by now
        # meanwhile the experiment is stopped and its arms released (what stop() does)
        assert repository.end(started["id"], "stopped", _stopped(started["id"]), datetime.now(UTC))
        holder_module._load_experiment(holder, repository.get(started["id"]))
        assert holder.experiment is None
    poll.join(30)
    assert not poll.is_alive()
    assert holder.experiment is None


def test_a_start_whose_row_was_stopped_before_the_install_serves_nothing(
    api: TestClient, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = versions(models)
    experiments = _experiments(api)
    repository = experiments.repository
    real_create = repository.create

    def create_then_stopped(row: dict[str, Any]) -> bool:
        created = real_create(row)
        # another worker stops it before this one installed the arms it prepared
        repository.end(str(row["id"]), "stopped", _stopped(str(row["id"])), datetime.now(UTC))
        return created

    monkeypatch.setattr(repository, "create", create_then_stopped)
    started = experiments.start(name="older model", candidate_version=previous)
    assert repository.get(started.id) is not None
    assert experiments.models.experiment is None


# --- 6. the control-changed check runs with the guard off -----------------------------------


def test_an_orphaned_experiment_is_stopped_at_a_poll_with_the_guard_off(
    tmp_path: Path, models: Path, database_url: str
) -> None:
    previous, _ = versions(models)
    settings = service_settings(
        tmp_path, database_url, experiment_poll_seconds=0.05, experiment_guard_seconds=0
    )
    with TestClient(create_app(settings)) as api:
        started = _start(api, previous)
        ModelStore(models).rollback()  # a rollback makes the previous version current

        def stopped() -> bool:
            found = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
            return bool(found["status"] == "stopped")

        assert _wait(stopped)
        found = api.get(f"/v1/experiments/{started['id']}", headers=ADMIN).json()
        assert found["outcome"]["reason"] == "control_changed"
        again = api.post(
            "/v1/experiments", json={"name": "next", "candidate_version": "x"}, headers=ADMIN
        )
        assert again.status_code == 422  # not 409: nothing blocks a new start any more


def test_a_promotion_between_its_two_steps_is_not_taken_for_a_changed_control(
    api: TestClient, models: Path
) -> None:
    previous, current = versions(models)
    started = _start(api, previous)
    experiments = _experiments(api)
    store = ModelStore(models)
    with trainer_lock(models):  # what promote() holds: the registry switched, the row not yet
        store.promote(previous)
        assert experiments.check(guard=False) is None
        assert experiments.get(started["id"]).running
    store.promote(current)  # the "promotion" gave up: nothing to stop
    assert experiments.check(guard=False) is None
    store.promote(previous)  # a writer that switched it and let go: an orphan, stopped
    ended = experiments.check(guard=False)
    assert ended is not None
    assert ended.outcome is not None
    assert ended.outcome["reason"] == "control_changed"


def test_another_worker_serves_the_promoted_candidate_it_holds_without_loading_it(
    tmp_path: Path, models: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = versions(models)
    settings = service_settings(tmp_path, database_url)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        started = _start(first, previous)
        other = state_of(second)
        assert other.experiments is not None
        other.experiments.refresh()
        arms = other.models.experiment
        assert arms is not None
        done = first.post(f"/v1/experiments/{started['id']}/promote", headers=ADMIN)
        assert done.status_code == 200, done.text
        loads: list[Path] = []

        def counted(path: Path, *, mmap: bool = False) -> Artifact:
            loads.append(path)
            return load_artifact(path, mmap=mmap)

        monkeypatch.setattr(holder_module, "load_artifact", counted)
        outcome = other.recommendations.reload()  # its reload interval, before its poll
        assert (outcome.changed, outcome.version) == (True, previous)
        assert loads == []
        assert other.models.current is arms.candidate
        other.experiments.refresh()
        assert other.models.experiment is None
        answer = second.get("/v1/users/u1/recommendations", headers=FRONTEND)
        assert (answer.json()["model_version"], answer.json()["arm"]) == (previous, None)
