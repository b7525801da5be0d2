"""The quality gate and the rescoring of a model on a split (the current one, or any on a file).

The gate promotes a new version only when, under each protocol, its NDCG@10 is not clearly
below (a) the current model's, scored on the same new split, and (b) popularity's. "Clearly
below" allows for the noise of a finite test set: a paired bootstrap over the test users
(``BOOTSTRAP_RESAMPLES`` resamples of the per-user differences, seeded, so the same figures give
the same verdict) and the new model is below only when the upper end of the one-sided
``CONFIDENCE`` interval of its mean difference is below zero. A tie, or a difference smaller
than the test set can tell apart, never blocks a promotion.

The test users are the new run's seeded sample (``training.evaluate.sample_truth``: 50,000, or
all when fewer, never cut down by the catalogue's size), and the current model and popularity
are scored on exactly those users, in chunks of bounded memory (``artifact_tally``).

With no current model (a fresh install, or a current version that cannot be read), the run is
always published: under a protocol where the chosen candidate is clearly below popularity, the
version serves popularity instead, so there is always something to serve.

"The current model scored on the same split" is done in one of these ways, recorded in the
manifest:
- ``direct``: the current artifact only saw events up to the new test cut-off, so its own
  arrays score the new test users (users it does not know get its popularity list);
- ``same`` / ``refit``: the current artifact already saw the new test window (a retrain on the
  same or overlapping data), so scoring it directly would reward it for memorising the answers.
  Its recorded hyper-parameters and recipes are refitted on the new splits instead, the way the
  new model was fitted; when those parameters are the new run's, the new run's own fit is it;
- ``incomparable``: it learnt from views and add-to-carts this run does not have, so it cannot
  be refitted; the new model is refused (``--force`` overrides);
- ``other_engine``: it was built by an engine this trainer cannot refit (``Manifest.engine``
  not in ``REFITTED_ENGINES``: a version written by another program following
  docs/artifact.md) and it saw the new test window, so it can be neither scored directly nor
  refitted; the new model is refused (``--force`` overrides) rather than compared with a
  refit by the wrong engine;
- ``current_unreadable``: its parameters cannot be read; only the popularity floor applies,
  and the decision's notes say so.

A current model is always refitted with the engine that built it: a Spark run passes
``refit`` (``training.spark.engine``), which refits a Spark-built current model with Spark and a
pandas-built one with implicit; a pandas run refits pandas-built ones only (a Spark-built
current model that saw the window is ``other_engine`` for it: train with ``--engine spark``).

``direct`` needs nothing but the artifact's arrays and recipes, so it works for a version of
any engine, with or without recorded parameters.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from service.artifact import Artifact, Manifest, ModelStore, load_artifact, read_runs
from service.artifact.manifest import EngineInfo
from service.errors import ArtifactError
from service.scoring import PROTOCOLS, Recipe, Scorer
from training.data.files import DEFAULT_OPTIONS, ReadOptions
from training.data.formats import ColumnMapping, load_purchases
from training.encode import IdMaps, encode
from training.evaluate import (
    EvalSet,
    RankTally,
    Split,
    chunk_users_for,
    chunks,
    metric_key,
    sample_truth,
    temporal_split,
)
from training.models import Candidates, ModelParams, Stage, build_history, fit_stage
from training.signals import Signals

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
# the engines whose versions this trainer refits with their recorded parameters
REFITTED_ENGINES = frozenset({"pandas"})
# ... and those a run given a ``refit`` (the Spark engine's) refits besides
SPARK_REFITTED = frozenset({"spark"})
_BOOTSTRAP_CELLS = 4_000_000  # resamples x users drawn at once: bounded memory

# each test user's NDCG@10, per protocol (the users of ``EvalSet.evaluate``, in its order)
UserScores = dict[str, npt.NDArray[np.float64]]
# refits the current model (its manifest, its parameters) on the new run's validation and test
# splits with the current model's own engine; returns the refitted test stage, whose rows are
# the new run's test stage's (issue 15: a Spark engine's run refits with Spark)
Refit = Callable[[Manifest, ModelParams], Stage]
PANDAS_ENGINE = EngineInfo()


def engine_key(engine: EngineInfo) -> tuple[str, str]:
    """What makes two fits of the same parameters different: the engine and its ALS."""
    return (engine.name, engine.fit)


@dataclass
class GateDecision:
    passed: bool
    # "first" | "direct" | "same" | "refit" | "incomparable" | "other_engine" |
    # "current_unreadable"
    method: str
    current_version: str | None
    new: dict[str, float]
    current: dict[str, float] = field(default_factory=dict)
    popularity: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    # protocol -> the candidate served instead of the chosen one (first model only)
    fallback: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # why the version compared against is current, when an A/B test promoted it (issue 14)
    current_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "method": self.method,
            "current_version": self.current_version,
            "ndcg@10": {"new": self.new, "current": self.current, "popularity": self.popularity},
            "reasons": self.reasons,
            "rule": f"paired bootstrap over test users, {BOOTSTRAP_RESAMPLES} resamples, "
            f"one-sided {CONFIDENCE:.0%}, seed {BOOTSTRAP_SEED}",
            "fallback": self.fallback,
            "notes": self.notes,
            "current_reason": self.current_reason,
        }


def clearly_below(
    new: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> bool:
    """Whether ``new`` scores below ``reference`` by more than the test users' noise.

    ``new`` and ``reference`` are the same users' scores (paired). The mean difference is
    resampled over users with replacement; True when even the ``confidence`` quantile of the
    resampled means is below zero. Deterministic for ``seed``.
    """
    diff = np.asarray(new, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if diff.shape != np.shape(reference) or not len(diff):
        raise ValueError("the gate compares the same users' scores")
    if diff.mean() >= -1e-12:
        return False
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CELLS // len(diff))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start : start + n] = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(1)
    return bool(np.quantile(means, confidence) < 0.0)


def _means(scores: UserScores) -> dict[str, float]:
    return {p: float(v.mean()) if len(v) else 0.0 for p, v in scores.items()}


def decide(
    new: UserScores,
    popularity: UserScores,
    current: UserScores | None,
    *,
    method: str,
    current_version: str | None,
) -> GateDecision:
    """Compare each test user's NDCG@10 per protocol (``clearly_below``); every protocol must
    pass both floors. The decision records the means."""
    reasons: list[str] = []
    if method == "incomparable":
        reasons.append(
            f"the current model {current_version} learnt from views and add-to-carts, and this "
            "run has none to refit it with (it needs --database-url with those events), so the "
            "two cannot be compared"
        )
    if method == "other_engine":
        reasons.append(
            f"the current model {current_version} was built by an engine this trainer cannot "
            "refit, and it saw this run's test window, so the two cannot be compared "
            "(--force publishes anyway)"
        )
    new_mean, pop_mean = _means(new), _means(popularity)
    cur_mean = _means(current) if current is not None else {}
    for protocol, values in new.items():
        if not len(values):
            continue  # no test user under this protocol: nothing to compare
        if protocol in popularity and clearly_below(values, popularity[protocol]):
            reasons.append(
                f"{protocol}: NDCG@10 {new_mean[protocol]:.4f} is below popularity's "
                f"{pop_mean[protocol]:.4f}"
            )
        if current is not None and protocol in current and clearly_below(values, current[protocol]):
            reasons.append(
                f"{protocol}: NDCG@10 {new_mean[protocol]:.4f} is below the current model's "
                f"{cur_mean[protocol]:.4f} ({method})"
            )
    return GateDecision(
        passed=not reasons,
        method=method,
        current_version=current_version,
        new=new_mean,
        current=cur_mean,
        popularity=pop_mean,
        reasons=reasons,
    )


def first_model(new: UserScores, popularity: UserScores) -> GateDecision:
    """The decision when nothing is served yet: always publish, popularity where the chosen
    candidate is clearly below it (``fallback``)."""
    decision = decide(new, popularity, None, method="first", current_version=None)
    for protocol, values in new.items():
        if len(values) and clearly_below(values, popularity[protocol]):
            decision.fallback[protocol] = "popularity"
            decision.notes.append(
                f"{protocol}: serving popularity (NDCG@10 {decision.popularity[protocol]:.4f}); "
                f"the chosen candidate's {decision.new[protocol]:.4f} is below it and there is "
                "no current model to keep"
            )
            decision.new[protocol] = decision.popularity[protocol]
    decision.passed, decision.reasons = True, []
    return decision


def why_current(store: ModelStore) -> str | None:
    """Why the current version is current, when an A/B test promoted it (issue 14, item 3):
    the newest promotion of that version in ``runs.jsonl`` was ``by: "experiment"``. None
    otherwise (a training run promoted it, or nothing is recorded)."""
    current = store.current()
    if current is None:
        return None
    for record in read_runs(store.root).runs:  # newest first
        if record.outcome == "promoted" and record.version == current:
            if record.by != "experiment":
                return None
            why = record.reasons[0] if record.reasons else "by an experiment"
            return f"the current version {current} is current because it was {why}"
    return None


def gate_new_model(
    store: ModelStore,
    *,
    served: dict[str, str],
    candidates: Candidates,
    evalset: EvalSet,
    stage: Stage,
    params: ModelParams,
    validation: Split,
    test: Split,
    ids: IdMaps,
    signals: Signals | None,
    engine: EngineInfo = PANDAS_ENGINE,
    refit: Refit | None = None,
) -> GateDecision:
    """The gate for a new run: its ``served`` candidates (recipes in ``candidates``) against
    popularity's and the current model's (rescored with ``rescore_current``), user by user on
    the test split; with no current model, ``first_model``.

    ``evalset`` and ``stage`` are the new run's test evaluation set and test stage, fitted with
    ``params`` on ``validation`` and ``test``; ``signals`` are every signal the run read.
    ``engine`` built the new run; ``refit`` refits the current model with its own engine
    (``rescore_current``).
    """
    new = {p: evalset.user_ndcg(candidates[served[p]][p], p) for p in PROTOCOLS}
    popularity = {p: evalset.user_ndcg(candidates["popularity"][p], p) for p in PROTOCOLS}
    current = current_artifact(store)
    if current is None:
        return first_model(new, popularity)
    learnt: tuple[float, ...] = ()
    if model_saw_until(current.manifest) > test.cutoff:  # a refit, not direct scoring
        built_by = current.manifest.engine
        # a Spark run's ``refit`` refits Spark-built versions too; a pandas run, pandas' only
        refittable = REFITTED_ENGINES | (SPARK_REFITTED if refit is not None else frozenset())
        if built_by.name not in refittable:
            log.warning(
                "current_engine_not_refittable",
                extra={"version": current.version, "engine": built_by.name},
            )
            return _uncompared(
                store,
                new,
                popularity,
                "other_engine",
                current.version,
                f"the current model {current.version} was built by the {built_by.name!r} engine "
                f"(fit {built_by.fit!r}); this run refits {sorted(refittable)} only",
            )
        try:
            learnt = current_model_params(current.manifest).signal_weights
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "current_params_unreadable", extra={"version": current.version, "error": str(exc)}
            )
            return _uncompared(
                store,
                new,
                popularity,
                "current_unreadable",
                current.version,
                f"the current model {current.version} was not compared: its parameters cannot "
                f"be read ({exc}); only the popularity floor applied",
            )
    scores, method = rescore_current(
        current,
        evalset=evalset,
        stage=stage,
        params=params,
        validation=validation,
        test=test,
        ids=ids,
        protocols=PROTOCOLS,
        signals=signals,
        engine=engine,
        refit=refit,
    )
    decision = decide(new, popularity, scores, method=method, current_version=current.version)
    if method == "refit" and engine_key(current.manifest.engine) != engine_key(engine):
        own = current.manifest.engine
        decision.notes.append(
            f"the current model was built by the {own.name} engine ({own.fit}) and refitted "
            "with it for the comparison"
        )
    if not decision.passed and any(learnt) and stage.signal_user_factors is None:
        decision.reasons.append(
            "this run learnt from no view or add-to-cart (weights 0?), the current model did"
        )
    return _told(store, decision)


def _uncompared(
    store: ModelStore,
    new: UserScores,
    popularity: UserScores,
    method: str,
    current_version: str,
    note: str,
) -> GateDecision:
    """The decision when the current model cannot be compared (``method`` says why, ``note``
    in the decision's notes): the popularity floor alone, and the gate is told."""
    decision = decide(new, popularity, None, method=method, current_version=current_version)
    decision.notes.append(note)
    return _told(store, decision)


def _told(store: ModelStore, decision: GateDecision) -> GateDecision:
    """The decision, told why the current version is current when an experiment promoted it
    (``why_current``): in its notes, which the run's report prints, and ``current_reason``."""
    told = why_current(store)
    if told is not None:
        decision.current_reason = told
        decision.notes.append(told)
    return decision


def score_artifact_directly(
    artifact: Artifact,
    user_ids: pd.Index,
    item_ids: pd.Index,
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
) -> dict[str, float]:
    """Metrics of the artifact's served recipe for ``user_ids`` against ``truth``.

    ``truth`` and ``history`` (one row per user) live in the item space ``item_ids``, which may
    differ from the artifact's: items the artifact does not know are never recommended, and
    users it does not know get its popularity ranking, as the service would do. Scored in
    chunks of users (``artifact_tally``).
    """
    return artifact_tally(artifact, user_ids, item_ids, truth, history, protocol).metrics()


def artifact_tally(
    artifact: Artifact,
    user_ids: pd.Index,
    item_ids: pd.Index,
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    *,
    chunk_users: int | None = None,
) -> RankTally:
    """``score_artifact_directly``'s tally, the users scored ``chunk_users`` at a time
    (``chunk_users_for`` the wider of the two item spaces by default): bounded memory."""
    scorer = Scorer.from_arrays(artifact.arrays)
    step = chunk_users or chunk_users_for(max(scorer.n_items, len(item_ids)))
    tally = RankTally(len(item_ids))
    truth, history = truth.tocsr(), history.tocsr()
    for rows in chunks(len(user_ids), step):
        scores = _artifact_scores(artifact, user_ids[rows], item_ids, protocol, scorer=scorer)
        tally.add(scores, truth[rows], history[rows], protocol)
    return tally


def _artifact_scores(
    artifact: Artifact,
    user_ids: pd.Index,
    item_ids: pd.Index,
    protocol: str,
    *,
    scorer: Scorer | None = None,
) -> npt.NDArray[np.float32]:
    """The artifact's served scores for ``user_ids`` in the item space ``item_ids`` (dense:
    callers pass a chunk of users; ``scorer``: the artifact's, built once by the caller)."""
    scorer = Scorer.from_arrays(artifact.arrays) if scorer is None else scorer
    recipe = artifact.manifest.recipes[protocol]
    own_user_ids = pd.Index(np.asarray(artifact.arrays["user_ids"]).astype(str))
    own_item_ids = pd.Index(np.asarray(artifact.arrays["item_ids"]).astype(str))
    # each user's row and each item's column in the artifact's matrices (-1: unknown there)
    own_user_idx = own_user_ids.get_indexer(user_ids)
    known = own_user_idx >= 0
    scores_own = np.empty((len(own_user_idx), scorer.n_items), dtype=np.float32)
    if known.any():
        rows = own_user_idx[known]
        # never one row alone (``chunks``: gemv rounds unlike gemm): the same scores for a user
        # whatever the other users of its chunk
        scored = scorer.score_users(np.repeat(rows, 2) if len(rows) == 1 else rows, recipe)
        scores_own[known] = scored[: len(rows)]
    if (~known).any():
        scores_own[~known] = scorer.popularity_z
    own_item_idx = own_item_ids.get_indexer(item_ids)
    scores = np.full((len(own_user_idx), len(item_ids)), -np.inf, dtype=np.float32)
    present = own_item_idx >= 0
    scores[:, present] = scores_own[:, own_item_idx[present]]
    return scores


def rescore_on_file(
    artifact: Artifact,
    data: Path,
    fmt: str,
    columns: ColumnMapping | None,
    test_days: float,
    options: ReadOptions = DEFAULT_OPTIONS,
    *,
    max_users: int | None = None,
) -> dict[str, Any]:
    """Score an artifact on the temporal split of a purchase file (``recoffer evaluate``):
    on a seeded sample of ``max_users`` test users (``DEFAULT_EVAL_USERS``; all when fewer),
    in chunks."""
    purchases = load_purchases(data, fmt, columns, options)
    coded, ids = encode(purchases.frame)
    split = temporal_split(coded, test_days)
    user_codes, item_codes, counts, _ = build_history(split.train, split.cutoff)
    sample = sample_truth(
        pd.Index(user_codes),
        pd.Index(item_codes),
        split.test["user"],
        split.test["item"],
        max_users=max_users,
    )
    user_idx, truth = sample.user_idx, sample.truth
    user_ids, item_ids = ids.users[user_codes[user_idx]], ids.items[item_codes]
    metrics = {
        p: {
            "served": {
                metric_key(k) if k != "users" else k: v
                for k, v in score_artifact_directly(
                    artifact, user_ids, item_ids, truth, counts[user_idx], p
                ).items()
            }
        }
        for p in PROTOCOLS
    }
    document: dict[str, Any] = {
        "version": artifact.version,
        "data": str(data),
        "cutoff": split.cutoff.isoformat(),
        "metrics": metrics,
        "evaluation": {
            "users": len(user_idx),
            "of_users": sample.of_users,
            "seed": sample.seed,
            "chunk_users": min(
                len(user_idx) or 1,
                chunk_users_for(max(len(item_ids), int(artifact.arrays["item_ids"].shape[0]))),
            ),
        },
    }
    saw = model_saw_until(artifact.manifest)
    if saw > split.cutoff:
        document["warning"] = (
            f"model {artifact.version} saw events up to {saw:%Y-%m-%d}, after this "
            f"split's cut-off {split.cutoff:%Y-%m-%d}: these figures are optimistic"
        )
    return document


def rescore_current(
    artifact: Artifact,
    *,
    evalset: EvalSet,
    stage: Stage,
    params: ModelParams,
    validation: Split,
    test: Split,
    ids: IdMaps,
    protocols: tuple[str, ...],
    signals: Signals | None = None,
    engine: EngineInfo = PANDAS_ENGINE,
    refit: Refit | None = None,
) -> tuple[UserScores | None, str]:
    """Each test user's NDCG@10 per protocol for the current model on the new split, and the
    method used.

    ``direct``: the current model saw nothing after the test cut-off, so it is scored as it is
    served; on the purchase items that is as it was evaluated (``Scorer.n_scored``), like the
    new model.
    Otherwise it is refitted as the new run fitted its own model: ``same``: its parameters are
    the new run's (the number of threads aside), so the new test ``stage`` is that refit;
    ``refit``: a validation stage from cold and a test stage warm-started from it, on the new
    splits, with its own parameters and, if it learnt from them, ``signals``: every signal the
    run read, unfiltered (a ``--purchasers-only`` run's filter is not the current model's;
    ``fit_stage`` applies the current parameters' own ``every_visitor`` rule). ``incomparable``
    (scores None): it learnt from views and add-to-carts and this run has none to refit it
    with.
    """
    if model_saw_until(artifact.manifest) <= test.cutoff:
        # the same sampled users as the new model's figures: a paired comparison
        user_ids = stage.user_ids[evalset.user_idx]
        return (
            {
                p: artifact_tally(
                    artifact, user_ids, stage.item_ids, evalset.truth, evalset.counts, p
                ).user_ndcg()
                for p in protocols
            },
            "direct",
        )
    current_params = current_model_params(artifact.manifest)
    learnt_signals = any(current_params.signal_weights)
    if learnt_signals and (signals is None or not len(signals.only(current_params.signal_weights))):
        return None, "incomparable"
    if stage.signal_user_factors is None:  # the new model learnt no signal, whatever its weights
        params = _without_signal_weights(params)
    ev, method = evalset, "same"
    other_engine = engine_key(artifact.manifest.engine) != engine_key(engine)
    if other_engine and refit is None and artifact.manifest.engine.name != "pandas":
        return None, "other_engine"
    if refit is not None and (other_engine or _comparable(current_params) != _comparable(params)):
        method = "refit"
        ev = evalset.with_scorer(refit(artifact.manifest, current_params).scorer())
    elif other_engine or _comparable(current_params) != _comparable(params):
        method = "refit"
        with_ease = evalset.scorer.ease_b is not None
        own = signals if learnt_signals else None
        # same training rows as the new run, so the same user and item indexes as ``stage``
        first = fit_stage(
            validation.train,
            validation.cutoff,
            current_params,
            ids,
            with_ease=with_ease,
            signals=own,
        )
        refitted = fit_stage(
            test.train,
            test.cutoff,
            current_params,
            ids,
            warm_from=first,
            with_ease=with_ease,
            signals=own,
        )
        ev = evalset.with_scorer(refitted.scorer())
    out: UserScores = {}
    for protocol in protocols:
        recipe = artifact.manifest.recipes[protocol]
        if not ev.scorer.can_use(recipe):
            recipe = Recipe(weights={"popularity": 1.0})
        out[protocol] = ev.user_ndcg(recipe, protocol)
    return out, method


def current_model_params(manifest: Manifest) -> ModelParams:
    """The parameters a model was trained with; signal weights 0 when it learnt from no signal
    (trained before they existed, without a database, or with none in it).

    Raises:
        KeyError, TypeError, ValueError: the manifest's parameters are missing or invalid.
    """
    if not manifest.params:
        raise KeyError("the manifest records no parameters")
    params = ModelParams.from_dict(manifest.params)
    if manifest.signals is None:
        params = _without_signal_weights(params)
    return params


def model_saw_until(manifest: Manifest) -> pd.Timestamp:
    """The newest event a model learnt from (``Manifest.saw_until``), as naive UTC like the
    trainer's split times."""
    return pd.Timestamp(manifest.saw_until).tz_convert(None)


def _without_signal_weights(params: ModelParams) -> ModelParams:
    return dataclasses.replace(params, view_weight=0.0, add_to_cart_weight=0.0)


def _comparable(params: ModelParams) -> ModelParams:
    """``params`` without what cannot change a fitted model (the number of threads)."""
    return dataclasses.replace(params, threads=0)


def current_artifact(store: ModelStore) -> Artifact | None:
    """The artifact currently promoted, or None (first run, or it cannot be read)."""
    path = store.current_path()
    if path is None:
        return None
    try:
        return load_artifact(path, verify_checksums=True)
    except ArtifactError as exc:
        log.warning("current_artifact_unreadable", extra={"error": str(exc)})
        return None
