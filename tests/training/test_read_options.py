"""What a shop's files really hold: ids outside the service's alphabet, day-first dates,
semicolons, and timestamps in the future (training/data/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.errors import DataError
from training.cli import app
from training.data.formats import load_purchases


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_an_id_the_service_would_refuse_is_refused_naming_column_and_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        "user_id,item_id,timestamp\nu1,i1,2026-01-01\nu2,SKU/42,2026-01-02\nu3,i1,2026-01-03\n",
    )
    with pytest.raises(DataError) as caught:
        load_purchases(path)
    message = str(caught.value)
    assert "'item_id'" in message
    assert "data row 2" in message
    assert "'/'" in message
    assert "\n" not in message


def test_the_trainer_exits_2_on_an_id_outside_the_alphabet(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "user_id,item_id,timestamp\nu 1,i1,2026-01-01\n")
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "' '" in result.stderr
    assert not (tmp_path / "versions").exists() or not any((tmp_path / "versions").iterdir())
