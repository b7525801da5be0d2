"""Predicted customer lifetime value: BG/NBD and Gamma-Gamma (``pymc-marketing``), checked on a
holdout window.

The input is the loyalty metrics' order lines (``service.analytics``: a user's lines with one
order key are one order, dated by its earliest line, its amount the sum of its lines'
``price x quantity`` per currency). The model's **currency** is the one most orders have an
amount in; an order without an amount in it is left out (counted in ``orders_left_out``).

The buy-till-you-die models count **purchase days** (UTC), as Fader, Hardie and Lee define them
and as ``pymc_marketing.clv.rfm_summary`` summarises transactions: two orders of one customer on
one day are one purchase of their summed amount. Per customer, up to the data's **end** (the day
of the last order): ``frequency`` = purchase days after the first, ``recency`` = days from the
first to the last, ``T`` = days from the first to the end, ``monetary_value`` = the mean amount
of the repeat purchase days (the first excluded, as Gamma-Gamma wants).

* BG/NBD (``BetaGeoModel``) on frequency, recency, T; Gamma-Gamma (``GammaGammaModel``) on the
  customers with a repeat purchase and a positive mean. Both by maximum a posteriori with flat
  priors (``HalfFlat``): the maximum likelihood estimates of the papers (and of ``lifetimes``),
  in a second or two, no sampling.
* Per customer, for ``horizon_days`` after the end: ``expected_purchases`` (BG/NBD),
  ``p_alive`` (BG/NBD, 1 for a customer without a repeat purchase), ``expected_order_value``
  (Gamma-Gamma's conditional mean spend; for a one-time customer the population mean), and
  ``predicted_value = expected_purchases x expected_order_value``, undiscounted. The model math is
  float; what is stored and served is ``expected_purchases`` and ``p_alive`` to 6 decimals, the
  order value as :class:`~decimal.Decimal` rounded half-even to cents, and the predicted value
  the exact product of those two, rounded half-even to cents.

**Holdout check.** The last ``holdout_days`` days of the data are held out: the models are fitted
on the days before (``pymc_marketing.clv.rfm_train_test_split``), each calibration customer's
expected purchases over the holdout are set against the purchase days they actually had in it.
Reported: totals, mean absolute error per customer, Pearson correlation, and the means per
calibration frequency (0, 1, ... 6, 7+: the calibration/holdout plot). The **baseline** repeats
each customer's calibration rate, ``frequency / T x holdout_days`` (0 when T = 0), so the model's
figures have something to beat. Customers whose first order is in the holdout are not in it.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from service.analytics.loyalty import Line, orders_of
from service.analytics.value import CustomerValue, Run, cents
from service.errors import DataError, ModelFitError

if TYPE_CHECKING:
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel


HORIZON_DAYS = 90
HOLDOUT_DAYS = 90
MIN_CUSTOMERS = 10  # fewer, or no repeat customer: nothing to fit
FREQUENCY_BINS = 7  # calibration frequencies 0..6, then 7+
DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Transactions:
    """The model's input: one row per order with an amount in ``currency``."""

    frame: pd.DataFrame  # customer_id (str), day (naive UTC midnight), value (float)
    currency: str
    orders: int
    orders_left_out: int
    end: pd.Timestamp  # the last order's day


@dataclass
class Fitted:
    bg: BetaGeoModel
    gg: GammaGammaModel
    seconds: float

    def parameters(self) -> dict[str, dict[str, float]]:
        def of(model: Any, names: tuple[str, ...]) -> dict[str, float]:
            result = model.fit_result
            return {n: float(result[n].values.reshape(-1)[0]) for n in names}

        return {
            "bg_nbd": of(self.bg, ("r", "alpha", "a", "b")),
            "gamma_gamma": of(self.gg, ("p", "q", "v")),
        }


