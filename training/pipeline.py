"""The whole training flow: load -> split -> fit -> tune -> evaluate -> gate -> publish.

Three nested temporal stages share one set of hyper-parameters:

- validation: fit on purchases up to ``end - 2 x test_days``, tune and choose candidates on the
  next ``test_days``;
- test: warm-started from the validation factors, fit up to ``end - test_days``, and score every
  candidate on the last ``test_days`` (the figures reported and gated);
- serving: warm-started again on every purchase, written as the artifact.

Warm starts make the three stages cost little more than one cold ALS fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from service.artifact import (
    KEEP_VERSIONS,
    Manifest,
    ManifestBody,
    ModelStore,
    TrainingRun,
    new_version_name,
    read_manifest,
    record_run,
)
from service.artifact.manifest import EvaluationInfo, Figures, GateInfo, SplitInfo
from service.artifact.runs import Outcome
from service.errors import (
    ArtifactError,
    DataError,
    RecofferError,
    TrainerBusyError,
    kind_of,
)
from service.scoring import PROTOCOLS
from training import exit_codes
from training.data.database import (
    combine_purchases,
    load_database_purchases,
    load_database_signals,
)
from training.data.files import ReadOptions
from training.data.formats import CleaningReport, ColumnMapping, Purchases, load_purchases
from training.encode import IdMaps, encode
from training.erasure import honour_erasures
from training.evaluate import (
    METRICS,
    TEST_DAYS,
    EvalSet,
    MetricTable,
    RankTally,
    Split,
    chunk_users_for,
    chunks,
    describe_evaluation,
    metric_key,
    temporal_split,
    truth_of,
)
from training.gate import GateDecision, current_model_params, gate_new_model
from training.lock import trainer_lock
from training.models import Candidates, ModelParams, Stage, default_candidates, fit_stage
from training.publish import artifact_arrays, describe, publish, with_ann_index
from training.signals import SIGNAL_TYPES, Signals, encode_signals
from training.tune import TRIALS, tune

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    model_dir: Path
    data: Path | None = None
    # also train on the purchase events the API ingested, and on its views and add-to-carts as
    # weaker signals (weights in params)
    database_url: str | None = None
    fmt: str = "generic"
    columns: ColumnMapping | None = None
    test_days: float = TEST_DAYS
    tune_seconds: float = 0.0  # the cap on tuning's time; 0 turns tuning off
    tune_trials: int = TRIALS  # hyper-parameter variants tuning tries (its budget)
    force: bool = False
    params: ModelParams = field(default_factory=ModelParams)
    eval_users: int | None = None
    # how the purchase file is written: delimiter, date format or order (issue 11, item 10)
    read_options: ReadOptions = field(default_factory=ReadOptions)
    # versions kept after the run besides the current and previous (ModelStore.prune)
    keep_versions: int = KEEP_VERSIONS
    # issue 15: "pandas" (this module) or "spark" (training.spark.engine, run with ``spark``:
    # a training.spark.engine.SparkOptions; None: its defaults)
    engine: str = "pandas"
    spark: Any = None


@dataclass
class TrainResult:
    version: str
    promoted: bool
    served: dict[str, str]
    metrics: MetricTable
    validation: MetricTable
    gate: GateDecision
    report: CleaningReport
    path: Path
    timings: dict[str, float]
    manifest: Manifest
    pruned: list[str] = field(default_factory=list)
    # test figures with the products never sold before the test cut-off in the truth (see
    # ``new_product_figures``); empty without signals
    new_products: MetricTable = field(default_factory=dict)
    # the test users the validation, test and gate figures rest on (``EvalSet.info``)
    evaluation: dict[str, int] = field(default_factory=dict)

    @property
    def served_name(self) -> str:
        names = set(self.served.values())
        if len(names) == 1:
            return names.pop()
        return ",".join(f"{p}:{n}" for p, n in self.served.items())

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: version, promoted, served and metrics[protocol][candidate]."""
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for protocol, table in self.metrics.items():
            metrics[protocol] = dict(table)
            metrics[protocol]["served"] = table[self.served[protocol]]
        return {
            "version": self.version,
            "promoted": self.promoted,
            "served": self.served_name,
            "served_by_protocol": self.served,
            "metrics": metrics,
            "validation": self.validation,
            "gate": self.gate.to_dict(),
            "cleaning": self.report.as_dict(),
            "model_path": str(self.path),
            "timings": self.timings,
            "pruned": self.pruned,
            "new_products": self.new_products,
            "evaluation": self.evaluation,
        }


