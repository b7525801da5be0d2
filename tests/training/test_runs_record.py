"""The training runs record (``runs.jsonl``): written by every run, promoted, refused, failed or
skipped, and by the scheduler for a run killed before it could write; torn lines and size."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import training.pipeline as pipeline
from service.artifact import RUNS, TrainingRun, read_runs, record_run
from service.errors import DataError, TrainerBusyError
from service.scoring import PROTOCOLS
from training import exit_codes
from training.data.formats import Purchases
from training.lock import trainer_lock
from training.models import ModelParams
from training.pipeline import TrainConfig, run
from training.schedule import Schedule, Scheduler

FAST = ModelParams(factors=8, iterations=5, threads=1)


def test_promoted_and_refused_runs_are_recorded_with_the_gates_reasons(
    tmp_path: Path, tiny_purchases: Purchases, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(TrainConfig(model_dir=tmp_path, params=FAST), purchases=tiny_purchases)
    monkeypatch.setattr(
        pipeline, "choose", lambda validation: dict.fromkeys(PROTOCOLS, "popularity")
    )
    refused = run(TrainConfig(model_dir=tmp_path, params=FAST), purchases=tiny_purchases)
    assert first.promoted
    assert not refused.promoted
    newest, oldest = read_runs(tmp_path).runs
    assert oldest.outcome == "promoted"
    assert oldest.exit_code == exit_codes.OK
    assert oldest.version == first.version
    assert oldest.current_before is None
    assert newest.outcome == "refused"
    assert newest.exit_code == exit_codes.REFUSED
    assert newest.version == refused.version
    assert newest.current_before == first.version
    assert newest.reasons == refused.gate.reasons
    assert newest.reasons
    assert newest.started_at >= oldest.finished_at
    assert 0 < newest.seconds <= (newest.finished_at - newest.started_at).total_seconds() + 0.01


def test_a_failed_run_is_recorded_with_its_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        run(TrainConfig(model_dir=tmp_path))  # nothing to train on
    (failed,) = read_runs(tmp_path).runs
    assert failed.outcome == "failed"
    assert failed.exit_code == exit_codes.BAD_INPUT
    assert failed.error is not None
    assert failed.error.startswith("DataError: nothing to train on")
    assert failed.version is None


def test_a_crash_inside_the_pipeline_is_recorded_as_failed(
    tmp_path: Path, tiny_purchases: Purchases, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: object, **__: object) -> None:
        raise MemoryError("out of memory fitting ALS")

    monkeypatch.setattr(pipeline, "fit_stage", crash)
    with pytest.raises(MemoryError):
        run(TrainConfig(model_dir=tmp_path, params=FAST), purchases=tiny_purchases)
    (failed,) = read_runs(tmp_path).runs
    assert (failed.outcome, failed.exit_code) == ("failed", exit_codes.FAILED)
    assert failed.error == "MemoryError: out of memory fitting ALS"


def test_a_run_that_finds_another_trainer_is_recorded_as_skipped(
    tmp_path: Path, tiny_purchases: Purchases
) -> None:
    with trainer_lock(tmp_path), pytest.raises(TrainerBusyError):
        run(TrainConfig(model_dir=tmp_path, params=FAST), purchases=tiny_purchases)
    (skipped,) = read_runs(tmp_path).runs
    assert skipped.outcome == "skipped"
    assert skipped.error is not None
    assert "another trainer is running" in skipped.error


def _run(minute: int) -> TrainingRun:
    moment = datetime(2026, 12, 1, 10, minute, tzinfo=UTC)
    return TrainingRun(
        started_at=moment,
        finished_at=moment + timedelta(seconds=30),
        seconds=30.0,
        outcome="promoted",
        exit_code=0,
        version=f"v{minute:02d}",
    )


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_a_new_line(
    tmp_path: Path,
) -> None:
    record_run(tmp_path, _run(1))
    with open(tmp_path / RUNS, "ab") as fh:
        fh.write(b'{"started_at": "2026-12-01T10:02:00Z", "secon')  # killed mid-write
    assert [r.version for r in read_runs(tmp_path).runs] == ["v01"]
    assert read_runs(tmp_path).unreadable_lines == 1
    record_run(tmp_path, _run(3))
    log = read_runs(tmp_path)
    assert [r.version for r in log.runs] == ["v03", "v01"]
    assert log.unreadable_lines == 1


def test_the_record_stays_bounded(tmp_path: Path) -> None:
    for n in range(250):
        record_run(tmp_path, _run(n % 60), keep=20)
    lines = (tmp_path / RUNS).read_bytes().splitlines()
    assert 20 <= len(lines) <= 20 + 100  # trimmed past a margin, never unbounded
    newest = [r.version for r in read_runs(tmp_path, limit=3).runs]
    assert newest == ["v09", "v08", "v07"]  # runs 249, 248, 247


def test_trimming_rewrites_the_file_to_the_newest_records(tmp_path: Path) -> None:
    lines = b"".join(_run(m % 60).model_dump_json().encode() + b"\n" for m in range(120))
    (tmp_path / RUNS).write_bytes(lines + b"{torn")
    record_run(tmp_path, _run(59), keep=3)
    assert len((tmp_path / RUNS).read_bytes().splitlines()) == 3
    log = read_runs(tmp_path)
    assert [r.version for r in log.runs] == ["v59", "v59", "v58"]
    assert log.unreadable_lines == 0


def test_the_scheduler_records_a_run_killed_before_it_could(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    scheduler = Scheduler(
        Schedule(every=timedelta(hours=1)),
        [sys.executable, "-c", code],
        run_now=True,
        max_runs=1,
        model_dir=tmp_path,
    )
    (outcome,) = scheduler.run()
    assert outcome.exit_code == -signal.SIGKILL
    (killed,) = read_runs(tmp_path).runs
    assert (killed.outcome, killed.by) == ("failed", "schedule")
    assert killed.error == "killed by signal SIGKILL"


def test_the_scheduler_does_not_double_a_run_the_trainer_recorded(tmp_path: Path) -> None:
    # a child that records itself as the trainer does, then ends with the refused code
    code = (
        "import sys; from datetime import UTC, datetime; from pathlib import Path\n"
        "from service.artifact import TrainingRun, record_run\n"
        "now = datetime.now(UTC)\n"
        f"record_run(Path({str(tmp_path)!r}), TrainingRun(started_at=now, finished_at=now, "
        "seconds=0, outcome='refused', exit_code=3))\n"
        "sys.exit(3)\n"
    )
    scheduler = Scheduler(
        Schedule(every=timedelta(hours=1)),
        [sys.executable, "-c", code],
        run_now=True,
        max_runs=1,
        model_dir=tmp_path,
    )
    (outcome,) = scheduler.run()
    assert outcome.outcome == "refused"
    (only,) = read_runs(tmp_path).runs
    assert (only.outcome, only.by) == ("refused", "train")


def test_the_schedule_command_records_a_run_that_stopped_before_training(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    # `recoffer train` without --data or --database-url stops at once (exit 2), in the CLI
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.cli",
            "schedule",
            "--every",
            "1h",
            "--run-now",
            "--max-runs",
            "1",
            "--model-dir",
            str(models),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    (stopped,) = read_runs(models).runs
    assert (stopped.outcome, stopped.exit_code, stopped.by) == ("failed", 2, "schedule")
    assert stopped.error == "recoffer train exited with code 2 before training started"
