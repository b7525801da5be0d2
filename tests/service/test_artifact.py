"""The on-disk model contract: atomic versions, validated loads, the current pointer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.artifact import (
    REQUIRED_ARRAYS,
    ManifestBody,
    ModelStore,
    load_artifact,
    write_artifact,
)
from service.errors import ArtifactError, RegistryError
from service.scoring import PROTOCOLS, Recipe


def _arrays(n_users: int = 4, n_items: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    indptr = np.array([0, 2, 3, 3, 5], dtype=np.int64)
    return {
        "user_ids": np.array([f"u{i}" for i in range(n_users)]),
        "item_ids": np.array([f"i{i}" for i in range(n_items)]),
        "user_factors": rng.random((n_users, 3), dtype=np.float32),
        "item_factors": rng.random((n_items, 3), dtype=np.float32),
        "history_indptr": indptr,
        "history_indices": np.array([0, 3, 1, 2, 4], dtype=np.int32),
        "history_counts": np.array([1, 2, 1, 1, 5], dtype=np.float32),
        "history_age_days": np.array([1, 2, 3, 4, 5], dtype=np.float32),
        "popularity": np.arange(n_items, dtype=np.float32),
        "trending": np.arange(n_items, dtype=np.float32),
    }


def _body() -> ManifestBody:
    """The least a trainer must say about a version."""
    recipe = {"weights": {"als": 1.0}}
    return ManifestBody.model_validate(
        {
            "created_at": "2026-11-23T18:15:00+00:00",
            "reference_time": "2026-11-23T00:00:00",
            "counts": {"users": 4, "items": 5},
            "recipes": {"all": recipe, "novel": recipe},
            "served": {"all": "als", "novel": "als"},
            "metrics": {"test": {}},
            "note": "test",
        }
    )


def _write(root: Path, version: str = "v1", **extra: np.ndarray) -> Path:
    return write_artifact(root, version, {**_arrays(), **extra}, _body())


def _writable(path: Path) -> Path:
    """Undo a published version's read-only mode, as an operator editing it by hand would."""
    for file in path.iterdir():
        file.chmod(0o644)
    return path


def test_round_trip_keeps_every_array_and_maps_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path)
    artifact = load_artifact(path)
    for name, array in _arrays().items():
        assert np.array_equal(artifact.arrays[name], array), name
    assert isinstance(artifact.arrays["user_factors"], np.memmap)
    assert not isinstance(artifact.arrays["user_ids"], np.memmap)
    assert (artifact.manifest.model_extra or {})["note"] == "test"
    assert artifact.manifest.schema_version == 1
    assert artifact.version == "v1"
    assert (artifact.n_users, artifact.n_items) == (4, 5)


def test_writer_leaves_no_temporary_directory_and_refuses_to_overwrite(tmp_path: Path) -> None:
    _write(tmp_path)
    assert [p.name for p in (tmp_path / "versions").iterdir()] == ["v1"]
    with pytest.raises(ArtifactError, match="already exists"):
        _write(tmp_path)


def test_writer_refuses_object_arrays_and_missing_arrays(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="pickle"):
        _write(tmp_path, "v2", extra=np.array([{"a": 1}], dtype=object))
    arrays = _arrays()
    del arrays["popularity"]
    with pytest.raises(ArtifactError, match="missing arrays"):
        write_artifact(tmp_path, "v3", arrays, _body())
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "versions").iterdir())


def test_truncated_array_is_rejected(tmp_path: Path) -> None:
    path = _writable(_write(tmp_path))
    file = path / "item_factors.npy"
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match=r"item_factors\.npy has .* bytes"):
        load_artifact(path)


def test_altered_bytes_fail_the_checksum(tmp_path: Path) -> None:
    path = _writable(_write(tmp_path))
    file = path / "user_factors.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(path)