def _noop(_: str) -> None:
    return None


def evaluate_candidates(evalset: EvalSet, candidates: Candidates, k: int = 10) -> MetricTable:
    """Every candidate under every protocol it applies to (one pass over the users' chunks)."""
    table: MetricTable = {p: {} for p in PROTOCOLS}
    jobs = [
        (name, protocol, recipe)
        for name, recipes in candidates.items()
        for protocol, recipe in recipes.items()
        if evalset.scorer.can_use(recipe)
    ]
    figures = evalset.evaluate_many([(recipe, protocol) for _, protocol, recipe in jobs], k)
    for (name, protocol, _), values in zip(jobs, figures, strict=True):
        table[protocol][name] = {
            metric_key(m, k) if m != "users" else m: v for m, v in values.items()
        }
    return table


def new_product_figures(
    stage: Stage,
    evalset: EvalSet,
    test: Split,
    candidates: Candidates,
    read: Signals | None,
    k: int = 10,
) -> MetricTable:
    """Every candidate's test figures when the truth also holds the products nobody bought
    before the cut-off, and how often they are shown and hit (``unbought_figures``).

    The users are the test evaluation's (``evalset``: the same sample as every other figure),
    scored in chunks over the wider catalogue (``chunk_users_for``); the items, every item
    known at the cut-off, by a purchase or by a view or add-to-cart read
    (``read``), whether or not this model learnt it: one it did not learn is never recommended,
    so a model trained on purchasers only is scored against the same truth. Empty without
    signals.
    """
    if read is None:
        return {}
    served = stage.served_scorer()
    learnt = stage.served_item_codes
    seen = np.unique(read.until(test.cutoff).item_codes)
    universe = np.concatenate([learnt, np.setdiff1d(seen, learnt)])
    unlearnt = len(universe) - len(learnt)
    user_idx = evalset.user_idx
    truth = truth_of(
        user_idx,
        pd.Index(stage.user_codes),
        pd.Index(universe),
        test.test["user"].to_numpy(),
        test.test["item"].to_numpy(),
    )
    counts = served.history_counts[user_idx]
    step = chunk_users_for(len(universe))
    wide = EvalSet(
        scorer=served,
        user_idx=user_idx,
        truth=truth[:, : len(learnt)],
        counts=counts,
        age_days=served.history_age_days[user_idx],
        user_vectors=evalset.user_vectors,
        signal_vectors=evalset.signal_vectors,
        chunk_users=step,
    )
    history = sp.csr_matrix(
        (counts.data, counts.indices, counts.indptr), shape=(counts.shape[0], len(universe))
    )
    first_unbought = len(stage.item_codes)
    jobs = [
        (name, protocol, recipe)
        for name, recipes in candidates.items()
        for protocol, recipe in recipes.items()
        if served.can_use(recipe)
    ]
    tallies = [RankTally(len(universe), k, first_unbought) for _ in jobs]
    for rows in chunks(len(user_idx), step):
        local: dict[tuple[Any, ...], Any] = {}
        chunk_truth, chunk_history = truth[rows], history[rows]
        for tally, (_, protocol, recipe) in zip(tallies, jobs, strict=True):
            scores = wide.chunk_scores(recipe, rows, local)
            if unlearnt:
                blank = np.full((scores.shape[0], unlearnt), -np.inf, dtype=np.float32)
                scores = np.hstack([scores, blank])
            tally.add(scores, chunk_truth, chunk_history, protocol)
    table: MetricTable = {p: {} for p in PROTOCOLS}
    for tally, (name, protocol, _) in zip(tallies, jobs, strict=True):
        table[protocol][name] = {
            metric_key(m, k) if m in METRICS else m: v for m, v in tally.unbought().items()
        }
    return table


