"""The gate is told when an A/B test promoted the current version (issue 14, item 3): the next
run compares against that version and its report says why it is current."""

from __future__ import annotations

from pathlib import Path

from service.activity.repository import Repository
from service.activity.store import ActivityStore
from service.artifact import ModelStore, read_manifest
from service.clock import utc_now
from service.db import make_engine, migrate
from service.experiments.repository import ExperimentRepository
from service.experiments.service import Experiments
from service.metrics import Metrics
from service.recommend.holder import ModelHolder
from service.recommend.service import Recommendations
from training.data.formats import Purchases
from training.gate import why_current
from training.models import ModelParams
from training.pipeline import TrainConfig, run

FAST = ModelParams(factors=8, iterations=5, threads=1)


def test_the_next_run_compares_with_the_promoted_version_and_names_the_experiment(
    tmp_path: Path, tiny_purchases: Purchases
) -> None:
    models = tmp_path / "models"
    config = TrainConfig(model_dir=models, params=FAST, force=True)
    for _ in range(2):
        run(config, purchases=tiny_purchases)
    store = ModelStore(models)
    older, newer = store.previous(), store.current()
    assert older
    assert newer
    assert why_current(store) is None  # a training run promoted it
    # an A/B test promotes the older version, as the API and `recoffer experiment` do
    engine = make_engine(f"sqlite:///{tmp_path / 'recoffer.db'}")
    migrate(engine)
    recommendations = Recommendations(
        ModelHolder(models), ActivityStore(), utc_now, Metrics(shared=None)
    )
    experiments = Experiments(
        ExperimentRepository(Repository(engine)), recommendations, utc_now, serve_here=False
    )
    started = experiments.start(name="older model", candidate_version=older)
    promoted = experiments.promote(started.id)
    engine.dispose()
    assert promoted.experiment.status == "promoted"
    assert store.current() == older
    told = why_current(store)
    assert told is not None
    assert started.id in told
    assert "older model" in told
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
