"""Money is exact: Decimal in, the same Decimal out of both databases; floats and excess
decimals are refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select

from service.money import Amount, AmountColumn, Currency, from_units, to_units


class Price(BaseModel):
    amount: Amount
    currency: Currency


@pytest.mark.parametrize(
    "text", ["0", "0.1", "12.50", "99999999999999.9999", "0.0001", "1234567.8912"]
)
def test_units_round_trip_exactly(text: str) -> None:
    assert from_units(to_units(Decimal(text))) == Decimal(text)


@pytest.mark.parametrize("text", ["0.00001", "NaN", "Infinity", "1e20"])
def test_amounts_that_cannot_be_stored_exactly_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="amount"):
        to_units(Decimal(text))


def test_the_api_type_reads_strings_and_names_the_problem() -> None:
    assert Price.model_validate({"amount": "0.10", "currency": "EUR"}).amount == Decimal("0.10")
    assert Price.model_validate({"amount": "3", "currency": "JPY"}).model_dump(mode="json") == {
        "amount": "3",
        "currency": "JPY",
    }
    for bad in (
        {"amount": "-1", "currency": "EUR"},
        {"amount": "1.00001", "currency": "EUR"},
        {"amount": "1", "currency": "eur"},
        {"amount": "1", "currency": "EURO"},
    ):
        with pytest.raises(ValidationError):
            Price.model_validate(bad)


def test_both_databases_return_the_exact_amount(database_url: str) -> None:
    table = Table(
        "prices",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("amount", AmountColumn()),
    )
    engine = create_engine(database_url)
    try:
        table.create(engine)
        values = [Decimal("0.1"), Decimal("0.2"), Decimal("99999999999999.9999")]
        with engine.begin() as connection:
            connection.execute(insert(table), [{"amount": value} for value in values])
        with engine.connect() as connection:
            stored = [row.amount for row in connection.execute(select(table).order_by(table.c.id))]
        assert stored == values
        assert sum(stored[:2]) == Decimal("0.3")  # never 0.30000000000000004
        with pytest.raises(Exception, match="float"), engine.begin() as connection:
            connection.execute(insert(table), [{"amount": 0.1}])
    finally:
        engine.dispose()
