"""The trainer's ANN index (issue 15, item 4): built from ``--ann-min-items`` on, never below."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.artifact import ModelStore, read_manifest
from training.ann import wanted
from training.cli import app
from training.synthetic.shop import SyntheticShop

runner = CliRunner()


def test_an_index_is_wanted_from_the_threshold_on() -> None:
    assert wanted(100_000, 100_000)
    assert not wanted(99_999, 100_000)
    assert wanted(1, 0)
    assert not wanted(10**9, None)


def test_a_negative_threshold_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(
        app,
        ["train", "--database-url", url, "--model-dir", str(tmp_path), "--ann-min-items", "-1"],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "recoffer: error: --ann-min-items must be >= 0, not -1"
    ]


@pytest.mark.parametrize(("threshold", "indexed"), [("0", True), ("1000000", False)])
def test_train_builds_the_index_only_past_the_threshold(
    tmp_path: Path,
    tiny_shop: SyntheticShop,
    threshold: str,
    indexed: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")
    data = tmp_path / "purchases.csv"
    tiny_shop.purchases.to_csv(data, index=False)
    models = tmp_path / "models"
    args = ["train", "--data", str(data), "--model-dir", str(models), "--tune-seconds", "0"]
    result = runner.invoke(app, [*args, "--ann-min-items", threshold])
    assert result.exit_code == 0, result.stderr
    path = ModelStore(models).current_path()
    assert path is not None
    manifest = read_manifest(path)
    assert manifest.params["ann_min_items"] == int(threshold)
    if not indexed:
        assert manifest.ann is None
        assert manifest.files == {}
        return
    # the tiny shop's served recipe may use EASE (a small catalogue): then no index, said so;
    # tests/service/test_ann.py trains without EASE and serves from the index
    uses_ease = any(r.uses("ease") for r in manifest.recipes.values())
    if uses_ease:  # the trainer says why there is none
        assert manifest.ann is None
        assert "ann_index_skipped: a served recipe uses EASE" in caplog.text
        return
    assert manifest.ann is not None
    assert {i.file for i in manifest.ann.indexes} == set(manifest.files)
    for name, spec in manifest.files.items():
        assert (path / name).stat().st_size == spec.bytes
