"""Faults across the trainer and the service: killed trainers, a broken registry, a held lock.

Checked elsewhere, and not repeated here:

- truncated or corrupt artifacts are refused with a message naming the file, in
  ``tests/service/test_artifact.py``: ``test_truncated_array_is_rejected``,
  ``test_altered_bytes_fail_the_checksum``, ``test_inconsistent_shapes_are_rejected`` and
  ``test_missing_file_bad_manifest_and_unknown_schema_are_rejected``; while the old model keeps
  serving, in ``tests/service/test_api.py``:
  ``test_corrupt_new_version_is_refused_and_the_old_one_keeps_serving``;
- a version promoted under load is picked up with no failed request, in
  ``tests/service/test_api.py``:
  ``test_new_current_version_is_picked_up_under_load_without_errors``;
- PostgreSQL cut and restored: ``tests/service/test_outages.py``; the same under sustained HTTP
  load with every acknowledged event counted, 60 s of mixed load with the worker's memory
  sampled, and 50 trainer kills: ``python -m benchmarks.reliability``.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.reliability import Trainer, landed_in, temporaries
from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.settings import Settings
from training.lock import trainer_lock
from training.synthetic.shop import SyntheticShop, write_shop

KEY = "frontend-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
H = {"X-API-Key": KEY}
SEED = 20261124
KILLS = 20


@pytest.fixture(scope="module")
def shop_csv(tmp_path_factory: pytest.TempPathFactory, tiny_shop: SyntheticShop) -> Path:
    return write_shop(tiny_shop, tmp_path_factory.mktemp("shop"))["purchases"]


@dataclass
class Watcher:
    """A thread asking for recommendations until stopped (bounded in time and count)."""

    client: TestClient
    user_id: str
    seconds: float = 120.0
    max_requests: int = 200_000
    statuses: Counter[int] = field(default_factory=Counter)
    versions: list[str] = field(default_factory=list)  # each version as first seen, in order
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        for _ in range(self.max_requests):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            try:
                r = self.client.get(f"/v1/users/{self.user_id}/recommendations", headers=H)
            except Exception as exc:  # counted as a failed request, reported by the test
                self.errors.append(repr(exc))
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 200:
                version = r.json()["model_version"]
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
            time.sleep(0.005)  # leave the trainer a core

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join(30)


def _service(root: Path, tmp_path: Path) -> TestClient:
    settings = Settings(
        model_dir=root,
        database_url=f"sqlite:///{tmp_path / 'recoffer.db'}",
        frontend_keys=[KEY],
        admin_keys=[ADMIN],
        reload_interval_seconds=0.02,
        event_poll_seconds=0.5,
        access_log=False,
    )
    return TestClient(create_app(settings))


def test_trainer_killed_at_random_moments_never_disturbs_the_service(
    shop_csv: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    root = tmp_path / "models"
    first = Trainer(shop_csv, root)
    assert first.finish(60) == 0, "\n".join(first.tail)
    duration = first.seen["eof"]
    # from the serving-stage marker to the version's rename: serving fit, then the writes
    # (the promotion follows at once; "promoted" is printed much later, after the tables)
    publish = max(0.02, first.seen["written"] - first.seen["serving"])
    store = ModelStore(root)
    user = str(load_artifact(store.current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]
    rng = random.Random(SEED)
    phases: Counter[str] = Counter()
    kills = attempts = 0

    with _service(root, tmp_path) as client:
        watcher = Watcher(client, user)
        with watcher.running():
            while kills < KILLS and attempts < 3 * KILLS:
                attempts += 1
                before = set(store.versions()), temporaries(root)
                trainer = Trainer(shop_csv, root)
                trainer.kill_somewhere(rng, attempts, duration, publish)
                code = trainer.finish(60)
                if code == 0:  # it was done before the signal
                    phases["finished before the kill"] += 1
                    continue
                assert code == -signal.SIGKILL, "\n".join(trainer.tail)
                kills += 1
                phases[landed_in(root, *before, trainer)] += 1

            last = Trainer(shop_csv, root)  # a normal run after all this
            assert last.finish(60) == 0, "\n".join(last.tail)
            newest = store.current()
            deadline = time.monotonic() + 10
            while watcher.versions[-1:] != [newest] and time.monotonic() < deadline:
                time.sleep(0.05)
        holder = client.app.state.recoffer.models  # type: ignore[attr-defined]
        load_failures = holder.last_error
        metrics = client.get("/metrics").text

    record_property("kills_by_phase", dict(phases))
    record_property("recommendations", sum(watcher.statuses.values()))
    assert kills >= KILLS, f"only {kills} kills in {attempts} runs: {dict(phases)}"
    assert watcher.errors == []
    assert set(watcher.statuses) == {200}, watcher.statuses
    assert sum(watcher.statuses.values()) > 100
    assert watcher.versions[-1] == newest, "the run after the kills was not picked up"
    # every version ever served was complete and promoted, and the service only moved forward
    promoted = store.read_registry()["history"]
    for version in watcher.versions:
        assert version in promoted
        load_artifact(store.version_path(version), verify_checksums=True)
    assert watcher.versions == sorted(set(watcher.versions))
    assert load_failures is None
    assert 'recoffer_model_loads_total{outcome="failed"}' not in metrics
    # the last run cleaned every leftover, and every version directory on disk is whole
    assert temporaries(root) == set()
    for version in store.versions():
        load_artifact(store.version_path(version), verify_checksums=True)


def test_a_trainer_started_while_another_holds_the_lock_exits_1_and_publishes_nothing(
    shop_csv: Path, tmp_path: Path
) -> None:
    with trainer_lock(tmp_path):  # another process, as far as the child is concerned
        trainer = Trainer(shop_csv, tmp_path)
        code = trainer.finish(60)
    assert code == 1
    assert any("another trainer is running" in line for line in trainer.tail), trainer.tail
    assert ModelStore(tmp_path).versions() == []


def test_an_unreadable_registry_keeps_the_old_model_serving(
    small_model_root: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    serving = store.current()
    user = str(load_artifact(store.current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]
    with _service(root, tmp_path) as client:
        registry = root / "registry.json"
        registry.write_bytes(registry.read_bytes()[:20])  # cut by hand or by a broken disk
        time.sleep(0.2)  # several reload ticks
        assert client.get(f"/v1/users/{user}/recommendations", headers=H).status_code == 200
        r = client.post("/v1/model/reload", headers={"X-API-Key": ADMIN})
        assert r.status_code == 409
        assert "registry" in r.json()["detail"]
        assert client.get("/v1/model", headers=H).json()["version"] == serving