def transactions(lines: Iterable[Line]) -> Transactions:
    """The orders of ``lines`` (grouped as the loyalty metrics group them) in one currency.

    Raises:
        DataError: no order has an amount.
    """
    orders = orders_of(lines)
    counts = Counter(cur for o in orders for cur in o.amounts)
    if not counts:
        raise DataError("no order with an amount: predicted lifetime value needs prices")
    currency = min(counts, key=lambda c: (-counts[c], c))  # most orders; ties by code
    kept = [o for o in orders if currency in o.amounts]
    frame = pd.DataFrame(
        {
            "customer_id": [o.user_id for o in kept],
            "day": pd.to_datetime([o.at.astimezone(UTC).replace(tzinfo=None) for o in kept]),
            "value": [float(o.amounts[currency]) for o in kept],
        }
    )
    frame["day"] = frame["day"].dt.floor("D")
    return Transactions(
        frame=frame,
        currency=currency,
        orders=len(kept),
        orders_left_out=len(orders) - len(kept),
        end=frame["day"].max(),
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """PyTensor's note that it links no BLAS (irrelevant for these scalar models) and the
    optimiser's progress stay off the command's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        for name in ("pymc", "pytensor"):
            logging.getLogger(name).setLevel(logging.ERROR)
        yield


def summary_of(frame: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """frequency, recency, T and monetary_value per customer up to ``end`` (a day)."""
    from pymc_marketing.clv import rfm_summary

    with _quiet():
        summary = rfm_summary(
            frame, "customer_id", "day", monetary_value_col="value", observation_period_end=end
        )
    return summary


def fit(summary: pd.DataFrame) -> Fitted:
    """BG/NBD and Gamma-Gamma on ``summary`` (``summary_of``), by MAP with flat priors.

    Raises:
        DataError: too few customers, or none with a repeat purchase.
        ModelFitError: the estimates are not finite, or Gamma-Gamma's mean spend is infinite.
    """
    with _quiet():
        from pymc_extras.prior import Prior
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    if len(summary) < MIN_CUSTOMERS or repeat.empty:
        raise DataError(
            f"{len(summary):,} customers, {len(repeat):,} with a repeat purchase: a lifetime "
            f"value model needs {MIN_CUSTOMERS} customers and repeat purchases"
        )
    flat = Prior("HalfFlat")
    started = time.perf_counter()
    with _quiet():
        bg = BetaGeoModel(model_config={"r": flat, "alpha": flat, "a": flat, "b": flat})
        bg.fit(
            data=summary[["customer_id", "frequency", "recency", "T"]],
            method="map",
            progressbar=False,
        )
        gg = GammaGammaModel(model_config={"p": flat, "q": flat, "v": flat})
        gg.fit(
            data=repeat[["customer_id", "frequency", "monetary_value"]],
            method="map",
            progressbar=False,
        )
    fitted = Fitted(bg, gg, time.perf_counter() - started)
    estimates = fitted.parameters()
    values = [v for part in estimates.values() for v in part.values()]
    if not all(math.isfinite(v) for v in values):
        raise ModelFitError(f"the lifetime value models did not converge: {estimates}")
    if estimates["gamma_gamma"]["q"] <= 1:
        raise ModelFitError(
            f"Gamma-Gamma q = {estimates['gamma_gamma']['q']:.3g} <= 1: the mean order value "
            "is unbounded on this data"
        )
    return fitted


def _per_customer(values: Any, customers: pd.Series) -> np.ndarray:
    """An xarray result (chain, draw, customer_id) as floats in the order of ``customers``."""
    series = values.squeeze(("chain", "draw"), drop=True).to_series()
    return np.asarray(series.reindex(customers.to_numpy()).to_numpy(), dtype=float)


def predict(fitted: Fitted, summary: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """customer_id, expected_purchases, p_alive, expected_order_value (floats) per customer."""
    customers = summary["customer_id"]
    with _quiet():
        purchases = fitted.bg.expected_purchases(data=summary, future_t=horizon_days)
        alive = fitted.bg.expected_probability_alive(data=summary)
        spend = fitted.gg.expected_customer_spend(
            data=summary[["customer_id", "frequency", "monetary_value"]]
        )
    return pd.DataFrame(
        {
            "customer_id": customers.to_numpy(),
            "expected_purchases": _per_customer(purchases, customers),
            "p_alive": _per_customer(alive, customers),
            "expected_order_value": _per_customer(spend, customers),
        }
    )


def _money(value: float) -> Decimal:
    return cents(Decimal(repr(max(value, 0.0))))


def customer_values(predictions: pd.DataFrame) -> list[CustomerValue]:
    """Each customer's figures as stored and served: floats to 6 decimals, the order value to
    cents, and the predicted value their exact product, to cents (so the row adds up)."""
    out = []
    for row in predictions.itertuples(index=False):
        order_value = _money(float(row.expected_order_value))
        purchases = round(max(float(row.expected_purchases), 0.0), 6)
        out.append(
            CustomerValue(
                user_id=str(row.customer_id),
                expected_purchases=purchases,
                p_alive=round(float(row.p_alive), 6),
                expected_order_value=order_value,
                predicted_value=cents(Decimal(repr(purchases)) * order_value),
            )
        )
    return out


@dataclass
class Prediction:
    values: list[CustomerValue]
    run: Run
    fitted: Fitted
    data: Transactions


def predict_values(data: Transactions, horizon_days: int = HORIZON_DAYS) -> Prediction:
    """Fit on all of ``data`` and predict every customer's value over ``horizon_days``."""
    summary = summary_of(data.frame, data.end)
    fitted = fit(summary)
    predictions = predict(fitted, summary, horizon_days)
    end = (data.end + DAY).to_pydatetime().replace(tzinfo=UTC)
    run = Run(data.currency, horizon_days, end, datetime.now(UTC))
    return Prediction(customer_values(predictions), run, fitted, data)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _figures(predicted: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    total = float(predicted.sum())
    return {
        "predicted": total,
        "ratio": total / float(actual.sum()) if actual.sum() else None,
        "mae": float(np.abs(predicted - actual).mean()),
        "rmse": float(np.sqrt(((predicted - actual) ** 2).mean())),
        "correlation": _correlation(predicted, actual),
    }


def holdout_check(data: Transactions, holdout_days: int = HOLDOUT_DAYS) -> dict[str, Any]:
    """The module docstring's holdout check, as a JSON-ready dict.

    Raises:
        DataError: the data has no calibration days before the holdout, or too few customers.
    """
    from pymc_marketing.clv import rfm_train_test_split

    first = data.frame["day"].min()
    calibration_end = data.end - holdout_days * DAY  # its last day
    if calibration_end < first:
        span = (data.end - first).days + 1
        raise DataError(
            f"--holdout-days {holdout_days}: the data spans {span} days; "
            "hold out fewer to leave calibration days"
        )
    with _quiet():
        split = rfm_train_test_split(
            data.frame,
            "customer_id",
            "day",
            train_period_end=calibration_end,
            test_period_end=data.end,
            monetary_value_col="value",
        )
    fitted = fit(split)
    predicted = predict(fitted, split, holdout_days)
    model = predicted["expected_purchases"].to_numpy()
    actual = split["test_frequency"].to_numpy(dtype=float)
    frequency = split["frequency"].to_numpy()
    age = split["T"].to_numpy(dtype=float)
    baseline = np.divide(frequency * holdout_days, age, out=np.zeros_like(age), where=age > 0)
    # the holdout's value: actual purchase days x their mean amount; predicted x expected spend
    actual_value = actual * split["test_monetary_value"].to_numpy(dtype=float)
    model_value = model * predicted["expected_order_value"].to_numpy()
    baseline_value = baseline * split["monetary_value"].to_numpy(dtype=float)
    bins = []
    for k in range(FREQUENCY_BINS + 1):
        mask = frequency >= k if k == FREQUENCY_BINS else frequency == k
        if not mask.any():
            continue
        bins.append(
            {
                "frequency": f"{k}+" if k == FREQUENCY_BINS else str(k),
                "customers": int(mask.sum()),
                "actual": float(actual[mask].mean()),
                "model": float(model[mask].mean()),
                "baseline": float(baseline[mask].mean()),
            }
        )
    holdout_start = calibration_end + DAY
    return {
        "calibration_start": first.date().isoformat(),
        "calibration_end": calibration_end.date().isoformat(),
        "holdout_start": holdout_start.date().isoformat(),
        "holdout_end": data.end.date().isoformat(),
        "holdout_days": holdout_days,
        "customers": len(split),
        "actual": float(actual.sum()),
        "model": _figures(model, actual),
        "baseline": _figures(baseline, actual),
        "value": {
            "actual": float(actual_value.sum()),
            "model": float(model_value.sum()),
            "baseline": float(baseline_value.sum()),
        },
        "by_frequency": bins,
        "parameters": fitted.parameters(),
        "fit_seconds": fitted.seconds,
    }


def model_info(fitted: Fitted) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "library": "pymc-marketing",
        "version": version("pymc-marketing"),
        "method": "map",
        "parameters": fitted.parameters(),
        "fit_seconds": fitted.seconds,
    }
