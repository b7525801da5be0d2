"""Encoding, history, popularity, trending and ALS weights computed in Spark.

The formulas are ``training.models``' (``build_history``, ``purchase_strength``,
``_distinct_buyers``, ``_trending``, ``als_weights``) and ``training.encode``'s: the tests
check equality on the same input. What comes back to the driver is one row per user x item
pair (the artifact's history holds them anyway), never a purchase line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from service.clock import SECONDS_PER_DAY
from training.encode import MIN_AGE_DAYS, IdMaps
from training.models import ModelParams
from training.spark.session import to_pandas

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_MICROS_PER_DAY = SECONDS_PER_DAY * 1_000_000


def encode(frame: DataFrame) -> tuple[DataFrame, IdMaps]:
    """Integer codes for users and items (positions among the sorted ids), in Spark.

    Returns (frame with columns user, item (int), order_id, timestamp, quantity; the id maps,
    on the driver). MLlib's ``StringIndexer`` (alphabetical order) counts the distinct ids
    distributed and codes every line in the JVM; the driver holds the two id lists, as the
    artifact will.
    """
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F

    indexer = StringIndexer(
        inputCols=["user_id", "item_id"],
        outputCols=["_user", "_item"],
        stringOrderType="alphabetAsc",
        handleInvalid="error",
    ).fit(frame)
    users, items = indexer.labelsArray
    coded = indexer.transform(frame).select(
        F.col("_user").cast("int").alias("user"),
        F.col("_item").cast("int").alias("item"),
        "order_id",
        "timestamp",
        "quantity",
    )
    return coded, IdMaps(
        users=pd.Index(np.asarray(users, dtype=object), dtype=object),
        items=pd.Index(np.asarray(items, dtype=object), dtype=object),
    )


def _age_days(reference_micros: int, last: Column) -> Column:
    """Days from ``last`` (a timestamp) to the reference time, at least one minute, as
    ``build_history`` computes them (float64, then float32)."""
    from pyspark.sql import functions as F

    days = (F.lit(reference_micros) - F.unix_micros(last)) / F.lit(float(_MICROS_PER_DAY))
    return F.greatest(days, F.lit(MIN_AGE_DAYS)).cast("float")


def micros(moment: pd.Timestamp) -> int:
    """A naive UTC time as microseconds since the epoch (Spark's unit)."""
    return int(pd.Timestamp(moment).value // 1000)


def pairs(coded: DataFrame, reference_time: pd.Timestamp, params: ModelParams) -> DataFrame:
    """One row per (user, item) bought up to ``reference_time``: ``orders`` (distinct
    orders), ``strength`` (each order ``1 + w ln(units)``, w the quantity weight) and
    ``age`` (days since the last purchase)."""
    from pyspark.sql import functions as F

    ref = micros(reference_time)
    upto = coded.where(F.unix_micros("timestamp") <= F.lit(ref))
    per_order = upto.groupBy("user", "item", "order_id").agg(
        F.sum("quantity").alias("units"), F.max("timestamp").alias("last")
    )
    weight = float(params.quantity_weight)
    strength = F.lit(1.0) + F.lit(weight) * F.log(F.greatest(F.col("units"), F.lit(1.0)))
    out = per_order.groupBy("user", "item").agg(
        F.count(F.lit(1)).cast("float").alias("orders"),
        F.sum(strength if weight > 0 else F.lit(1.0)).cast("float").alias("strength"),
        F.max("last").alias("last"),
    )
    return out.withColumn("age", _age_days(ref, F.col("last"))).drop("last")


def item_counts(stage_pairs: DataFrame, trending_days: int) -> DataFrame:
    """Per item: ``popularity`` (distinct buyers) and ``trending`` (distinct buyers within
    ``trending_days`` of the reference time)."""
    from pyspark.sql import functions as F

    return stage_pairs.groupBy("item").agg(
        F.count(F.lit(1)).cast("float").alias("popularity"),
        F.sum(F.when(F.col("age") <= F.lit(float(trending_days)), 1).otherwise(0))
        .cast("float")
        .alias("trending"),
    )


def als_weights(stage_pairs: DataFrame, params: ModelParams) -> DataFrame:
    """The confidence ALS is fitted on, per pair (``training.models.als_weights`` without
    signals): recency-decayed strength, then BM25 (implicit's ``bm25_weight``: idf over the
    stage's users, length over each user's row) or ``1 + alpha ln(1 + x)``. Columns user,
    item, weight (float); pairs of weight 0 left out, as ``eliminate_zeros`` does."""
    from pyspark.sql import functions as F

    decayed = (F.col("strength") * F.exp(-F.col("age") / F.lit(params.input_half_life_days))).cast(
        "float"
    )
    frame = stage_pairs.select("user", "item", decayed.alias("x"))
    if params.weighting == "bm25":
        users = frame.select("user").distinct().count()
        stats = frame.groupBy("user").agg(F.sum("x").alias("row_sum"))
        average = stats.agg(F.mean("row_sum")).first()
        assert average is not None
        buyers = frame.groupBy("item").agg(F.count(F.lit(1)).alias("df"))
        k1, b = float(params.bm25_k1), float(params.bm25_b)
        norm = F.lit(1.0 - b) + F.lit(b) * F.col("row_sum") / F.lit(float(average[0]))
        idf = F.log(F.lit(float(users))) - F.log1p(F.col("df"))
        weight = F.col("x") * F.lit(k1 + 1.0) / (F.lit(k1) * norm + F.col("x")) * idf
        frame = frame.join(stats, "user").join(buyers, "item")
    else:
        weight = F.lit(1.0) + F.lit(float(params.alpha)) * F.log1p(F.col("x"))
    out = frame.select("user", "item", weight.cast("float").alias("weight"))
    return out.where(F.col("weight") != 0)


@dataclass(frozen=True)
class History:
    """A stage's matrices on the driver, as ``build_history`` returns them, plus the item
    counts computed in Spark."""

    user_codes: npt.NDArray[np.int64]
    item_codes: npt.NDArray[np.int64]
    counts: sp.csr_matrix
    age_days: sp.csr_matrix
    strength: sp.csr_matrix
    popularity: npt.NDArray[np.float32]
    trending: npt.NDArray[np.float32]

    @property
    def pairs(self) -> int:
        return int(self.counts.nnz)


def collect_history(stage_pairs: DataFrame, items: DataFrame) -> History:
    """The pairs (and the per-item counts) on the driver as CSR matrices: rows are the users
    present (sorted codes), columns the items present, entries sorted by column."""
    frame = to_pandas(stage_pairs.select("user", "item", "orders", "strength", "age"))
    users = frame["user"].to_numpy(dtype=np.int64)
    items_of = frame["item"].to_numpy(dtype=np.int64)
    user_codes, user_idx = np.unique(users, return_inverse=True)
    item_codes, item_idx = np.unique(items_of, return_inverse=True)
    order = np.lexsort((item_idx, user_idx))
    user_idx, item_idx = user_idx[order], item_idx[order]
    shape = (len(user_codes), len(item_codes))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_idx, minlength=shape[0]), out=indptr[1:])
    indices = item_idx.astype(np.int32)

    def matrix(column: str) -> sp.csr_matrix:
        data = frame[column].to_numpy(dtype=np.float32)[order]
        return sp.csr_matrix((data, indices.copy(), indptr.copy()), shape=shape)

    per_item = to_pandas(items)
    where = np.searchsorted(item_codes, per_item["item"].to_numpy(dtype=np.int64))
    popularity = np.zeros(shape[1], dtype=np.float32)
    trending = np.zeros(shape[1], dtype=np.float32)
    popularity[where] = per_item["popularity"].to_numpy(dtype=np.float32)
    trending[where] = per_item["trending"].to_numpy(dtype=np.float32)
    return History(
        user_codes=user_codes.astype(np.int64),
        item_codes=item_codes.astype(np.int64),
        counts=matrix("orders"),
        age_days=matrix("age"),
        strength=matrix("strength"),
        popularity=popularity,
        trending=trending,
    )
