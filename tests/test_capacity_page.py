"""docs/scaling.md is what benchmarks/scaling.py renders from the results files, and the
generator invents nothing: an absent file is "not measured in this run"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import scaling

ROOT = Path(__file__).resolve().parents[1]


def test_the_capacity_page_is_up_to_date_with_the_results() -> None:
    assert (ROOT / "docs" / "scaling.md").read_text() == scaling.render(scaling.load()), (
        "docs/scaling.md is out of date: python -m benchmarks.scaling"
    )


def _probe(users: int, items: int, rss_after: float, cpu_us: float, **extra: Any) -> dict[str, Any]:
    return {
        "users": users,
        "items": items,
        "history_per_user": 10,
        "artifact_bytes": 100 * users + 50 * items,
        "rss_before_mib": 100.0,
        "rss_after_mib": rss_after,
        "peak_mib": rss_after + 10,
        "load_seconds": 1.0,
        "precomputed": False,
        "candidates_bytes": 0,
        "precompute_max_cells": 400_000_000,
        "known": {"cpu_us": cpu_us, "p50_ms": cpu_us / 1000, "p99_ms": 2 * cpu_us / 1000},
        "session": {"cpu_us": cpu_us, "p50_ms": 1.0, "p99_ms": 2.0},
        **extra,
    }


def _docs() -> dict[str, dict[str, Any]]:
    mib = 2**20
    return {
        "capacity": {
            "factors": 64,
            "machine": {"cpus": 2, "cpu": "test"},
            "probes": [
                # 1,000 B per user, 2,000 B per item on top of a 100 MiB worker
                _probe(100_000, 20_000, 100 + (1000 * 100_000 + 2000 * 20_000) / mib, 1000.0),
                _probe(1_000_000, 20_000, 100 + (1000 * 1_000_000 + 2000 * 20_000) / mib, 1000.0),
                _probe(100_000, 200_000, 100 + (1000 * 100_000 + 2000 * 200_000) / mib, 4000.0),
            ],
        },
        "experiment_serving": {
            "users": 10,
            "items": 10,
            "cpu_us_per_request": {"one": {"known": [250.0]}},
        },
    }


def test_derived_cells_come_from_the_measured_per_unit_costs() -> None:
    c = scaling.Capacity(_docs())
    measured = c.worker_mib(1_000_000, 20_000)
    assert measured.how == "measured"
    derived = c.worker_mib(10_000_000, 200_000)
    assert derived.how == "derived"
    assert derived.value == pytest.approx(100 + (1000 * 10_000_000 + 2000 * 200_000) / 2**20)
    assert c.rps_per_core(200_000).value == pytest.approx(1e6 / (250 + 4000))
    assert c.rps_per_core(1_000_000).value is None  # no probe of that catalogue: not invented
    page = scaling.render(_docs())
    assert "(m)" in page
    assert "(d)" in page
    assert "1,000 B x users + 2,000 B x items" in page


def test_absent_results_are_said_not_measured_never_invented(tmp_path: Path) -> None:
    page = scaling.render(scaling.load(tmp_path))
    cells = [line for line in page.splitlines() if line.startswith("| ")]
    assert not any("(m)" in line or "(d)" in line for line in cells)  # no figure without a file
    assert page.count(scaling.NOT_MEASURED) >= 9 + 3 + 3 * 4  # every grid and row cell
    for name in ("spark_engine", "eval_scale", "ann_index", "replicas"):
        assert f"`{name}.json` | {scaling.NOT_MEASURED}" in page


def test_the_other_helpers_files_are_read_with_the_documented_keys(tmp_path: Path) -> None:
    docs = _docs()
    docs["spark_engine"] = {
        "sizes": [
            {
                "purchases": 2_000_000,
                "runs": [{"engine": "spark-mllib", "wall_seconds": 100.0, "peak_rss_mib": 1000.0}],
            },
            {
                "purchases": 10_000_000,
                "runs": [{"engine": "spark-mllib", "wall_seconds": 300.0, "peak_rss_mib": 1500.0}],
            },
        ]
    }
    docs["train_synthetic"] = {
        "machine": {"memory_gib": 23.5},
        "sizes": [
            {
                "users": 100_000,
                "items": 20_000,
                "interactions": 2_000_000,
                "train_wall_seconds": 5.0,
                "train_peak_rss_mib": 900.0,
            },
            {
                "users": 500_000,
                "items": 50_000,
                "interactions": 10_000_000,
                "train_wall_seconds": 30.0,
                "train_peak_rss_mib": 3000.0,
            },
        ],
    }
    docs["ann_index"] = {
        "users": 10_000_000,
        "items": 1_000_000,
        "ann": {"library": "lib"},
        "artifact_arrays_mib": 4000.0,
        "index_mib": 400.0,
        "in_process": {
            "recall_at_10": {"known": 0.97, "session": 0.7},
            **{
                mode: {
                    "known": {"cpu_p50_ms": 1.0, "cpu_p99_ms": 3.0},
                    "session": {"cpu_p50_ms": 2.0, "cpu_p99_ms": 4.0},
                }
                for mode in ("exact", "index")
            },
        },
        "results": {
            mode: {
                "known": {"p50_ms": 4.0, "p99_ms": 9.0},
                "workers": [{"rss_mib": 1800.0, "own_mib": 900.0}],
            }
            for mode in ("exact", "index")
        },
    }
    docs["replicas"] = {
        "propagation": {"acked_to_used_ms": {"p99": 42.0}, "ingest_to_used_ms": {"p99": 99.0}},
        "redemptions": {"attempts": 200, "successes": 1},
        "failed_lookups": {"limit": 10, "looked_up": 10},
    }
    docs["eval_scale"] = {
        "sizes": [
            {
                "items": 1_000_000,
                "of_users": 60_000,
                "old_cap_users": 10,
                "users": 50_000,
                "cpu_seconds": 12.0,
                "peak_rss_mib": 2000.0,
            }
        ]
    }
    for name, doc in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    page = scaling.render(scaling.load(tmp_path))
    c = scaling.Capacity(scaling.load(tmp_path))
    # 20 purchase lines per user: 2M lines at 100k users is measured; 20M at 1M derived
    assert c.spark_train(100_000, "wall_seconds").how == "measured"
    assert c.spark_train(1_000_000, "wall_seconds").value == pytest.approx(100 + 18 * 25.0)
    assert c.pandas_train(100_000, "train_wall_seconds").value == 5.0
    assert "recall@10 of the served lists against exact 0.970 (known users)" in page
    assert "42.0 ms p99 after the first replica's answer" in page
    assert "| 1,000,000 | 60,000 | 10 | 50,000 | 12.0 s |" in page
    spark = page.split("**Spark engine (`--engine spark`), wall**")[1].split("Per-unit")[0]
    assert scaling.NOT_MEASURED not in spark
    assert "(d)" in spark
    assert "(m)" in spark
