"""The factorisation: Spark MLlib ALS on the cluster, or implicit's ALS on the driver.

``implicit`` on the driver (``training.models.fit_als``, exactly the pandas engine's fit,
warm starts included) needs the pairs' weights in the driver's memory, about
``DRIVER_BYTES_PER_PAIR`` bytes a pair; ``auto`` chooses it up to ``AUTO_MAX_PAIRS`` pairs and
MLlib past them. MLlib's implicit ALS differs from implicit's in two ways that matter:

- confidence: MLlib uses ``1 + alpha * r``; implicit uses the weight itself. The weights are
  given as ``r`` with ``alpha = 1``;
- regularisation: MLlib multiplies ``regParam`` by each row's number of ratings (its
  ``numExplicits``), implicit uses one constant. ``regParam`` is set to the constant divided
  by the mean number of items per user, so the typical user is regularised alike.

MLlib has no warm start: each stage is fitted from cold with ``params.iterations``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from service.errors import ModelFitError
from training.models import ModelParams, fit_als
from training.spark.aggregate import History
from training.spark.session import to_pandas

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

FitChoice = Literal["auto", "mllib", "implicit"]
FIT_CHOICES: tuple[str, ...] = ("auto", "mllib", "implicit")
# the weights (CSR and implicit's transposed copy) and the history of one stage: about 40
# bytes a pair on the driver; 100M pairs is about 4 GB
DRIVER_BYTES_PER_PAIR = 40
AUTO_MAX_PAIRS = 100_000_000


def chosen_fit(choice: str, pairs: int, max_pairs: int = AUTO_MAX_PAIRS) -> str:
    """``mllib`` or ``implicit`` for ``choice`` (``auto``: implicit up to ``max_pairs``)."""
    if choice not in FIT_CHOICES:
        raise ValueError(f"--spark-fit must be one of {', '.join(FIT_CHOICES)}, not {choice!r}")
    if choice != "auto":
        return choice
    return "implicit" if pairs <= max_pairs else "mllib"


def mllib_reg_param(params: ModelParams, history: History) -> float:
    """MLlib's ``regParam`` matching implicit's constant for the mean user (see the module)."""
    per_user = history.pairs / max(1, len(history.user_codes))
    return float(params.regularization) / max(per_user, 1.0)


def fit_implicit(
    history: History,
    params: ModelParams,
    init: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """implicit's ALS on the driver, as the pandas engine fits it."""
    return fit_als(history.strength, history.age_days, params, init=init)


def fit_mllib(
    weights: DataFrame, history: History, params: ModelParams
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Spark MLlib's implicit ALS on ``weights`` (user, item, weight); the factors come back
    in ``history``'s row and column order (a row MLlib has no vector for: zeros)."""
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=params.factors,
        maxIter=params.iterations,
        regParam=mllib_reg_param(params, history),
        implicitPrefs=True,
        alpha=1.0,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
        seed=params.seed,
        nonnegative=False,
        coldStartStrategy="nan",
    )
    model = als.fit(weights)
    users = _factors(model.userFactors, history.user_codes, params.factors)
    items = _factors(model.itemFactors, history.item_codes, params.factors)
    if not (np.isfinite(users).all() and np.isfinite(items).all()):
        raise ModelFitError("ALS factors are not finite; lower the learning weights or factors")
    return users, items


def _factors(frame: DataFrame, codes: npt.NDArray[np.int64], rank: int) -> npt.NDArray[np.float32]:
    """MLlib's (id, features) rows as a matrix over ``codes`` (sorted)."""
    rows = to_pandas(frame)
    out = np.zeros((len(codes), rank), dtype=np.float32)
    if not len(rows):
        return out
    ids = rows["id"].to_numpy(dtype=np.int64)
    where = np.searchsorted(codes, ids)
    inside = (where < len(codes)) & (codes[np.minimum(where, len(codes) - 1)] == ids)
    vectors = np.stack(rows["features"].to_numpy())[inside].astype(np.float32)
    out[where[inside]] = vectors
    return out
