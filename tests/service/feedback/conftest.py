"""The feedback tests' app, on SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .shop import Shop, make_shop


@pytest.fixture
def shop(database_url: str, tmp_path: Path) -> Iterator[Shop]:
    yield from make_shop(database_url, tmp_path)
