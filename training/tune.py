"""Time-boxed search for blend weights and model hyper-parameters on the validation split.

Nothing here sees the test window: the pipeline hands in a stage fitted on purchases before the
validation cut-off and the purchases between the two cut-offs.

Two phases share one deadline:
1. coordinate ascent over the blend's weights and constants, on cached component scores (cheap);
2. while time remains, refit the components with other ALS/EASE hyper-parameters and re-run a
   short phase 1 for each; keep a variant only when it raises the mean blend NDCG@10.
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
) -> tuple[Recipe, float, int]:
    """Coordinate ascent on validation NDCG@10 until no move helps or the deadline passes.

    Returns (best recipe, its NDCG@10, evaluations made).
    """
    with_ease = evalset.scorer.ease_b is not None
    best = start if evalset.scorer.can_use(start) else _without_ease(start)
    best_score = evalset.evaluate(best, protocol)["ndcg"]
    evaluations = 1
    for steps in (WEIGHT_STEPS, FINE_STEPS):
        improved = True
        while improved and clock() < deadline:
            improved = False
            for candidate in _neighbours(
                best, protocol, with_ease, steps, evalset.scorer.has_signals
            ):
                if clock() >= deadline:
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
    stage: Stage | None = None,
    max_users: int | None = None,
    with_ease: bool | None = None,
    signals: Signals | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """Search recipes (and, time allowing, hyper-parameters) within ``seconds``.

    ``train`` and ``validation`` are coded slices (``training.encode.encode``); ``stage`` is
    the validation stage already fitted with ``params`` (fitted here if None). With ``signals``,
    the variants also try the weaker signals weighted up and down.
    """
    began = clock()
    deadline = began + max(0.0, seconds)
    if stage is None:
        stage = fit_stage(train, reference_time, params, ids, with_ease=with_ease, signals=signals)
    evalset = stage.evalset(validation, max_users=max_users)
    recipes, objective, evaluations = _tune_all(evalset, start, deadline, clock)
    best = TuneResult(params, stage, evalset, recipes, objective, evaluations, 0.0, [])
    for variant in param_variants(params, with_signals=signals is not None and len(signals) > 0):
        fit_cost = sum(stage.timings.values()) * (variant.factors / params.factors)
        if clock() + 2 * fit_cost > deadline:
            break
        v_stage = fit_stage(
            train, reference_time, variant, ids, with_ease=with_ease, signals=signals
        )
        v_eval = v_stage.evalset(validation, max_users=max_users)
        v_recipes, v_objective, n = _tune_all(v_eval, best.recipes, deadline, clock)
        best.evaluations += n
        gain = _mean(v_objective) - _mean(best.objective)
        best.variants_tried.append(
            {"params": _diff(params, variant), "mean_ndcg": _mean(v_objective), "kept": gain > 0}
        )
        log.info("tune_variant", extra={"variant": _diff(params, variant), "gain": gain})
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
) -> tuple[dict[str, Recipe], dict[str, float], int]:
    recipes: dict[str, Recipe] = {}
    objective: dict[str, float] = {}
    total = 0
    protocols = list(start)
    for index, protocol in enumerate(protocols):
        # split the remaining time fairly between the protocols still to tune
        share = (deadline - clock()) / (len(protocols) - index)
        recipe, score, n = tune_recipe(
            evalset, start[protocol], protocol, clock() + max(0.0, share), clock=clock
        )
        recipes[protocol], objective[protocol], total = recipe, score, total + n
    return recipes, objective, total


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / max(1, len(values))


def _diff(base: ModelParams, other: ModelParams) -> dict[str, object]:
    a, b = base.to_dict(), other.to_dict()
    return {k: b[k] for k in b if a.get(k) != b[k]}
