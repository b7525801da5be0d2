"""The artifact contract (docs/artifact.md) against the code, and an artifact written by hand.

The page's tables are compared with the pydantic models and the loader's array rules, so
neither can change alone. The page's example (numpy and json, no recoffer writer) is run as
it stands and served through the API on every recommendation endpoint; every required field
and array left out is refused naming it, without a 500 anywhere; and the next trainer's gate,
given a current version by such an engine, records how it compared (never a silent pass).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.app import create_app
from service.artifact import ARRAYS, REQUIRED_ARRAYS, ModelStore, load_artifact
from service.artifact import manifest as manifest_module
from service.errors import ArtifactError
from service.scoring import Recipe
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "artifact.md").read_text()
KEY = "frontend-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": KEY}
A = {"X-API-Key": ADMIN}


# --- the page's tables against the code ----------------------------------------------------


def _table(name: str) -> list[dict[str, str]]:
    """The rows of the table after ``<!-- contract: name -->``, keyed by its header."""
    marker = re.search(rf"<!-- contract: {re.escape(name)} -->\n((?:\|.*\n)+)", DOC)
    assert marker is not None, f"docs/artifact.md has no table for {name}"
    lines = [line.strip().strip("|").split("|") for line in marker.group(1).splitlines()]
    header = [cell.strip() for cell in lines[0]]
    return [dict(zip(header, (c.strip() for c in row), strict=True)) for row in lines[2:]]


def _code(cell: str) -> str:
    assert cell.startswith("`"), cell
    assert cell.endswith("`"), cell
    return cell[1:-1]


def _default_json(field: Any) -> Any:
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


MODELS: dict[str, type[BaseModel]] = {
    "Manifest": manifest_module.Manifest,
    "ArraySpec": manifest_module.ArraySpec,
    "FileSpec": manifest_module.FileSpec,
    "AnnInfo": manifest_module.AnnInfo,
    "Counts": manifest_module.Counts,
    "Figures": manifest_module.Figures,
    "EngineInfo": manifest_module.EngineInfo,
    "EvaluationInfo": manifest_module.EvaluationInfo,
    "GateInfo": manifest_module.GateInfo,
    "SplitInfo": manifest_module.SplitInfo,
    "SignalsInfo": manifest_module.SignalsInfo,
    "FoldIn": manifest_module.FoldIn,
    "DataInfo": manifest_module.DataInfo,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_manifest_table_lists_the_models_fields_required_and_defaults(name: str) -> None:
    model = MODELS[name]
    rows = {_code(row["field"]): row for row in _table(name)}
    fields = {(f.alias or key): f for key, f in model.model_fields.items()}
    assert set(rows) == set(fields), name
    for key, field in fields.items():
        row = rows[key]
        assert row["required"] == ("yes" if field.is_required() else "no"), (name, key)
        if field.is_required():
            assert row["default"] == "—", (name, key)
        else:
            assert json.loads(_code(row["default"])) == _default_json(field), (name, key)
        assert row["meaning"], (name, key)


def test_the_recipe_table_lists_the_recipes_fields_and_defaults() -> None:
    rows = {_code(row["field"]): row for row in _table("Recipe")}
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    assert set(rows) == set(fields)
    defaults = Recipe().to_dict()
    for key in fields:
        assert json.loads(_code(rows[key]["default"])) == defaults[key], key


def test_the_arrays_table_is_the_loaders_rules() -> None:
    rows = _table("arrays")
    assert [_code(r["array"]) for r in rows] == list(ARRAYS)
    for row in rows:
        rule = ARRAYS[_code(row["array"])]
        assert _code(row["dtype kind"]) == rule.kinds
        assert int(row["dims"]) == rule.ndim
        assert row["required"] == ("yes" if rule.required else "no")
        assert row["meaning"] == rule.meaning
    assert tuple(_code(r["array"]) for r in rows if r["required"] == "yes") == REQUIRED_ARRAYS


# --- the page's example, served ----------------------------------------------------------


def _example() -> str:
    block = re.search(r"## A minimal example.*?```python\n(.*?)```", DOC, re.S)
    assert block is not None
    return block.group(1)


@pytest.fixture
def by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The model root of the page's example, written by running it as it stands."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var" / "models" / "versions").mkdir(parents=True)
    scope: dict[str, Any] = {}
    exec(compile(_example(), "docs/artifact.md", "exec"), scope)  # the page's own code
    root = tmp_path / "var" / "models"
    version = str(scope["version"])
    ModelStore(root).promote(version)
    return root, version


def _client(root: Path, database_url: str) -> TestClient:
    settings = Settings(
        model_dir=root,
        database_url=database_url,
        frontend_keys=[KEY],
        admin_keys=[ADMIN],
        marketing_keys=["marketing-key-0123456789"],
        reload_interval_seconds=0.1,
        access_log=False,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def served(by_hand: tuple[Path, str], tmp_path: Path) -> Iterator[TestClient]:
    with _client(by_hand[0], f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        yield client


def test_the_pages_example_loads_with_every_check(by_hand: tuple[Path, str]) -> None:
    root, version = by_hand
    artifact = load_artifact(ModelStore(root).version_path(version), mmap=False)
    assert artifact.manifest.engine.name == "numpy-by-hand"
    assert (artifact.n_users, artifact.n_items) == (2, 3)
    assert artifact.manifest.params == {}
    assert artifact.manifest.signals is None


def test_an_artifact_written_by_hand_serves_every_recommendation_endpoint(
    served: TestClient, by_hand: tuple[Path, str]
) -> None:
    version = by_hand[1]
    model = served.get("/v1/model", headers=F)
    assert model.status_code == 200, model.text
    assert model.json()["version"] == version
    assert model.json()["counts"] == {"users": 2, "items": 3}
    known = served.get("/v1/users/alice/recommendations", params={"limit": 3}, headers=F)
    assert known.status_code == 200, known.text
    assert known.json()["source"] == "model"
    assert known.json()["model_version"] == version
    assert [i["item_id"] for i in known.json()["items"]][:1] == ["mug"]  # alice's taste: 1, 0
    novel = served.get(
        "/v1/users/alice/recommendations",
        params={"limit": 3, "exclude_purchased": "true"},  # topped up: never with alice's mug
        headers=F,
    )
    assert novel.status_code == 200
    assert "mug" not in {i["item_id"] for i in novel.json()["items"]}
    again = served.get(
        "/v1/users/bob/recommendations", params={"purchased_within_days": 30}, headers=F
    )
    assert again.status_code == 200
    assert [i["item_id"] for i in again.json()["items"]] == ["tea"]
    posted = served.post("/v1/users/alice/recommendations", json={"limit": 2}, headers=F)
    assert posted.status_code == 200, posted.text
    stranger = served.get("/v1/users/nobody/recommendations", headers=F)
    assert stranger.status_code == 200
    assert stranger.json()["source"] == "popular"
    event = {"user_id": "visitor", "type": "view", "item_id": "pot"}
    assert served.post("/v1/events", json=event, headers=F).status_code == 200
    session = served.get("/v1/users/visitor/recommendations", headers=F)
    assert session.status_code == 200
    assert session.json()["source"] == "session"
    similar = served.get("/v1/items/mug/similar", params={"limit": 2}, headers=F)
    assert similar.status_code == 200, similar.text
    assert {i["item_id"] for i in similar.json()["items"]} <= {"tea", "pot"}
    assert served.get("/v1/model/versions", headers=A).status_code == 200
    assert served.get("/metrics").status_code == 200
    assert served.get("/readyz").status_code == 200


# --- every required part left out: refused, naming it, never a 500 --------------------------


def _manifest(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "manifest.json").read_text()))


def _rewrite(path: Path, manifest: dict[str, Any]) -> None:
    file = path / "manifest.json"
    file.chmod(0o644)
    file.write_text(json.dumps(manifest))


REQUIRED_FIELDS = [
    key
    for key, field in manifest_module.Manifest.model_fields.items()
    if field.is_required() and key != "schema_version"  # its own refusal, below
]


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_a_manifest_without_a_required_field_is_refused_naming_it(
    by_hand: tuple[Path, str], field: str
) -> None:
    path = ModelStore(by_hand[0]).version_path(by_hand[1])
    manifest = _manifest(path)
    del manifest[field]
    _rewrite(path, manifest)
    with pytest.raises(ArtifactError, match=rf"manifest field '{field}' is required and missing"):
        load_artifact(path, mmap=False)


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        ("counts.users", "'counts.users' is required"),
        ("counts.items", "'counts.items' is required"),
        ("recipes.novel", "no recipe for protocol novel"),
        ("served.all", "no served candidate named for protocol all"),
        ("metrics.test", "'metrics.test' is required"),
    ],
)
def test_a_manifest_without_a_required_part_is_refused_naming_it(
    by_hand: tuple[Path, str], part: str, problem: str
) -> None:
    path = ModelStore(by_hand[0]).version_path(by_hand[1])
    manifest = _manifest(path)
    outer, inner = part.split(".")
    del manifest[outer][inner]
    _rewrite(path, manifest)
    with pytest.raises(ArtifactError, match=problem):
        load_artifact(path, mmap=False)


@pytest.mark.parametrize("array", REQUIRED_ARRAYS)
def test_a_missing_required_array_is_refused_naming_it(
    by_hand: tuple[Path, str], array: str
) -> None:
    path = ModelStore(by_hand[0]).version_path(by_hand[1])
    manifest = _manifest(path)
    del manifest["arrays"][array]
    _rewrite(path, manifest)
    with pytest.raises(ArtifactError, match=rf"lacks the required array {array} "):
        load_artifact(path, mmap=False)


def _replace_array(path: Path, name: str, array: np.ndarray[Any, Any]) -> None:
    """``name`` replaced by ``array``, its entry updated as a careless writer would."""
    file = path / f"{name}.npy"
    if file.exists():
        file.chmod(0o644)
    np.save(file, array, allow_pickle=False)
    data = file.read_bytes()
    manifest = _manifest(path)
    manifest["arrays"][name] = {
        "file": file.name,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _rewrite(path, manifest)


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("user_ids", np.array([1, 2]), "array user_ids is <i8 with 1 dimension.*unicode"),
        ("item_factors", np.ones(3, dtype=np.float32), "array item_factors .* float with 2"),
        ("history_indices", np.array([0.0, 1.0]), "array history_indices .* int"),
        ("item_names", np.array(["a", "b"]), "item_names length != items"),
        ("user_ids", np.array(["alice", "alice"]), "user_ids holds 1 repeated id"),
        ("history_indptr", np.array([0, 2, 1]), "history_indptr"),
    ],
)
def test_arrays_of_the_wrong_kind_or_size_are_refused_naming_them(
    by_hand: tuple[Path, str], name: str, array: np.ndarray[Any, Any], problem: str
) -> None:
    from service.recommend.serving import prepare

    path = ModelStore(by_hand[0]).version_path(by_hand[1])
    _replace_array(path, name, array)
    with pytest.raises(ArtifactError, match=problem):
        prepare(load_artifact(path, mmap=False))


def test_counts_that_do_not_describe_the_arrays_are_refused(by_hand: tuple[Path, str]) -> None:
    path = ModelStore(by_hand[0]).version_path(by_hand[1])
    manifest = _manifest(path)
    manifest["counts"]["items"] = 4
    _rewrite(path, manifest)
    with pytest.raises(ArtifactError, match=r"counts say 2 users x 4 items, the arrays hold 2 x 3"):
        load_artifact(path, mmap=False)


def _assert_never_500(client: TestClient) -> dict[str, int]:
    statuses = {
        "model": client.get("/v1/model", headers=F).status_code,
        "versions": client.get("/v1/model/versions", headers=A).status_code,
        "metrics": client.get("/metrics").status_code,
        "readyz": client.get("/readyz").status_code,
        "known": client.get("/v1/users/alice/recommendations", headers=F).status_code,
        "posted": client.post("/v1/users/alice/recommendations", json={}, headers=F).status_code,
        "similar": client.get("/v1/items/mug/similar", headers=F).status_code,
    }
    assert all(code < 500 or code == 503 for code in statuses.values()), statuses
    return statuses


@pytest.mark.parametrize("field", ["recipes", "created_at", "counts", "metrics"])
def test_a_broken_current_version_never_makes_the_api_answer_500(
    by_hand: tuple[Path, str], tmp_path: Path, field: str
) -> None:
    root, version = by_hand
    path = ModelStore(root).version_path(version)
    manifest = _manifest(path)
    del manifest[field]
    _rewrite(path, manifest)
    with _client(root, f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        statuses = _assert_never_500(client)
        assert statuses["model"] == 503
        assert statuses["metrics"] == 200
        detail = client.get("/v1/model", headers=F).json()["detail"]
        assert f"'{field}' is required and missing" in str(detail)
        reload = client.post("/v1/model/reload", headers=A)
        assert reload.status_code == 409
        assert field in reload.text
        # purchases in the event log: the no-model fallback serves them
        event = {"user_id": "carol", "type": "purchase", "item_id": "tea"}
        assert client.post("/v1/events", json=event, headers=F).status_code == 200
        fallback = client.get("/v1/users/alice/recommendations", headers=F)
        assert fallback.status_code == 200
        assert fallback.json()["source"] == "popular"
        assert 'recoffer_model_loads_total{outcome="failed"}' in client.get("/metrics").text


def test_a_broken_new_version_leaves_the_previous_one_serving(
    by_hand: tuple[Path, str], tmp_path: Path
) -> None:
    root, version = by_hand
    store = ModelStore(root)
    broken = "20261202T000000.000000Z-0002"
    shutil.copytree(store.version_path(version), store.version_path(broken))
    manifest = _manifest(store.version_path(broken))
    manifest["version"] = broken
    del manifest["arrays"]["popularity"]
    _rewrite(store.version_path(broken), manifest)
    with _client(root, f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        store.promote(broken)
        reload = client.post("/v1/model/reload", headers=A)
        assert reload.status_code == 409
        assert "popularity" in reload.text
        statuses = _assert_never_500(client)
        assert statuses["model"] == statuses["known"] == statuses["similar"] == 200
        assert client.get("/v1/model", headers=F).json()["version"] == version


# --- the next trainer's gate on a version another engine wrote ------------------------------


def write_by_hand(root: Path, version: str, arrays: dict[str, Any], body: dict[str, Any]) -> None:
    """A version written as docs/artifact.md says, with numpy and json only."""
    tmp = root / "versions" / f".tmp-{version}"
    tmp.mkdir(parents=True)
    table = {}
    for name, array in arrays.items():
        file = tmp / f"{name}.npy"
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)
        data = file.read_bytes()
        table[name] = {
            "file": file.name,
            "dtype": np.asarray(array).dtype.str,
            "shape": list(np.shape(array)),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    manifest = {"schema_version": 1, "version": version, "arrays": table, **body}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    for file in tmp.iterdir():
        file.chmod(0o444)
    os.rename(tmp, root / "versions" / version)
    ModelStore(root).promote(version)


def _other_engine(source: Path, root: Path) -> str:
    """A copy of the version at ``source`` as another engine would write it: the arrays the
    contract requires, the least manifest (no params, no signals), a foreign engine."""
    artifact = load_artifact(source)
    arrays = {name: np.asarray(artifact.arrays[name]) for name in REQUIRED_ARRAYS}
    manifest = artifact.manifest
    recipe = {"weights": {"als": 1.0}}
    body = {
        "created_at": manifest.created_at.isoformat(),
        "reference_time": manifest.reference_time.isoformat(),
        "counts": {"users": artifact.n_users, "items": artifact.n_items},
        "recipes": {"all": recipe, "novel": recipe},
        "served": {"all": "als", "novel": "als"},
        "metrics": {"test": {}},
        "engine": {"name": "numpy-by-hand", "fit": "elsewhere"},
    }
    version = "20260101T000000.000000Z-beef"  # sorts before the trainer's
    write_by_hand(root, version, arrays, body)
    return version


def test_the_gate_compares_a_foreign_version_directly_when_it_can(
    tiny_purchases: Any, tmp_path: Path
) -> None:
    from training.data.formats import purchases_from_frame
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    params = ModelParams(factors=8, iterations=4, threads=1)
    frame = tiny_purchases.frame
    older = purchases_from_frame(
        frame[frame["timestamp"] <= frame["timestamp"].max() - pd.Timedelta(days=30)], "older"
    )
    first = run(TrainConfig(model_dir=tmp_path / "pandas", params=params), purchases=older)
    root = tmp_path / "models"
    foreign = _other_engine(first.path, root)
    result = run(TrainConfig(model_dir=root, params=params), purchases=tiny_purchases)
    assert result.gate.method == "direct"  # no parameters needed: its own arrays score
    assert result.gate.current_version == foreign
    assert set(result.gate.current) == {"all", "novel"}


def test_the_gate_refuses_rather_than_refit_a_foreign_version_with_the_wrong_engine(
    tiny_purchases: Any, tmp_path: Path
) -> None:
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    params = ModelParams(factors=8, iterations=4, threads=1)
    first = run(TrainConfig(model_dir=tmp_path / "pandas", params=params), purchases=tiny_purchases)
    root = tmp_path / "models"
    foreign = _other_engine(first.path, root)
    refused = run(TrainConfig(model_dir=root, params=params), purchases=tiny_purchases)
    assert refused.gate.method == "other_engine"
    assert not refused.promoted
    assert ModelStore(root).current() == foreign
    assert "cannot refit" in refused.gate.reasons[0]
    assert any("'numpy-by-hand'" in note for note in refused.gate.notes)
    assert refused.manifest.gate is not None
    assert refused.manifest.gate.method == "other_engine"
    forced = run(TrainConfig(model_dir=root, params=params, force=True), purchases=tiny_purchases)
    assert forced.promoted
    assert forced.gate.method == "other_engine"
