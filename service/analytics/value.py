"""Predicted customer lifetime value as ``recoffer clv --write`` stores it: write, read, summarise.

The model (BG/NBD and Gamma-Gamma, ``training.clv``) runs in the trainer; the service only
reads its table ``customer_value``, so nothing of the model library is on the API's path.

The summary of a run, computed the same way by the command (from its predictions in memory) and
by the API (with SQL aggregates and the index on ``predicted_value``: a few rows read, however
many customers), so both agree to the last digit: the customers, the total and the mean of
their predicted values, the quantiles of the predicted value (linear between the two nearest
ranks, exact in :class:`~decimal.Decimal`, rounded half-even to cents), the sum of the expected
purchases (each stored to 6 decimals, so summed exactly as integer millionths, in any order),
and the top customers by predicted value (ties by user id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, func, select

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


def positions(count: int, p: Decimal) -> tuple[int, Decimal]:
    """Where the ``p`` quantile of ``count`` ascending values lies: the lower rank (from 0)
    and the fraction of the way to the next one."""
    position = (count - 1) * p
    low = int(position.to_integral_value(rounding=ROUND_FLOOR))
    return low, position - low


def between(low: Decimal, high: Decimal | None, fraction: Decimal) -> Decimal:
    return low if high is None or not fraction else low + (high - low) * fraction


def quantile(ordered: Sequence[Decimal], p: Decimal) -> Decimal:
    """The ``p`` quantile of ascending ``ordered`` (not empty): linear between nearest ranks."""
    low, fraction = positions(len(ordered), p)
    high = ordered[low + 1] if low + 1 < len(ordered) else None
    return between(ordered[low], high, fraction)


def micro(value: float) -> int:
    """A stored expected-purchases figure (6 decimals) in exact millionths."""
    return round(value * 1_000_000)


def _row(v: CustomerValue) -> dict[str, Any]:
    return {
        "user_id": v.user_id,
        "expected_purchases": v.expected_purchases,
        "p_alive": v.p_alive,
        "expected_order_value": str(v.expected_order_value),
        "predicted_value": str(v.predicted_value),
    }


def _summary(
    run: Run | None,
    customers: int,
    purchases_micro: int,
    total: Decimal,
    quantiles: dict[str, Decimal],
    top: list[CustomerValue],
) -> dict[str, Any]:
    return {
        "customers": customers,
        "currency": run.currency if run else None,
        "horizon_days": run.horizon_days if run else None,
        "as_of": run.as_of if run else None,
        "fitted_at": run.fitted_at if run else None,
        "expected_purchases": purchases_micro / 1_000_000,
        "total": str(cents(total)) if customers else None,
        "mean": str(cents(total / customers)) if customers else None,
        "quantiles": {n: str(cents(v)) for n, v in quantiles.items()} if customers else None,
        "top": [_row(v) for v in top],
    }


def summarize(values: Iterable[CustomerValue], run: Run | None, limit: int) -> dict[str, Any]:
    """The run's summary of the module's docstring and its ``limit`` top customers."""
    rows = list(values)
    amounts = sorted(v.predicted_value for v in rows)
    top = sorted(rows, key=lambda v: (-v.predicted_value, v.user_id))[:limit]
    quantiles = {name: quantile(amounts, p) for name, p in QUANTILES} if rows else {}
    purchases = sum(micro(v.expected_purchases) for v in rows)
    return _summary(run, len(rows), purchases, sum(amounts, Decimal(0)), quantiles, top)


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
    """The stored run's summary (``customers`` 0 and nulls when no run was written), from SQL
    aggregates, the ranks the quantiles need and the top rows, in one snapshot."""
    t = customer_value
    by_value = select(t.c.predicted_value).order_by(t.c.predicted_value)
    user: ColumnElement[Any] = t.c.user_id
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for every statement below
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            user = user.collate("C")  # ties ordered by code point, as Python orders them
        with conn.begin():
            first = conn.execute(
                select(t.c.currency, t.c.horizon_days, t.c.as_of, t.c.fitted_at).limit(1)
            ).one_or_none()
            count, total, purchases = conn.execute(
                select(
                    func.count(),
                    func.sum(t.c.predicted_value),
                    func.sum(func.round(t.c.expected_purchases * 1_000_000)),
                )
            ).one()
            quantiles = {}
            for name, p in QUANTILES if count else ():
                low, fraction = positions(count, p)
                pair = list(conn.execute(by_value.limit(2).offset(low)).scalars())
                quantiles[name] = between(pair[0], pair[1] if len(pair) > 1 else None, fraction)
            top = conn.execute(
                select(t).order_by(t.c.predicted_value.desc(), user).limit(limit)
            ).all()
    run = None if first is None else Run(*first)
    return _summary(
        run,
        int(count),
        int(purchases or 0),
        total if total is not None else Decimal(0),
        quantiles,
        [_value(row) for row in top],
    )


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