def choose(validation: MetricTable) -> dict[str, str]:
    """Per protocol, the candidate with the best validation NDCG@10 (ties: recall@10)."""
    ndcg, recall = metric_key("ndcg"), metric_key("recall")

    def best(table: dict[str, dict[str, float]]) -> str:
        return max(table, key=lambda name: (table[name][ndcg], table[name][recall]))

    return {protocol: best(table) for protocol, table in validation.items()}


def _load(config: TrainConfig) -> Purchases:
    """The purchase file, the service's purchase events, or both combined."""
    if config.data is None and config.database_url is None:
        raise DataError("nothing to train on: give a purchase file, a database URL, or both")
    from_file = (
        load_purchases(config.data, config.fmt, config.columns, config.read_options)
        if config.data
        else None
    )
    if config.database_url is None:
        assert from_file is not None
        return from_file
    from_database = load_database_purchases(config.database_url)
    source = " + ".join([*([str(config.data)] if config.data else []), "database purchase events"])
    return combine_purchases(from_file, from_database, source)


def _signal_source(config: TrainConfig, store: ModelStore) -> Iterator[pd.DataFrame] | None:
    """The service's views and add-to-carts (streamed), or None.

    The types read are those with a weight here or in the current model, whose refit for the
    quality gate needs the signals it learnt from.
    """
    if config.database_url is None:
        return None
    weights = [config.params.signal_weights]
    path = store.current_path()
    if path is not None:
        # unreadable: the gate treats it as absent
        with contextlib.suppress(ArtifactError, KeyError, TypeError, ValueError):
            weights.append(current_model_params(read_manifest(path)).signal_weights)
    types = [t for k, t in enumerate(SIGNAL_TYPES) if any(w[k] > 0 for w in weights)]
    if not types:
        return None
    return load_database_signals(config.database_url, types)


@dataclass(frozen=True)
class _Inputs:
    """What a run trains on: the purchases, coded once, and the weaker signals."""

    purchases: Purchases
    coded: pd.DataFrame  # ``encode``'s frame of every purchase
    ids: IdMaps
    # every signal read (the gate may need some to refit the current model), and those this
    # model learns from: None when its weights are all 0 or there is none
    read: Signals | None
    signals: Signals | None


@dataclass(frozen=True)
class _Plan:
    """The two temporal splits and what every stage of the run shares."""

    validation: Split
    test: Split
    # one decision for every stage: an artifact must have what its recipes use
    with_ease: bool
    candidates: Candidates  # untuned


@dataclass(frozen=True)
class _Validated:
    """The validation stage after tuning (or without): its fit and the candidates it tunes."""

    params: ModelParams
    stage: Stage
    evalset: EvalSet
    candidates: Candidates
    tuning: dict[str, Any]


@dataclass(frozen=True)
class _Choice:
    """What the validation split decided; the later stages only follow it."""

    params: ModelParams
    candidates: Candidates
    validation: MetricTable
    served: dict[str, str]
    tuning: dict[str, Any]


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def run(
    config: TrainConfig,
    purchases: Purchases | None = None,
    progress: Progress = _noop,
    *,
    signal_events: pd.DataFrame | None = None,
) -> TrainResult:
    """Train, evaluate, gate and publish one model version; see the module docstring.

    ``purchases`` and ``signal_events`` (user_id, item_id, timestamp, type) replace what
    ``config`` would load. Every run is recorded in the model root's ``runs.jsonl``
    (``service.artifact.runs``): promoted, refused by the gate, failed (its error), or skipped
    when another trainer holds the lock.
    """
    started = datetime.now(UTC)
    store = ModelStore(config.model_dir)
    before = _current_or_none(store)
    try:
        if config.engine == "spark":
            result = _run_spark(config, purchases, progress, signal_events)
        else:
            result = _run(config, purchases, progress, signal_events)
    except BaseException as exc:
        skipped = isinstance(exc, TrainerBusyError)
        code = kind_of(exc).exit_code if isinstance(exc, RecofferError) else exit_codes.FAILED
        _record(
            config.model_dir,
            started,
            "skipped" if skipped else "failed",
            code,
            current_before=before,
            error=_why(exc),
        )
        raise
    _record(
        config.model_dir,
        started,
        "promoted" if result.promoted else "refused",
        exit_codes.OK if result.promoted else exit_codes.REFUSED,
        current_before=before,
        version=result.version,
        forced=result.promoted and not result.gate.passed,
        reasons=list(result.gate.reasons),
    )
    return result


