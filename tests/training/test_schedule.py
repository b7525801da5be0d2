"""The built-in scheduler and the crontab line the README documents (the Kubernetes manifests:
tests/deploy/test_kubernetes.py)."""

from __future__ import annotations

import itertools
import logging
import re
import shlex
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from croniter import croniter

from service.artifact import ModelStore, read_runs
from service.errors import ScheduleError
from training.cli import app
from training.schedule import Schedule, Scheduler, parse_every

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FAST = ["--tune-seconds", "0", "--factors", "8", "--iterations", "4", "--threads", "1"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86_400), ("30m", 1_800), ("90s", 90), ("1d", 86_400), ("1h30m", 5_400)],
)
def test_intervals(text: str, seconds: int) -> None:
    assert parse_every(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "24", "h", "0s", "1w", "24h and more"])
def test_bad_intervals_are_refused(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_every(text)


def test_a_schedule_is_an_interval_or_a_cron_expression() -> None:
    now = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)
    assert Schedule(cron="0 3 * * *").next_after(now) == datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    assert Schedule(every=timedelta(hours=6)).next_after(now) == now + timedelta(hours=6)
    for bad in ({}, {"every": timedelta(hours=1), "cron": "0 3 * * *"}, {"cron": "61 * * * *"}):
        with pytest.raises(ScheduleError):
            Schedule(**bad)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runs_continue_after_a_run_is_killed_and_slots_are_not_doubled(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    # each run appends a line; the second kills itself with SIGKILL, like an OOM kill would
    code = (
        "import os, signal, pathlib, time\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = len(p.read_text().splitlines()) if p.exists() else 0\n"
        "p.write_text(p.read_text() + 'x\\n' if p.exists() else 'x\\n')\n"
        "time.sleep(0.3)\n"
        "if n == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    scheduler = Scheduler(
        Schedule(every=timedelta(milliseconds=100)), _python(code), run_now=True, max_runs=3
    )
    history = scheduler.run()
    assert [r.outcome for r in history] == ["ok", "killed", "ok"]
    assert len(counter.read_text().splitlines()) == 3
    # a 0.3 s run on a 0.1 s schedule: the next starts after the last ended, never during it
    for before, after in itertools.pairwise(history):
        assert after.started_at >= before.started_at + timedelta(seconds=before.seconds)


def test_a_refused_run_is_logged_as_refused_not_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler = Scheduler(
        Schedule(every=timedelta(hours=1)), _python("raise SystemExit(3)"), run_now=True, max_runs=1
    )
    with caplog.at_level(logging.INFO, logger="training.schedule"):
        (run,) = scheduler.run()
    assert run.exit_code == 3
    assert run.outcome == "refused"
    assert not run.failed
    (finished,) = [r for r in caplog.records if r.getMessage() == "training_finished"]
    assert finished.outcome == "refused"  # type: ignore[attr-defined]
    assert finished.levelno == logging.INFO


def test_a_run_over_its_time_limit_is_killed(tmp_path: Path) -> None:
    scheduler = Scheduler(
        Schedule(every=timedelta(hours=1)),
        _python("import time; time.sleep(30)"),
        run_now=True,
        max_runs=1,
        timeout=timedelta(seconds=0.5),
    )
    (run,) = scheduler.run()
    assert run.outcome == "killed"
    assert run.seconds < 10


def test_stop_ends_the_wait_for_the_next_slot() -> None:
    scheduler = Scheduler(Schedule(every=timedelta(hours=24)), _python("pass"), run_now=True)
    threading.Timer(0.5, scheduler.stop).start()
    history = scheduler.run()  # would wait a day without the stop
    assert [r.outcome for r in history] == ["ok"]


def test_schedule_command_trains_twice_and_publishes(tmp_path: Path, shop_csv: Path) -> None:
    models = tmp_path / "models"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            "schedule",
            "--every",
            "1s",
            "--run-now",
            "--max-runs",
            "2",
            "--data",
            str(shop_csv),
            "--model-dir",
            str(models),
            *FAST,
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 run(s), 0 failed" in result.stderr
    store = ModelStore(models)
    assert len(store.versions()) == 2
    assert store.current() == store.versions()[-1]
    # each run recorded once, by the trainer itself; the scheduler adds only the 1 s slots
    # that a run outlasted, as skipped
    runs = read_runs(models).runs
    trained = [r for r in runs if r.by == "train"]
    assert [r.outcome for r in trained] == ["promoted"] * 2
    assert [r.version for r in trained] == store.versions()[::-1]
    assert {(r.outcome, r.by) for r in runs if r not in trained} <= {("skipped", "schedule")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "soon", "--data", "x.csv"], "--every"),
        (["--cron", "* *", "--data", "x.csv"], "cron"),
        (["--every", "1h"], "options of `recoffer train`"),
        (["--every", "1h", "--data", "x.csv", "--no-such-option"], "No such option"),
    ],
)
def test_schedule_refuses_bad_options_at_once(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.cli", "schedule", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def shop_csv(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Any) -> Path:
    from training.synthetic.shop import write_shop

    return write_shop(tiny_shop, tmp_path_factory.mktemp("shop"))["purchases"]


# --- the documented alternatives ------------------------------------------------------------


def _train_parses(args: list[str]) -> None:
    """The options are ones `recoffer train` accepts (parsed, not run)."""
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    command.make_context("train", args)


def test_the_readme_crontab_line_is_valid_and_runs_recoffer_train() -> None:
    lines = [line for line in README.splitlines() if re.match(r"^[\d*/,\-]+ [\d*/,\-]+ ", line)]
    assert lines, "the README shows a crontab line"
    trains = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        assert croniter.is_valid(" ".join(fields[:5]))
        if "recoffer train" not in fields[5]:  # e.g. a campaign's sweep by curl (issue 12)
            continue
        trains += 1
        command = shlex.split(fields[5].split("&&", 1)[1].split(">>")[0])
        assert command[0].endswith("recoffer")
        assert command[1] == "train"
        _train_parses(command[2:])
    assert trains, "the README shows the crontab line of retraining"
