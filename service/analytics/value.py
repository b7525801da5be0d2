"""Predicted customer lifetime value as ``recoffer clv --write`` stores it: write, read, summarise.

The model (BG/NBD and Gamma-Gamma, ``training.clv``) runs in the trainer; the service only
reads its table ``customer_value``, so nothing of the model library is on the API's path.

The summary of a run, the same function for the command and the API (so both agree to the last
digit): the customers, the total and the mean of their predicted values, the quantiles of the
predicted value (linear between the two nearest ranks, exact in :class:`~decimal.Decimal`,
rounded half-even to cents), the sum of the expected purchases (``math.fsum``, independent of
the order rows are read in), and the top customers by predicted value (ties by user id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import Engine, delete, select

from service.tables import customer_value

CENTS = Decimal("0.01")
QUANTILES: tuple[tuple[str, Decimal], ...] = (
    ("p10", Decimal("0.1")),
    ("p25", Decimal("0.25")),
    ("p50", Decimal("0.5")),
    ("p75", Decimal("0.75")),
    ("p90", Decimal("0.9")),
    ("p99", Decimal("0.99")),
)
CHUNK = 5_000  # rows per statement of a write (SQLite's bound parameters stay few)


@dataclass(frozen=True)
class CustomerValue:
    """One customer's prediction for the horizon; money in the run's currency, to cents."""

    user_id: str
    expected_purchases: float
    p_alive: float
    expected_order_value: Decimal
    predicted_value: Decimal


@dataclass(frozen=True)
class Run:
    """What every row of one run shares."""

    currency: str
    horizon_days: int
    as_of: datetime
    fitted_at: datetime


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENTS, rounding=ROUND_HALF_EVEN)


def quantile(ordered: Sequence[Decimal], p: Decimal) -> Decimal:
    """The ``p`` quantile of ascending ``ordered`` (not empty): linear between nearest ranks."""
    position = (len(ordered) - 1) * p
    low = int(position.to_integral_value(rounding=ROUND_FLOOR))
    if low + 1 >= len(ordered):
        return ordered[-1]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (position - low)


def _row(v: CustomerValue) -> dict[str, Any]:
    return {
        "user_id": v.user_id,
        "expected_purchases": v.expected_purchases,
        "p_alive": v.p_alive,
        "expected_order_value": str(v.expected_order_value),
        "predicted_value": str(v.predicted_value),
    }


def summarize(values: Iterable[CustomerValue], run: Run | None, limit: int) -> dict[str, Any]:
    """The run's summary of the module's docstring and its ``limit`` top customers."""
    rows = list(values)
    amounts = sorted(v.predicted_value for v in rows)
    top = sorted(rows, key=lambda v: (-v.predicted_value, v.user_id))[:limit]
    total = sum(amounts, Decimal(0))
    return {
        "customers": len(rows),
        "currency": run.currency if run else None,
        "horizon_days": run.horizon_days if run else None,
        "as_of": run.as_of if run else None,
        "fitted_at": run.fitted_at if run else None,
        "expected_purchases": math.fsum(v.expected_purchases for v in rows),
        "total": str(cents(total)) if rows else None,
        "mean": str(cents(total / len(rows))) if rows else None,
        "quantiles": {name: str(cents(quantile(amounts, p))) for name, p in QUANTILES}
        if rows
        else None,
        "top": [_row(v) for v in top],
    }


def write(engine: Engine, values: Sequence[CustomerValue], run: Run) -> int:
    """Replace the table with ``values`` in one transaction; rows written.

    A user erased since the run read their orders has no ``users`` row any more and gets no
    prediction (``Repository.present_users``, as the segment writes do).
    """
    from service.activity.repository import Repository

    repository = Repository(engine)
    written = 0
    with repository.writing() as conn:
        conn.execute(delete(customer_value))
        for start in range(0, len(values), CHUNK):
            chunk = values[start : start + CHUNK]
            present = repository.present_users(conn, [v.user_id for v in chunk])
            rows = [
                {
                    "user_id": v.user_id,
                    "expected_purchases": v.expected_purchases,
                    "p_alive": v.p_alive,
                    "expected_order_value": v.expected_order_value,
                    "predicted_value": v.predicted_value,
                    "currency": run.currency,
                    "horizon_days": run.horizon_days,
                    "as_of": run.as_of,
                    "fitted_at": run.fitted_at,
                }
                for v in chunk
                if v.user_id in present
            ]
            if rows:
                conn.execute(customer_value.insert(), rows)
                written += len(rows)
    return written


def _value(row: Any) -> CustomerValue:
    return CustomerValue(
        user_id=row.user_id,
        expected_purchases=row.expected_purchases,
        p_alive=row.p_alive,
        expected_order_value=cents(row.expected_order_value),  # stored in ten-thousandths
        predicted_value=cents(row.predicted_value),
    )


def read_summary(engine: Engine, limit: int) -> dict[str, Any]:
    """The stored run's summary (``customers`` 0 and nulls when no run was written)."""
    t = customer_value
    query = select(
        t.c.user_id,
        t.c.expected_purchases,
        t.c.p_alive,
        t.c.expected_order_value,
        t.c.predicted_value,
        t.c.currency,
        t.c.horizon_days,
        t.c.as_of,
        t.c.fitted_at,
    )
    values, run = [], None
    with engine.connect() as conn:  # one statement: one run's rows, whatever writes meanwhile
        for row in conn.execution_options(stream_results=True, yield_per=10_000).execute(query):
            values.append(_value(row))
            if run is None:
                run = Run(row.currency, row.horizon_days, row.as_of, row.fitted_at)
    return summarize(values, run, limit)


def value_of(engine: Engine, user_id: str) -> dict[str, Any] | None:
    """One user's stored prediction with its run's currency, horizon and times; None if none."""
    with engine.connect() as conn:
        row = conn.execute(
            select(customer_value).where(customer_value.c.user_id == user_id)
        ).one_or_none()
    if row is None:
        return None
    return {
        **_row(_value(row)),
        "currency": row.currency,
        "horizon_days": row.horizon_days,
        "as_of": row.as_of,
        "fitted_at": row.fitted_at,
    }