def _run_spark(
    config: TrainConfig,
    purchases: Purchases | None,
    progress: Progress,
    signal_events: pd.DataFrame | None,
) -> TrainResult:
    """The Spark engine's run (``training.spark.engine``): it reads its own input."""
    if purchases is not None or signal_events is not None:
        raise DataError("the spark engine reads its input itself (--data or --database-url)")
    from training.spark.engine import SparkOptions, train

    options = config.spark if config.spark is not None else SparkOptions()
    return train(config, options, progress)


def _why(exc: BaseException) -> str:
    """An exception in one line: its class and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _current_or_none(store: ModelStore) -> str | None:
    try:
        return store.current()
    except RecofferError:  # an unreadable registry: the run itself says what is wrong
        return None


def _record(
    root: Path,
    started: datetime,
    outcome: Outcome,
    exit_code: int,
    **fields: Any,
) -> None:
    """Append this run to the model root's runs; a record that cannot be written is logged,
    never the reason a run fails."""
    finished = datetime.now(UTC)
    try:
        record_run(
            root,
            TrainingRun(
                started_at=started,
                finished_at=finished,
                seconds=round((finished - started).total_seconds(), 3),
                outcome=outcome,
                exit_code=exit_code,
                by="train",
                **fields,
            ),
        )
    except OSError as exc:
        log.warning("training_run_not_recorded", extra={"error": str(exc)})


def _run(
    config: TrainConfig,
    purchases: Purchases | None,
    progress: Progress,
    signal_events: pd.DataFrame | None,
) -> TrainResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    store = ModelStore(config.model_dir)
    with trainer_lock(store.root):
        store.cleanup_temporaries()
        inputs = _load_inputs(config, store, purchases, signal_events, progress)
        timings["load"] = time.perf_counter() - started
        plan = _plan(config, inputs)
        with _timed(timings, "fit_validation"):
            val_stage = _validation_stage(inputs, plan, config.params, progress)
        if config.tune_seconds > 0:
            with _timed(timings, "tune"):
                validated = _tune(config, inputs, plan, val_stage, progress)
        else:
            validated = _untuned(config, plan, val_stage)
        del val_stage
        choice = _choose(validated, progress)
        with _timed(timings, "fit_test"):
            test_stage = _test_stage(inputs, plan, choice.params, validated.stage, progress)
            del validated  # the validation stage and its evaluation set are done with
            test_eval = test_stage.evalset(plan.test.test, max_users=config.eval_users)
            metrics = evaluate_candidates(test_eval, choice.candidates)
            evaluation = test_eval.info()
            progress(describe_evaluation(evaluation))
        with _timed(timings, "new_products"):
            new_products = new_product_figures(
                test_stage, test_eval, plan.test, choice.candidates, inputs.read
            )
        with _timed(timings, "gate"):
            gate = _gate(store, choice, test_eval, test_stage, inputs, plan)
        if gate.fallback:  # the first model: popularity where the choice falls below it
            choice = dataclasses.replace(choice, served={**choice.served, **gate.fallback})
        with _timed(timings, "fit_serving"):
            serving = _serving_stage(inputs, plan, choice.params, test_stage, progress)
            del test_stage, test_eval
        version = new_version_name()
        promote = gate.passed or config.force
        body = _describe(config, inputs, plan, choice, metrics, gate, serving).model_copy(
            update={"evaluation": EvaluationInfo.model_validate(evaluation)}
        )
        arrays = artifact_arrays(serving, inputs.purchases)
        with _timed(timings, "ann_index"), tempfile.TemporaryDirectory() as workdir:
            body, files = with_ann_index(body, arrays, config.params, Path(workdir))
            path = publish(store, version, arrays, body, promote=promote, files=files)
        manifest = read_manifest(path)
        pruned = store.prune(config.keep_versions)  # refused runs too: every run adds one
        timings["total"] = time.perf_counter() - started
        return TrainResult(
            version=version,
            promoted=promote,
            served=choice.served,
            metrics=metrics,
            validation=choice.validation,
            gate=gate,
            report=inputs.purchases.report,
            path=path,
            timings={k: round(v, 3) for k, v in timings.items()},
            manifest=manifest,
            pruned=pruned,
            new_products=new_products,
            evaluation=evaluation,
        )


def _load_inputs(
    config: TrainConfig,
    store: ModelStore,
    purchases: Purchases | None,
    signal_events: pd.DataFrame | None,
    progress: Progress,
) -> _Inputs:
    """Load (unless given) and code the purchases; read the signals this run may use."""
    if purchases is None:
        purchases = _load(config)
    purchases = honour_erasures(purchases, config.database_url)  # the service's tombstones
    coded, ids = encode(purchases.frame)
    weights = config.params.signal_weights
    source = _signal_source(config, store) if signal_events is None else signal_events
    read: Signals | None = None
    if source is not None:
        read = encode_signals(source, ids.users, ids.items)
    signals = None if read is None else read.only(weights)
    if signals is not None and not config.params.every_visitor:
        signals = signals.purchasers_only()  # the rule before every visitor counted
    if signals is not None and not len(signals):
        if any(weights):
            progress(
                "weaker signals: no view or add-to-cart of a user and item with purchases; "
                "purchases only"
            )
        signals = None
    if signals is not None:
        used = signals.summary()
        progress(
            f"weaker signals: {used['view']:,} views, {used['add_to_cart']:,} add-to-carts "
            + (
                f"of {used['users']:,} users ({used['users_without_purchases']:,} never bought) "
                f"on {used['items']:,} items ({used['items_without_purchases']:,} never bought)"
                if config.params.every_visitor
                else f"({used['ignored_no_purchases']:,} more of users or items without "
                "purchases left out)"
            )
        )
    return _Inputs(purchases, coded, ids, read, signals)


def _plan(config: TrainConfig, inputs: _Inputs) -> _Plan:
    """The test split, the validation split inside its training part, and the candidates."""
    test = temporal_split(inputs.coded, config.test_days)
    validation = temporal_split(test.train, config.test_days)
    # EASE is fitted on the items bought alone (the largest: the serving stage's, every item
    # bought), whatever the view-only items the signals add to the served catalogue
    with_ease = len(inputs.ids.items) <= config.params.ease_max_items
    candidates = default_candidates(with_ease=with_ease, with_signals=inputs.signals is not None)
    return _Plan(validation, test, with_ease, candidates)


def _validation_stage(
    inputs: _Inputs, plan: _Plan, params: ModelParams, progress: Progress
) -> Stage:
    """Fit on the purchases up to the validation cut-off, from cold."""
    split = plan.validation
    progress(f"fitting on purchases up to {split.cutoff:%Y-%m-%d} (validation stage)")
    return fit_stage(
        split.train,
        split.cutoff,
        params,
        inputs.ids,
        with_ease=plan.with_ease,
        signals=inputs.signals,
    )


def _tune(
    config: TrainConfig, inputs: _Inputs, plan: _Plan, stage: Stage, progress: Progress
) -> _Validated:
    """Search the blend's recipes and the hyper-parameters on the validation split."""
    split = plan.validation
    progress(
        f"tuning up to {config.tune_trials} variants on the validation split "
        f"(at most {config.tune_seconds:g} s)"
    )
    result = tune(
        split.train,
        split.test,
        split.cutoff,
        config.params,
        {p: plan.candidates["blend"][p] for p in PROTOCOLS},
        config.tune_seconds,
        inputs.ids,
        trials=config.tune_trials,
        stage=stage,
        max_users=config.eval_users,
        with_ease=plan.with_ease,
        signals=inputs.signals,
    )
    tuning: dict[str, Any] = {
        "seconds_budget": config.tune_seconds,
        "trials_budget": config.tune_trials,
        "seconds_used": round(result.seconds, 2),
        "evaluations": result.evaluations,
        "objective": result.objective,
        "variants": result.variants_tried,
    }
    candidates = {**plan.candidates, "blend": dict(result.recipes)}
    return _Validated(result.params, result.stage, result.evalset, candidates, tuning)


