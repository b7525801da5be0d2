"""``recoffer experiment start|status|stop|promote`` on the service's database and model root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.artifact import ModelStore, read_runs
from training.cli import app
from training.data.formats import Purchases
from training.models import ModelParams
from training.pipeline import TrainConfig, run

FAST = ModelParams(factors=8, iterations=5, threads=1)


@pytest.fixture
def root(tmp_path: Path, tiny_purchases: Purchases) -> Path:
    models = tmp_path / "models"
    for _ in range(2):
        run(TrainConfig(model_dir=models, params=FAST, force=True), purchases=tiny_purchases)
    return models


def _run(root: Path, *args: str) -> tuple[int, str, str]:
    database = f"sqlite:///{root.parent / 'recoffer.db'}"
    result = CliRunner().invoke(
        app, ["experiment", *args, "--database-url", database, "--model-dir", str(root)]
    )
    return result.exit_code, result.stdout, result.stderr


def test_start_status_and_promote_from_the_command_line(root: Path) -> None:
    store = ModelStore(root)
    previous, current = store.previous(), store.current()
    assert previous
    assert current
    code, out, _ = _run(root, "status")
    assert (code, out.strip()) == (0, "no experiment yet")
    code, out, err = _run(
        root, "start", "--name", "older", "--candidate-version", previous, "--json"
    )
    assert code == 0, err
    started = json.loads(out)
    assert started["status"] == "running"
    assert started["created_by"] == "cli"
    code, out, _ = _run(root, "status")
    assert code == 0
    assert started["id"] in out
    assert "guard: waiting for 1,000 impressions" in out
    code, out, _ = _run(root, "status", started["id"], "--json")
    assert json.loads(out)["results"]["arms"]["control"]["impressions"] == 0
    code, _, err = _run(root, "start", "--name", "again", "--candidate-version", previous)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert started["id"] in err
    code, out, err = _run(root, "promote", started["id"])
    assert code == 0, err
    assert f"{previous} is current (was {current})" in out
    assert store.current() == previous
    assert read_runs(root).runs[0].by == "experiment"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--candidate-version", "nonesuch"], "--candidate-version"),
        (["--candidate-version", "PREVIOUS", "--share", "1.5"], "--share"),
        (["--candidate-version", "PREVIOUS", "--candidate-recipe", "x"], "--candidate-recipe"),
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_exit_2(
    root: Path, args: list[str], option: str
) -> None:
    previous = ModelStore(root).previous()
    assert previous
    args = [previous if a == "PREVIOUS" else a for a in args]
    code, _, err = _run(root, "start", "--name", "x", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"error: {option}: " in err


def test_stopping_an_unknown_or_ended_experiment_says_so(root: Path) -> None:
    code, _, err = _run(root, "stop", "exp_nonesuch")
    assert code == 2
    assert "exp_nonesuch" in err
    previous = ModelStore(root).previous()
    assert previous
    _, out, _ = _run(root, "start", "--name", "x", "--candidate-version", previous, "--json")
    experiment_id = json.loads(out)["id"]
    assert _run(root, "stop", experiment_id)[0] == 0
    code, _, err = _run(root, "stop", experiment_id)
    assert code == 1
    assert "ended already" in err


def test_start_stores_the_guard_thresholds_of_the_environment(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOFFER_EXPERIMENT_GUARD_MIN_IMPRESSIONS", "50")
    monkeypatch.setenv("RECOFFER_EXPERIMENT_GUARD_Z", "4.5")
    monkeypatch.setenv("RECOFFER_EXPERIMENT_SRM_P", "0.01")
    previous = ModelStore(root).previous()
    assert previous
    code, out, err = _run(root, "start", "--name", "x", "--candidate-version", previous, "--json")
    assert code == 0, err
    started = json.loads(out)
    assert started["settings"] == {"min_impressions": 50, "z": 4.5, "srm_p": 0.01}
    code, out, _ = _run(root, "status")
    assert "guard: waiting for 50 impressions" in out


def test_a_bad_guard_threshold_in_the_environment_is_one_line_and_exit_2(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOFFER_EXPERIMENT_SRM_P", "2")
    code, _, err = _run(root, "status")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "RECOFFER_EXPERIMENT_SRM_P" in err
