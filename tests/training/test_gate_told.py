"""The gate is told when an A/B test promoted the current version (issue 14, item 3): the next
run compares against that version and its report says why it is current."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from service.artifact import ModelStore, TrainingRun, read_manifest, record_run
from training.data.formats import Purchases
from training.gate import why_current
from training.models import ModelParams
from training.pipeline import TrainConfig, run

FAST = ModelParams(factors=8, iterations=5, threads=1)


def test_the_next_run_compares_with_the_promoted_version_and_names_the_experiment(
    tmp_path: Path, tiny_purchases: Purchases
) -> None:
    config = TrainConfig(model_dir=tmp_path, params=FAST, force=True)
    for _ in range(2):
        run(config, purchases=tiny_purchases)
    store = ModelStore(tmp_path)
    older, newer = store.previous(), store.current()
    assert older
    assert newer
    assert why_current(store) is None  # a training run promoted it
    # what Experiments.promote does: the registry, then the run's record
    store.promote(older)
    now = datetime.now(UTC)
    record_run(
        tmp_path,
        TrainingRun(
            started_at=now,
            finished_at=now,
            seconds=0,
            outcome="promoted",
            exit_code=0,
            by="experiment",
            version=older,
            current_before=newer,
            reasons=[f"promoted by experiment exp_1 (older model) over {newer}"],
        ),
    )
    told = why_current(store)
    assert told is not None
    assert "exp_1" in told
    assert older in told
    result = run(config, purchases=tiny_purchases)
    assert result.gate.current_version == older
    assert result.gate.current_reason == told
    assert told in result.gate.notes
    gate = read_manifest(store.version_path(result.version)).gate
    assert gate is not None
    assert gate.model_dump()["current_reason"] == told
    # the run after that compares with a version a training run promoted: nothing to tell
    assert why_current(store) is None
