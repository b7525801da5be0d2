"""Fixtures shared by every test: tiny synthetic shops, trained model roots, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.data import Purchases, purchases_from_frame
from training.synthetic import SyntheticShop, generate_shop, spec_for

SHARED = Path(__file__).resolve().parents[2] / "shared"
ONLINE_RETAIL = SHARED / "data" / "online-retail" / "online_retail.csv.gz"


def require_or_skip(condition: bool, reason: str, variable: str) -> None:
    """Skip with ``reason`` on a developer's machine; fail in CI where ``variable`` is set."""
    if condition:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} (and {variable}=1 says it must be available)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    require_or_skip(
        ONLINE_RETAIL.is_file(),
        f"Online Retail data set not present at {ONLINE_RETAIL}",
        "RECOFFER_REQUIRE_SHARED_DATA",
    )
    return ONLINE_RETAIL


@pytest.fixture(scope="session")
def tiny_shop() -> SyntheticShop:
    return generate_shop(spec_for("tiny"))


@pytest.fixture(scope="session")
def small_shop() -> SyntheticShop:
    return generate_shop(spec_for("small"))


@pytest.fixture(scope="session")
def tiny_purchases(tiny_shop: SyntheticShop) -> Purchases:
    return purchases_from_frame(tiny_shop.purchases, source="tiny-shop")


@pytest.fixture(scope="session")
def small_purchases(small_shop: SyntheticShop) -> Purchases:
    return purchases_from_frame(small_shop.purchases, source="small-shop")
