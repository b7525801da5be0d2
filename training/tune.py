"""Search for blend weights and model hyper-parameters on the validation split, with a budget
in trials and the time only as a cap.

Nothing here sees the test window: the pipeline hands in a stage fitted on purchases before the
validation cut-off and the purchases between the two cut-offs.

Two phases, each with a budget counted in work, not in seconds, so a loaded machine does the
same search as a quiet one, only slower:
1. coordinate ascent over the blend's weights and constants, on cached component scores
   (cheap), until no move helps or ``evaluations`` recipes per protocol were scored;
2. the first ``trials`` hyper-parameter variants, in ``param_variants``' fixed order: refit
   the components and re-run a short phase 1 (``variant_evaluations``); keep a variant only
   when it raises the mean blend NDCG@10.

The time (``seconds``) is a cap: past it, nothing more is started. A variant whose estimated
fit does not fit in the time left is skipped (recorded as such) and the next, cheaper ones are
still tried. Nothing is random, so the search is deterministic as long as the cap is not hit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd

from service.scoring import Recipe
from training.encode import IdMaps
from training.evaluate import EvalSet, metric_key
from training.models import ModelParams, Stage, fit_stage
from training.signals import Signals

log = logging.getLogger(__name__)

OBJECTIVE = metric_key("ndcg")
WEIGHT_STEPS = (0.0, 0.5, 2.0)  # multiply (0 drops the component)
FINE_STEPS = (0.7, 1.4)  # a second, finer pass once the coarse one has converged
HALF_LIVES = (30.0, 90.0, 180.0, 365.0)
BONUSES = (0.0, 0.25, 0.5, 1.0)
INPUT_HALF_LIVES = (30.0, 60.0, 120.0)
TRIALS = 12  # hyper-parameter variants tried in phase 2 (all of them by default)
# `recoffer train`'s default cap: far above what the trials take on a quiet machine (Online
# Retail: 10 variants in 230 s with two busy cores), so the budget, not the load, ends a search
TUNE_SECONDS_CAP = 600.0
EVALUATIONS = 400  # recipes scored per protocol in phase 1
VARIANT_EVALUATIONS = 100  # per protocol in each variant's short phase 1


@dataclass
class TuneResult:
    params: ModelParams
    stage: Stage
    evalset: EvalSet
    recipes: dict[str, Recipe]
    objective: dict[str, float]
    evaluations: int
    seconds: float
    variants_tried: list[dict[str, object]]


def _neighbours(
    recipe: Recipe,
    protocol: str,
    with_ease: bool,
    steps: tuple[float, ...] = WEIGHT_STEPS,
    with_signals: bool = False,
) -> Iterator[Recipe]:
    names = ["als", "trending", "popularity"]
    if with_signals:
        names.append("als_signals")
    if with_ease:
        names.append("ease")
    if protocol == "all":
        names.append("repeat")
    for name in names:
        w = recipe.weight(name)
        values = {w * s for s in steps} if w else {0.25, 1.0}
        for value in sorted(values - {w}):
            weights = dict(recipe.weights)
            weights[name] = round(value, 4)
            if not any(weights.values()):
                continue
            yield dataclasses.replace(recipe, weights=weights)
    if protocol == "all" and recipe.uses("repeat"):
        for hl in HALF_LIVES:
            if hl != recipe.repeat_half_life_days:
                yield dataclasses.replace(recipe, repeat_half_life_days=hl)
        for bonus in BONUSES:
            if bonus != recipe.repeat_bonus:
                yield dataclasses.replace(recipe, repeat_bonus=bonus)
    if recipe.uses("ease"):
        for hl in INPUT_HALF_LIVES:
            if hl != recipe.input_half_life_days:
                yield dataclasses.replace(recipe, input_half_life_days=hl)


def tune_recipe(
    evalset: EvalSet,
    start: Recipe,
    protocol: str,
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    max_evaluations: int = EVALUATIONS,
) -> tuple[Recipe, float, int]:
    """Coordinate ascent on validation NDCG@10 until no move helps, ``max_evaluations``
    recipes were scored, or the deadline (the cap) passes.

    Returns (best recipe, its NDCG@10, evaluations made).
    """
    with_ease = evalset.scorer.ease_b is not None
    best = start if evalset.scorer.can_use(start) else _without_ease(start)
    best_score = evalset.evaluate(best, protocol)["ndcg"]
    evaluations = 1
    for steps in (WEIGHT_STEPS, FINE_STEPS):
        improved = True
        while improved and evaluations < max_evaluations and clock() < deadline:
            improved = False
            for candidate in _neighbours(
                best, protocol, with_ease, steps, evalset.scorer.has_signals
            ):
                if evaluations >= max_evaluations or clock() >= deadline:
                    break
                score = evalset.evaluate(candidate, protocol)["ndcg"]
                evaluations += 1
                if score > best_score + 1e-6:
                    best, best_score, improved = candidate, score, True
    return best, best_score, evaluations


def _without_ease(recipe: Recipe) -> Recipe:
    weights = {k: v for k, v in recipe.weights.items() if k != "ease"}
    return dataclasses.replace(recipe, weights=weights or {"als": 1.0})


def param_variants(base: ModelParams, *, with_signals: bool = False) -> list[ModelParams]:
    """Hyper-parameter variants tried in phase 2, most promising first.

    ``with_signals``: also the weaker signals weighted three times (at most as much as a
    purchase) and a third as much. Turning them off needs no refit: the recipe search can drop
    ``als_signals``.
    """
    signal_variants = []
    if with_signals:
        signal_variants = [
            dataclasses.replace(
                base,
                view_weight=round(min(1.0, base.view_weight * factor), 4),
                add_to_cart_weight=round(min(1.0, base.add_to_cart_weight * factor), 4),
            )
            for factor in (3.0, 1 / 3)
        ]
    out = [
        dataclasses.replace(base, factors=128, iterations=20),
        *signal_variants,
        dataclasses.replace(base, regularization=base.regularization * 4),
        dataclasses.replace(base, input_half_life_days=180.0),
        dataclasses.replace(base, ease_lambda=base.ease_lambda * 3),
        dataclasses.replace(base, ease_lambda=base.ease_lambda / 3),
        dataclasses.replace(base, weighting="confidence"),
        dataclasses.replace(base, trending_days=14),
        dataclasses.replace(base, trending_days=60),
        dataclasses.replace(base, factors=32),
        dataclasses.replace(base, regularization=base.regularization * 16),
    ]
    return [p for p in out if p != base]


def tune(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    reference_time: pd.Timestamp,
    params: ModelParams,
    start: dict[str, Recipe],
    seconds: float,
    ids: IdMaps,
    *,
    trials: int = TRIALS,
    evaluations: int = EVALUATIONS,
    variant_evaluations: int = VARIANT_EVALUATIONS,
    stage: Stage | None = None,
    max_users: int | None = None,
    with_ease: bool | None = None,
    signals: Signals | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """Search recipes and up to ``trials`` hyper-parameter variants, within the cap ``seconds``.

    ``train`` and ``validation`` are coded slices (``training.encode.encode``); ``stage`` is
    the validation stage already fitted with ``params`` (fitted here if None). With ``signals``,
    the variants also try the weaker signals weighted up and down. ``evaluations`` and
    ``variant_evaluations`` bound phase 1 per protocol (see the module docstring).
    """
    began = clock()
    deadline = began + max(0.0, seconds)
    if stage is None:
        t0 = clock()
        stage = fit_stage(train, reference_time, params, ids, with_ease=with_ease, signals=signals)
        base_cost = clock() - t0
    else:
        base_cost = sum(stage.timings.values())
    evalset = stage.evalset(validation, max_users=max_users)
    recipes, objective, n_evaluations = _tune_all(evalset, start, deadline, clock, evaluations)
    best = TuneResult(params, stage, evalset, recipes, objective, n_evaluations, 0.0, [])
    variants = param_variants(params, with_signals=signals is not None and len(signals) > 0)
    for variant in variants[: max(0, trials)]:
        # a fit's cost grows about linearly with the factors and the iterations
        scale = (variant.factors / params.factors) * (variant.iterations / params.iterations)
        estimate = base_cost * scale
        diff = _diff(params, variant)
        if clock() >= deadline or clock() + estimate > deadline:
            # the cap: skip what cannot finish in time, a cheaper variant may still fit
            best.variants_tried.append({"params": diff, "skipped": "time cap"})
            log.info("tune_variant_skipped", extra={"variant": diff, "estimate_s": estimate})
            continue
        t0 = clock()
        v_stage = fit_stage(
            train, reference_time, variant, ids, with_ease=with_ease, signals=signals
        )
        base_cost = (clock() - t0) / scale  # the latest fit is the best estimate
        v_eval = v_stage.evalset(validation, max_users=max_users)
        v_recipes, v_objective, n = _tune_all(
            v_eval, best.recipes, deadline, clock, variant_evaluations
        )
        best.evaluations += n
        gain = _mean(v_objective) - _mean(best.objective)
        best.variants_tried.append(
            {"params": diff, "mean_ndcg": _mean(v_objective), "kept": gain > 0}
        )
        log.info("tune_variant", extra={"variant": diff, "gain": gain})
        if gain > 0:
            best.params, best.stage, best.evalset = variant, v_stage, v_eval
            best.recipes, best.objective = v_recipes, v_objective
    best.seconds = clock() - began
    return best


def _tune_all(
    evalset: EvalSet,
    start: dict[str, Recipe],
    deadline: float,
    clock: Callable[[], float],
    max_evaluations: int,
) -> tuple[dict[str, Recipe], dict[str, float], int]:
    recipes: dict[str, Recipe] = {}
    objective: dict[str, float] = {}
    total = 0
    for protocol, recipe in start.items():
        # every protocol gets its budget of evaluations; the deadline is only the cap
        best, score, n = tune_recipe(
            evalset, recipe, protocol, deadline, clock=clock, max_evaluations=max_evaluations
        )
        recipes[protocol], objective[protocol], total = best, score, total + n
    return recipes, objective, total


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / max(1, len(values))


def _diff(base: ModelParams, other: ModelParams) -> dict[str, object]:
    a, b = base.to_dict(), other.to_dict()
    return {k: b[k] for k in b if a.get(k) != b[k]}
