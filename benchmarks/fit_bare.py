"""A bare implicit ALS fit on a purchase file's user x item matrix: the yardstick for training.

Prints a JSON line with the fit time (matrix building excluded) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks.common import report_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", help="purchases.parquet with user_id and item_id")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    frame = pd.read_parquet(args.data, columns=["user_id", "item_id"])
    users, _ = pd.factorize(frame["user_id"])
    items, _ = pd.factorize(frame["item_id"])
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)),
        shape=(users.max() + 1, items.max() + 1),
    )
    matrix.sum_duplicates()
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=args.factors,
            iterations=args.iterations,
            num_threads=args.threads,
            random_state=0,
        )
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - started
    print(json.dumps({"fit_seconds": seconds, "nnz": int(matrix.nnz), "shape": matrix.shape}))
    report_peak()


if __name__ == "__main__":
    main()