def test_missing_file_bad_manifest_and_unknown_schema_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "trending.npy").unlink()
    with pytest.raises(ArtifactError, match=r"trending\.npy is missing"):
        load_artifact(path)
    path2 = _writable(_write(tmp_path, "v2"))
    (path2 / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"unreadable manifest\.json"):
        load_artifact(path2)
    path3 = _writable(_write(tmp_path, "v3"))
    manifest = json.loads((path3 / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (path3 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_artifact(path3)
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_artifact(tmp_path / "nowhere")


def test_inconsistent_shapes_are_rejected(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["item_factors"] = arrays["item_factors"][:4]
    write_artifact(tmp_path, "bad", arrays, _body())
    with pytest.raises(ArtifactError, match="item_factors rows != items"):
        load_artifact(tmp_path / "versions" / "bad")


def test_history_pointing_outside_the_catalogue_is_rejected(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["history_indices"] = np.array([0, 3, 1, 2, 9], dtype=np.int32)
    write_artifact(tmp_path, "bad", arrays, _body())
    with pytest.raises(ArtifactError, match="outside the catalogue"):
        load_artifact(tmp_path / "versions" / "bad")


def test_ease_over_the_first_items_and_scored_items_load_and_bad_ones_are_rejected(
    tmp_path: Path,
) -> None:
    """An every-visitor artifact: EASE over the purchase items (the first ones), and how many
    first items the scorer standardises over; a wider EASE or a count outside 1..items fails."""
    ease = np.eye(3, dtype=np.float32)
    good = load_artifact(_write(tmp_path, "good", ease_b=ease, scored_items=np.array([3])))
    assert good.arrays["ease_b"].shape == (3, 3)
    for version, extra, problem in (
        ("wide", {"ease_b": np.eye(6, dtype=np.float32)}, "ease_b is not square"),
        ("oblong", {"ease_b": np.ones((3, 2), dtype=np.float32)}, "ease_b is not square"),
        ("none", {"scored_items": np.array([0])}, "scored_items"),
        ("many", {"scored_items": np.array([6])}, "scored_items"),
        ("float", {"scored_items": np.array([2.0])}, "scored_items"),
    ):
        with pytest.raises(ArtifactError, match=problem):
            load_artifact(_write(tmp_path, version, **extra))


def test_promote_and_rollback_walk_the_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.current() is None
    for version in ("v1", "v2", "v3"):
        _write(tmp_path, version)
        store.promote(version)
    assert store.current() == "v3"
    assert store.rollback() == "v2"
    assert store.current() == "v2"
    assert store.rollback() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        store.rollback()
    assert store.rollback(to="v3") == "v3"
    assert store.current() == "v3"
    with pytest.raises(RegistryError, match="no such version"):
        store.rollback(to="v9")
    with pytest.raises(RegistryError, match="no such version"):
        store.promote("v9")


def test_cleanup_removes_leftovers_of_a_killed_writer(tmp_path: Path) -> None:
    _write(tmp_path)
    leftover = tmp_path / "versions" / ".tmp-v2-dead"
    leftover.mkdir()
    (leftover / "user_ids.npy").write_bytes(b"partial")
    (tmp_path / ".tmp-registry.json-dead").write_text("{")
    store = ModelStore(tmp_path)
    removed = store.cleanup_temporaries()
    assert len(removed) == 2
    assert store.versions() == ["v1"]


def test_required_arrays_cover_what_scoring_needs() -> None:
    assert set(REQUIRED_ARRAYS) <= set(_arrays())


def test_version_names_sort_by_creation_time_within_one_second() -> None:
    from datetime import UTC, datetime

    from service.artifact import new_version_name

    names = [
        new_version_name(datetime(2026, 1, 1, 12, 0, 0, micro, tzinfo=UTC))
        for micro in (999_999, 1, 500_000)
    ]
    assert sorted(names) == [names[1], names[2], names[0]]


# the keys the first trainer wrote (schema version 1, before signals and fold-in existed)
FIRST_TRAINER_KEYS = (
    "schema_version",
    "version",
    "arrays",
    "created_at",
    "reference_time",
    "data",
    "counts",
    "params",
    "recipes",
    "served",
    "candidates",
    "metrics",
    "split",
    "tuning",
    "gate",
    "libraries",
)


def test_a_manifest_of_the_first_trainer_still_loads_and_serves(
    small_model_root: Path, tmp_path: Path
) -> None:
    from service.recommend.recommender import Query, Recommender
    from service.recommend.serving import prepare

    source = ModelStore(small_model_root).current_path()
    assert source is not None
    old = tmp_path / "old"
    shutil.copytree(source, old)
    _writable(old)
    manifest = json.loads((old / "manifest.json").read_text())
    first = {key: manifest[key] for key in FIRST_TRAINER_KEYS}
    first["created_at"] = "2026-11-20T08:00:00.123456+00:00"  # isoformat, as it wrote them
    (old / "manifest.json").write_text(json.dumps(first, indent=2, sort_keys=True))

    artifact = load_artifact(old)
    assert artifact.manifest.signals is None
    assert artifact.manifest.fold_in.confidence_scale == 1.0
    assert artifact.manifest.trained_at.tzinfo is not None
    user = str(artifact.arrays["user_ids"][0])
    result = Recommender(prepare(artifact)).recommend(Query(user_id=user, limit=5))
    assert result.source == "model"
    assert len(result.items) == 5


def test_recipes_are_written_as_the_trainer_always_wrote_them(tmp_path: Path) -> None:
    body = _body().model_copy(
        update={"recipes": {p: Recipe(weights={"als": 1.0, "ease": 0.0}) for p in PROTOCOLS}}
    )
    path = write_artifact(tmp_path, "v1", _arrays(), body)
    written = json.loads((path / "manifest.json").read_text())["recipes"]
    assert written == {p: Recipe(weights={"als": 1.0}).to_dict() for p in PROTOCOLS}
    assert load_artifact(path).manifest.recipes["all"].weights == {"als": 1.0}


def test_a_manifest_without_what_serving_needs_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    path = _writable(_write(tmp_path))
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["recipes"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest field 'recipes'"):
        load_artifact(path)
    manifest["recipes"] = {"all": {"weights": {"als": 1.0}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no recipe for protocol novel"):
        load_artifact(path)


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artifact-f22ca76"


def test_a_version_written_by_the_untyped_trainer_loads_and_serves() -> None:
    from service.activity.records import Activity
    from service.recommend.recommender import Query, Recommender
    from service.recommend.serving import prepare

    written = json.loads((FIXTURE / "manifest.json").read_text())
    artifact = load_artifact(FIXTURE)  # every checksum and shape as that trainer recorded them
    manifest = artifact.manifest
    assert manifest.version == written["version"]
    assert manifest.served == written["served"]
    assert manifest.metrics.test == written["metrics"]["test"]
    assert manifest.trained_at.isoformat() == written["created_at"]
    assert manifest.counts.users == written["counts"]["users"] == artifact.n_users
    assert {p: r.to_dict() for p, r in manifest.recipes.items()} == written["recipes"]
    recommender = Recommender(prepare(artifact))
    user = str(artifact.arrays["user_ids"][0])
    assert recommender.recommend(Query(user_id=user, limit=5)).source == "model"
    moment = manifest.data_until
    viewed = [Activity(str(i), "view", moment) for i in artifact.arrays["item_ids"][:3]]
    assert recommender.recommend(Query(user_id="new", limit=5), viewed).source == "session"


# --- issue 11, item 9: read-only versions, loads that own their memory, pruning ------------


def test_published_files_are_read_only(tmp_path: Path) -> None:
    path = _write(tmp_path)
    modes = {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()}
    assert set(modes) == {f"{name}.npy" for name in REQUIRED_ARRAYS} | {"manifest.json"}
    assert set(modes.values()) == {0o444}


@pytest.mark.parametrize("verify", [True, False])
def test_an_owned_load_is_checked_and_never_reads_the_file_again(
    tmp_path: Path, verify: bool
) -> None:
    path = _write(tmp_path)
    owned = load_artifact(path, mmap=False, verify_checksums=verify)
    expected = _arrays()
    for name, array in owned.arrays.items():
        assert not isinstance(array, np.memmap)
        assert not array.flags.writeable
        np.testing.assert_array_equal(array, expected[name])
    _writable(path)
    for file in path.glob("*.npy"):
        with open(file, "r+b") as fh:  # truncated in place, as `cp backup/* live/` does first
            fh.truncate(0)
    np.testing.assert_array_equal(owned.arrays["item_factors"], expected["item_factors"])
    with pytest.raises(ArtifactError, match="bytes"):
        load_artifact(path, mmap=False, verify_checksums=verify)


def test_an_owned_load_refuses_a_file_overwritten_in_place(tmp_path: Path) -> None:
    path = _writable(_write(tmp_path))
    file = path / "popularity.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    with open(file, "r+b") as fh:
        fh.write(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(path, mmap=False)


def test_pruning_keeps_the_newest_the_current_and_the_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    names = [f"v{i:02d}" for i in range(8)]
    for name in names:
        _write(tmp_path, name)
    store.promote("v01")
    store.promote("v02")  # current v02, previous v01; v03..v07 refused (never promoted)
    leftover = tmp_path / "versions" / ".tmp-v08-being-written"
    leftover.mkdir()
    assert store.prunable(keep=3) == ["v00", "v03", "v04"]
    assert store.prune(keep=3) == ["v00", "v03", "v04"]
    assert store.versions() == ["v01", "v02", "v05", "v06", "v07"]
    assert leftover.is_dir()  # a version being written is not a version
    assert store.prune(keep=3) == []
    assert store.rollback() == "v01"
    with pytest.raises(RegistryError, match="at least one"):
        store.prunable(keep=0)


def _cut_in_place(file: Path, keep: int) -> None:
    """What ``cp backup/x live/x`` does to the live file: truncate it, then write (here: only
    the first ``keep`` bytes, a copy caught half way)."""
    data = file.read_bytes()
    file.chmod(0o644)  # a root operator, or one who made it writable first
    with open(file, "r+b") as fh:
        fh.truncate(0)
        fh.write(data[:keep])


def test_a_served_version_changed_in_place_neither_crashes_nor_fails_a_request(
    small_model_root: Path, tmp_path: Path
) -> None:
    import httpx

    from benchmarks.harness import Server

    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    current, previous = store.current(), store.previous()
    assert current is not None
    assert previous is not None
    live = store.version_path(current)
    users = [str(u) for u in load_artifact(live).arrays["user_ids"][:20]]
    key = "frontend-key-0123456789"
    env = {
        "RECOFFER_MODEL_DIR": str(root),
        "RECOFFER_DATABASE_URL": f"sqlite:///{tmp_path / 'recoffer.db'}",
        "RECOFFER_FRONTEND_KEYS": key,
        "RECOFFER_ADMIN_KEYS": "admin-key-0123456789abcd",
        "RECOFFER_RELOAD_INTERVAL_SECONDS": "0.2",
    }

    def ask(client: httpx.Client) -> list[int]:
        statuses = []
        for n, user in enumerate(users):
            params = {"exclude_purchased": "true" if n % 2 else "false"}
            r = client.get(f"/v1/users/{user}/recommendations", params=params)
            statuses.append(r.status_code)
        # a visitor the model does not know: folded in from item factors at request time
        item = client.get(f"/v1/users/{users[0]}/recommendations").json()["items"][0]["item_id"]
        event = {"user_id": "visitor-1", "type": "view", "item_id": item}
        statuses.append(client.post("/v1/events", json=event).status_code)
        r = client.get("/v1/users/visitor-1/recommendations")
        statuses.append(r.status_code)
        assert r.json()["source"] in ("session", "model")
        statuses.append(client.get("/v1/model").status_code)
        return statuses

    with Server(env) as server, httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as c:
        assert set(ask(c)) == {200}
        for file in sorted(live.glob("*.npy")):  # every array cut short under the server
            _cut_in_place(file, keep=file.stat().st_size // 3)
        popularity = store.version_path(previous) / "popularity.npy"
        size = popularity.stat().st_size
        popularity.chmod(0o644)
        with open(popularity, "r+b") as fh:  # the previous version overwritten in place
            fh.seek(size - 8)
            fh.write(b"\xff" * 8)
        for _ in range(3):
            assert set(ask(c)) == {200}
        assert server.proc.poll() is None
        assert c.get("/v1/model").json()["version"] == current  # still its own copy
        # switching to either damaged version is refused; the one in memory keeps serving
        store.rollback()
        r = c.post("/v1/model/reload", headers={"X-API-Key": "admin-key-0123456789abcd"})
        assert r.status_code == 409
        assert "popularity.npy" in r.json()["detail"]
        assert set(ask(c)) == {200}
        assert c.get("/v1/model").json()["version"] == current
        assert server.proc.poll() is None
