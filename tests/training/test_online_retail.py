"""Integration: train on the real UCI Online Retail data and check the model is worth serving.

Skipped where ../shared is absent (a user's clone); CI sets RECOFFER_REQUIRE_SHARED_DATA=1, so
there it fails instead. About a minute and a half: most of it is the tuning budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app

# PRODUCT.md: implicit ALS with BM25 weighting, untuned (factors 64, 15 iterations), protocol novel
ALS_REFERENCE_NOVEL = {"recall@10": 0.093, "ndcg@10": 0.090}


@pytest.mark.slow
def test_served_model_beats_the_baselines_on_online_retail(
    online_retail_path: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(online_retail_path),
            "--format",
            "online-retail",
            "--model-dir",
            str(tmp_path),
            "--test-days",
            "30",
            "--tune-seconds",
            "90",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["promoted"] is True
    everything, novel = doc["metrics"]["all"], doc["metrics"]["novel"]
    assert 1_300 <= everything["served"]["users"] <= 1_400  # PRODUCT.md: 1,379 test users
    for metric in ("recall@10", "ndcg@10"):
        assert everything["served"][metric] > everything["popularity"][metric]
        assert everything["served"][metric] > everything["repeat"][metric]
        assert novel["served"][metric] > novel["popularity"][metric]
        assert novel["served"][metric] > ALS_REFERENCE_NOVEL[metric]
