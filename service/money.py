"""Money: exact decimal amounts with their ISO 4217 currency, never floats.

One representation everywhere:

* in the API an amount is a JSON string or number read as :class:`~decimal.Decimal`
  (``"12.50"``), at most :data:`SCALE` decimal places, never negative, and always travels with a
  ``currency`` (three upper-case letters); responses write amounts as strings;
* in the database an amount is a :class:`AmountColumn`: an integer count of ten-thousandths of
  the currency's major unit, exact on SQLite (whose NUMERIC is a float) and PostgreSQL alike,
  and wide enough for any currency's minor unit (JPY 0, EUR 2, KWD 3 decimals).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy import BigInteger, Dialect
from sqlalchemy.types import TypeDecorator

SCALE = 4
"""Decimal places an amount may have."""
QUANTUM = Decimal(1).scaleb(-SCALE)
MAX_AMOUNT = Decimal("100000000000000")  # 1e14 major units: far above any order, fits BigInteger
CURRENCY_LENGTH = 3

Amount = Annotated[
    Decimal,
    Field(
        ge=0,
        lt=MAX_AMOUNT,
        decimal_places=SCALE,
        allow_inf_nan=False,
        description=f'An exact amount (a string such as "12.50"), at most {SCALE} decimals.',
    ),
]
Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    Field(description="ISO 4217 currency code, upper case (EUR, GBP, JPY).", examples=["EUR"]),
]


def to_units(amount: Decimal) -> int:
    """``amount`` in ten-thousandths; refuses what cannot be stored exactly."""
    if not amount.is_finite():
        raise ValueError(f"amount {amount} is not a finite number")
    scaled = amount.scaleb(SCALE)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"amount {amount} has more than {SCALE} decimal places")
    if abs(amount) >= MAX_AMOUNT:
        raise ValueError(f"amount {amount} is too large")
    return int(scaled)


def from_units(units: int) -> Decimal:
    """The exact amount stored as ``units`` ten-thousandths."""
    return Decimal(units).scaleb(-SCALE).quantize(QUANTUM)


class AmountColumn(TypeDecorator[Decimal]):
    """A :class:`~decimal.Decimal` column stored as integer ten-thousandths (exact everywhere)."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("money is never a float: pass a Decimal")
        return to_units(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_units(int(value))
