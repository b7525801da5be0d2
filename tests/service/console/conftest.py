"""A console to sign in to: the service on a temporary SQLite database, one key per role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from .pages import console_settings


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(console_settings(tmp_path))) as client:
        yield client
