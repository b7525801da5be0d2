"""The ``recoffer`` command line: results, one-line errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.artifact import ModelStore
from service.db import make_engine
from service.tables import events, user_segments
from training.cli import app
from training.synthetic.shop import SyntheticShop, write_shop

runner = CliRunner()
FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def shop_csv(tmp_path_factory: pytest.TempPathFactory, tiny_shop: SyntheticShop) -> Path:
    files = write_shop(tiny_shop, tmp_path_factory.mktemp("shop"))
    return files["purchases"]


def _train(data: Path, models: Path, *extra: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ["train", "--data", str(data), "--model-dir", str(models), *FAST, *extra]
    )
    return result.exit_code, result.stdout, result.stderr


def test_train_json_prints_one_object_with_version_promoted_served_metrics(
    shop_csv: Path, tmp_path: Path
) -> None:
    code, stdout, stderr = _train(shop_csv, tmp_path, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["promoted"] is True
    assert ModelStore(tmp_path).current() == doc["version"]
    for protocol in ("all", "novel"):
        served = doc["metrics"][protocol]["served"]
        assert set(served) >= {"recall@10", "ndcg@10", "precision@10", "hit_rate@10"}
        assert doc["metrics"][protocol]["popularity"]["ndcg@10"] >= 0
    assert "protocol all" in stderr  # the table went to stderr, keeping stdout pure JSON


def test_train_prints_tables_then_models_lists_and_rollback_switches(
    shop_csv: Path, tmp_path: Path
) -> None:
    code, stdout, _ = _train(shop_csv, tmp_path)
    assert code == 0
    assert "protocol all" in stdout
    assert "protocol novel" in stdout
    assert "blend" in stdout
    first = ModelStore(tmp_path).current()
    assert _train(shop_csv, tmp_path)[0] == 0
    second = ModelStore(tmp_path).current()
    assert first != second

    listed = runner.invoke(app, ["models", "--model-dir", str(tmp_path), "--json"])
    doc = json.loads(listed.stdout)
    assert [v["version"] for v in doc["versions"]] == [first, second]
    assert doc["current"] == second

    back = runner.invoke(app, ["rollback", "--model-dir", str(tmp_path)])
    assert back.exit_code == 0
    assert f"{second} -> {first}" in back.stdout
    assert ModelStore(tmp_path).current() == first

    shown = runner.invoke(app, ["evaluate", "--model-dir", str(tmp_path), "--json"])
    assert json.loads(shown.stdout)["version"] == first


def test_a_refused_run_exits_3_and_leaves_the_current_model(
    shop_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.pipeline as pipeline

    code, _, stderr = _train(shop_csv, tmp_path, "--tune-seconds", "2")
    assert code == 0, stderr
    good = ModelStore(tmp_path).current()
    # a model serving plain popularity everywhere is clearly below the current one
    monkeypatch.setattr(
        pipeline, "choose", lambda validation: dict.fromkeys(("all", "novel"), "popularity")
    )
    code, stdout, stderr = _train(shop_csv, tmp_path, "--json")
    assert code == 3, stderr
    assert json.loads(stdout)["promoted"] is False
    assert "NOT promoted" in stderr
    assert "below the current model" in stderr
    assert ModelStore(tmp_path).current() == good
    code, _, stderr = _train(shop_csv, tmp_path, "--force")
    assert code == 0, stderr


def test_evaluate_rescores_a_model_on_a_data_file(shop_csv: Path, tmp_path: Path) -> None:
    assert _train(shop_csv, tmp_path)[0] == 0
    result = runner.invoke(
        app, ["evaluate", "--model-dir", str(tmp_path), "--data", str(shop_csv), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["metrics"]["all"]["served"]["ndcg@10"] > 0
    assert "optimistic" in doc["warning"]  # it saw that test window while training


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv"], "file not found"),
        (["--data", "{shop}", "--columns", "user=nope"], "nope"),
        (["--data", "{shop}", "--columns", "garbage"], "column"),
        (["--data", "{shop}", "--format", "exotic"], "unknown format"),
        (["--data", "{shop}", "--test-days", "4000"], "choose fewer test days"),
        (["--data", "{shop}", "--factors", "0"], "factors"),
        (["--data", "{shop}", "--tune-seconds", "-1"], "tune-seconds"),
        (["--data", "{shop}", "--eval-users", "0"], "--eval-users must be >= 1"),
        (["--data", "{shop}", "--eval-users", "-5"], "--eval-users must be >= 1"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    shop_csv: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.replace("{shop}", str(shop_csv)) for a in args]
    result = runner.invoke(app, ["train", "--model-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("recoffer: error:")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_evaluate_refuses_eval_users_below_1_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model-dir", str(tmp_path), "--eval-users", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["recoffer: error: --eval-users must be >= 1, got 0"]


def test_train_says_which_test_users_the_figures_rest_on(shop_csv: Path, tmp_path: Path) -> None:
    args = ["--data", str(shop_csv), "--model-dir", str(tmp_path), "--eval-users", "5", "--json"]
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["evaluation"]["users"] == 5
    assert doc["evaluation"]["of_users"] > 5
    assert "a seeded sample of 5 of" in result.stderr
    shown = runner.invoke(app, ["evaluate", "--model-dir", str(tmp_path), "--json"])
    assert json.loads(shown.stdout)["evaluation"] == {**doc["evaluation"], "seed": 0}
    shown = runner.invoke(app, ["evaluate", "--model-dir", str(tmp_path)])
    assert "a seeded sample of 5 of" in shown.stderr
    rescored = runner.invoke(
        app,
        ["evaluate", "--model-dir", str(tmp_path), "--data", str(shop_csv), "--eval-users", "7"],
    )
    assert rescored.exit_code == 0, rescored.stderr
    assert "a seeded sample of 7 of" in rescored.stderr


def test_unparsable_timestamp_is_named(tmp_path: Path) -> None:
    data = tmp_path / "p.csv"
    data.write_text("user_id,item_id,timestamp\nu1,i1,2024-01-01 10:00:00\nu1,i2,yesterday\n")
    result = runner.invoke(app, ["train", "--data", str(data), "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "yesterday" in result.stderr


def test_rollback_with_nothing_to_roll_back_exits_2(shop_csv: Path, tmp_path: Path) -> None:
    empty = runner.invoke(app, ["rollback", "--model-dir", str(tmp_path)])
    assert empty.exit_code == 2
    assert "no model versions" in empty.stderr
    assert _train(shop_csv, tmp_path)[0] == 0
    only_one = runner.invoke(app, ["rollback", "--model-dir", str(tmp_path)])
    assert only_one.exit_code == 2
    assert "nothing to roll back" in only_one.stderr


@pytest.mark.parametrize("command", ["models", "prune", "rollback"])
def test_a_mistyped_model_dir_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [command, "--model-dir", str(tmp_path / "modles")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"recoffer: error: --model-dir: no such directory: {tmp_path / 'modles'}"
    ]
    assert not (tmp_path / "modles").exists()


def test_evaluate_without_a_model_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "train one first" in result.stderr


def test_help_shows_examples() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert "--tune-seconds" in result.stdout


def test_demo_generates_trains_and_prints_the_table(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "demo",
            "--workdir",
            str(tmp_path),
            "--preset",
            "tiny",
            "--tune-seconds",
            "0",
            "--no-serve",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "data" / "tiny" / "purchases.csv").is_file()
    assert "protocol novel" in result.stdout
    first = ModelStore(tmp_path / "models").current()
    assert first is not None
    assert (tmp_path / "recoffer.db").is_file()  # seeded with the new users' events
    # ...and the shop's past orders, every one of them, with everyone's segment computed
    purchases = pd.read_csv(tmp_path / "data" / "tiny" / "purchases.csv")
    engine = make_engine(f"sqlite:///{tmp_path / 'recoffer.db'}")
    try:
        with engine.connect() as conn:
            kept = conn.execute(
                select(func.count()).select_from(events).where(events.c.type == "purchase")
            ).scalar_one()
            segmented = conn.execute(select(func.count()).select_from(user_segments)).scalar_one()
    finally:
        engine.dispose()
    new_users = pd.read_csv(tmp_path / "data" / "tiny" / "events.csv")
    assert kept == len(purchases) + int((new_users["type"] == "purchase").sum())
    assert segmented >= purchases["user_id"].nunique()
    again = runner.invoke(
        app, ["demo", "--workdir", str(tmp_path), "--preset", "tiny", "--no-serve"]
    )
    assert again.exit_code == 0, again.stderr
    assert "already trained" in again.stderr
    assert ModelStore(tmp_path / "models").current() == first


def test_runs_prune_old_versions_and_prune_removes_the_rest(
    shop_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOFFER_KEEP_VERSIONS", "2")
    for _ in range(3):
        assert _train(shop_csv, tmp_path, "--force")[0] == 0
    store = ModelStore(tmp_path)
    # keep 2 newest + current + previous: the current and previous are among them here
    assert len(store.versions()) == 2
    code, _, stderr = _train(shop_csv, tmp_path, "--force", "--keep-versions", "5")
    assert code == 0, stderr
    assert len(store.versions()) == 3
    current, previous = store.current(), store.previous()
    monkeypatch.delenv("RECOFFER_KEEP_VERSIONS")

    oldest = store.versions()[0]
    dry = runner.invoke(app, ["prune", "--model-dir", str(tmp_path), "--keep", "1", "--dry-run"])
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.split() == ["would", "remove", oldest]
    assert len(store.versions()) == 3
    done = runner.invoke(app, ["prune", "--model-dir", str(tmp_path), "--keep", "1"])
    assert done.exit_code == 0, done.stderr
    assert done.stdout.split() == ["removed", oldest]
    assert store.versions() == sorted([previous, current])  # type: ignore[type-var]
    bad = runner.invoke(app, ["prune", "--model-dir", str(tmp_path), "--keep", "0"])
    assert bad.exit_code == 2


def test_prune_waits_for_no_trainer(shop_csv: Path, tmp_path: Path) -> None:
    from training.lock import trainer_lock

    (tmp_path / "none").mkdir()
    empty = runner.invoke(app, ["prune", "--model-dir", str(tmp_path / "none")])
    assert empty.exit_code == 0  # an empty root: nothing to prune
    assert "no model versions" in empty.stderr
    assert list((tmp_path / "none").iterdir()) == []
    assert _train(shop_csv, tmp_path)[0] == 0
    with trainer_lock(tmp_path):
        busy = runner.invoke(app, ["prune", "--model-dir", str(tmp_path)])
    assert busy.exit_code == 1
    assert "another trainer is running" in busy.stderr
