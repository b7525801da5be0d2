"""Tuning's budget is counted in trials, not seconds: a loaded machine searches the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from service.scoring import PROTOCOLS
from training.data.formats import Purchases
from training.encode import encode
from training.evaluate import temporal_split
from training.models import ModelParams, default_candidates, fit_stage
from training.tune import TuneResult, param_variants, tune

FAST = ModelParams(factors=8, iterations=5, threads=1)


@dataclass
class FakeClock:
    """Seconds that advance by ``step`` at every reading: a bigger step is a slower machine."""

    step: float
    now: float = 1000.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def split(tiny_purchases: Purchases) -> dict[str, Any]:
    coded, ids = encode(tiny_purchases.frame)
    validation = temporal_split(temporal_split(coded, 30).train, 30)
    return {"split": validation, "ids": ids}


def _tune(split: dict[str, Any], clock: FakeClock, seconds: float, **kw: Any) -> TuneResult:
    v, ids = split["split"], split["ids"]
    stage = fit_stage(v.train, v.cutoff, FAST, ids, with_ease=True)
    stage.timings = kw.pop("timings", stage.timings)
    start = {p: default_candidates(with_ease=True)["blend"][p] for p in PROTOCOLS}
    return tune(
        v.train,
        v.test,
        v.cutoff,
        FAST,
        start,
        seconds,
        ids,
        stage=stage,
        with_ease=True,
        clock=clock,
        **kw,
    )


def _search(result: TuneResult) -> list[Any]:
    return [(t["params"], t.get("kept"), t.get("skipped")) for t in result.variants_tried]


def test_a_slow_machine_tries_the_same_variants_in_the_same_order(
    split: dict[str, Any],
) -> None:
    quiet = _tune(split, FakeClock(step=1e-4), seconds=1e6, trials=4)
    loaded = _tune(split, FakeClock(step=0.5), seconds=1e6, trials=4)
    assert loaded.seconds > 1000 * quiet.seconds
    assert [t["params"] for t in quiet.variants_tried] == [
        {k: v for k, v in p.to_dict().items() if FAST.to_dict()[k] != v}
        for p in param_variants(FAST)[:4]
    ]
    assert _search(loaded) == _search(quiet)
    assert [t["mean_ndcg"] for t in loaded.variants_tried] == [
        t["mean_ndcg"] for t in quiet.variants_tried
    ]
    assert loaded.evaluations == quiet.evaluations
    assert loaded.recipes == quiet.recipes
    assert loaded.params == quiet.params


def test_a_variant_that_does_not_fit_is_skipped_and_the_rest_are_tried(
    split: dict[str, Any],
) -> None:
    # the base fit took 1 s: the first variant (16 x the factors, 4 x the iterations) would
    # take about 64 s, more than the 30 s cap; the others fit
    frozen = FakeClock(step=0.0)
    result = _tune(split, frozen, seconds=30, timings={"als": 1.0})
    variants = param_variants(FAST)
    assert len(result.variants_tried) == len(variants)
    assert result.variants_tried[0]["skipped"] == "time cap"
    assert "mean_ndcg" not in result.variants_tried[0]
    assert all("mean_ndcg" in t for t in result.variants_tried[1:])


def test_the_search_tries_at_most_its_trials(split: dict[str, Any]) -> None:
    result = _tune(split, FakeClock(step=0.0), seconds=1e6, trials=2)
    assert len(result.variants_tried) == 2
    none = _tune(split, FakeClock(step=0.0), seconds=1e6, trials=0)
    assert none.variants_tried == []
    assert none.evaluations > 0  # the blend's weights are still tuned


def test_the_time_cap_still_stops_the_search(split: dict[str, Any]) -> None:
    result = _tune(split, FakeClock(step=1.0), seconds=5)
    assert all(t.get("skipped") == "time cap" for t in result.variants_tried)