def _untuned(config: TrainConfig, plan: _Plan, stage: Stage) -> _Validated:
    """The validation stage as fitted, with the default candidates (tuning is off)."""
    evalset = stage.evalset(plan.validation.test, max_users=config.eval_users)
    tuning: dict[str, Any] = {"seconds_budget": config.tune_seconds}
    return _Validated(config.params, stage, evalset, plan.candidates, tuning)


def _choose(validated: _Validated, progress: Progress) -> _Choice:
    """Score the candidates the validation stage can serve and choose one per protocol."""
    scorer = validated.stage.scorer()
    candidates = {
        name: recipes
        for name, recipes in validated.candidates.items()
        if all(scorer.can_use(r) for r in recipes.values())
    }
    validation = evaluate_candidates(validated.evalset, candidates)
    served = choose(validation)
    progress("chosen on validation: " + ", ".join(f"{p}={n}" for p, n in served.items()))
    return _Choice(validated.params, candidates, validation, served, validated.tuning)


def _test_stage(
    inputs: _Inputs, plan: _Plan, params: ModelParams, warm_from: Stage, progress: Progress
) -> Stage:
    """Fit on the purchases up to the test cut-off, warm-started from the validation stage."""
    split = plan.test
    progress(f"fitting on purchases up to {split.cutoff:%Y-%m-%d} (test stage)")
    return fit_stage(
        split.train,
        split.cutoff,
        params,
        inputs.ids,
        warm_from=warm_from,
        with_ease=plan.with_ease,
        signals=inputs.signals,
    )


def _gate(
    store: ModelStore,
    choice: _Choice,
    evalset: EvalSet,
    stage: Stage,
    inputs: _Inputs,
    plan: _Plan,
) -> GateDecision:
    """The quality gate on the test split (``training.gate``)."""
    return gate_new_model(
        store,
        served=choice.served,
        candidates=choice.candidates,
        evalset=evalset,
        stage=stage,
        params=choice.params,
        validation=plan.validation,
        test=plan.test,
        ids=inputs.ids,
        signals=inputs.read,
    )


def _serving_stage(
    inputs: _Inputs, plan: _Plan, params: ModelParams, warm_from: Stage, progress: Progress
) -> Stage:
    """Fit on every purchase (and every signal), warm-started from the test stage."""
    progress("fitting on every purchase (serving stage)")
    signals = inputs.signals
    return fit_stage(
        inputs.coded,
        plan.test.end,
        params,
        inputs.ids,
        warm_from=warm_from,
        with_ease=plan.with_ease,
        signals=signals,
        signals_until=None if signals is None else signals.newest,
    )


def _describe(
    config: TrainConfig,
    inputs: _Inputs,
    plan: _Plan,
    choice: _Choice,
    metrics: MetricTable,
    gate: GateDecision,
    serving: Stage,
) -> ManifestBody:
    """What the new version records about itself (``training.publish.describe``)."""
    return describe(
        serving,
        choice.params,
        purchases=inputs.purchases,
        coded=inputs.coded,
        ids=inputs.ids,
        signals=inputs.signals,
        served=choice.served,
        candidates=choice.candidates,
        metrics=Figures(test=metrics, validation=choice.validation),
        split=SplitInfo(
            test_days=config.test_days,
            validation_cutoff=plan.validation.cutoff.to_pydatetime(),
            test_cutoff=plan.test.cutoff.to_pydatetime(),
            end=plan.test.end.to_pydatetime(),
        ),
        tuning=choice.tuning,
        gate=GateInfo.model_validate(dict(gate.to_dict(), forced=config.force and not gate.passed)),
    )
