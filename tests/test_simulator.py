"""The traffic simulator's loop, small and fast: a synthetic shop's test window replayed as a few
hundred visits to a real server running an experiment (issue 14, item 5).

Needs the feedback events (impression, click, attribution) and the experiments API: without
them these tests fail, they do not skip.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from benchmarks.simulator import (
    WORSE,
    ClickModel,
    LoopResult,
    Replay,
    arms_of,
    by_group,
    detection,
    live_service,
    replay_window,
    run_visits,
    textbook_visits,
    wait_for_experiment,
)
from service.artifact import ModelStore
from training.data.formats import purchases_from_frame
from training.models import ModelParams
from training.synthetic.shop import SyntheticShop


@pytest.fixture(scope="module")
def replay(tiny_shop: SyntheticShop) -> Replay:
    meta = tiny_shop.items[["item_id", "category", "name"]]
    frame = tiny_shop.purchases.merge(meta, on="item_id", how="left")
    return replay_window(purchases_from_frame(frame, source="tiny-shop"))


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, replay: Replay) -> tuple[Path, str, str]:
    """A model root with a good version and a deliberately worse one, trained on the window
    before the replayed one: (root, good, worse)."""
    from training.pipeline import TrainConfig, run

    root = tmp_path_factory.mktemp("simulator-models")
    versions = []
    for params in (
        ModelParams(factors=8, iterations=5, threads=2),
        ModelParams(threads=2, **WORSE),  # type: ignore[arg-type]
    ):
        result = run(TrainConfig(model_dir=root, params=params, force=True), replay.train)
        versions.append(result.version)
    return root, versions[0], versions[1]


def test_visits_are_the_test_window_of_known_users(replay: Replay) -> None:
    train_users = set(replay.train.frame["user_id"])
    assert 200 <= len(replay.visits) <= 1000
    assert {v.user_id for v in replay.visits} <= train_users
    assert replay.train.frame["timestamp"].max() <= replay.cutoff
    days = [v.day for v in replay.visits]
    assert days == sorted(days)  # in time order
    assert all(v.later for v in replay.visits)  # each visit's user buys something that day


def test_the_click_model_discounts_positions_like_ndcg() -> None:
    model = ClickModel(p=0.5, q=0.01, r=0.5)
    probs = model.click_probabilities([True, False, True])
    assert probs[0] == pytest.approx(0.5)
    assert probs[1] == pytest.approx(0.01 / math.log2(3))
    assert probs[2] == pytest.approx(0.5 / 2)
    assert ClickModel(position_bias=False).click_probabilities([False, False]).tolist() == [
        0.005,
        0.005,
    ]
    with pytest.raises(ValueError, match="probability"):
        ClickModel(p=1.5)


def test_the_textbook_sample_size() -> None:
    # 5 % against 5.5 %, two-sided 95 %, 80 % power: 31,233 per arm (the usual tables)
    book = textbook_visits(0.05, 0.10, impressions_per_visit=10.0, power=0.8)
    assert book["impressions_per_arm"] == pytest.approx(31_233, rel=1e-3)
    assert book["visits"] == pytest.approx(2 * 31_233 / 10, rel=1e-3)


def test_detection_needs_more_visits_for_a_smaller_lift() -> None:
    lists = [np.full(10, 0.05) for _ in range(50)]
    big = detection(lists, lift=0.5, replications=40, seed=3, step=20)
    small = detection(lists, lift=0.2, replications=40, seed=3, step=20)
    assert big["fixed_horizon"]["power_80_at"] < small["fixed_horizon"]["power_80_at"]
    assert big["base_ctr"] == pytest.approx(0.05)
    # the measured 80 % point lands near the textbook's (within a factor of 1.5)
    book = big["textbook"]["power_80"]["visits"]
    assert book / 1.5 < big["fixed_horizon"]["power_80_at"] < book * 1.5


def _loop(
    two_versions: tuple[Path, str, str], replay: Replay
) -> tuple[LoopResult, dict[str, Any], str]:
    from sqlalchemy import create_engine

    from service.tables import rec_attributions, rec_clicks, rec_impressions

    root, good, worse = two_versions
    ModelStore(root).promote(good)
    # clicks frequent enough that a few hundred visits give some of each event
    clicks = ClickModel(p=0.9, q=0.05, r=0.8)
    with live_service(root, prefix="test-simulator") as (client, url):
        started = client.start_experiment("simulator-test", worse, share=0.5)
        experiment_id = str(started["id"])
        wait_for_experiment(client, [v.user_id for v in replay.visits], experiment_id)
        loop = run_visits(client, replay.visits, clicks, seed=11, prices=replay.prices)
        doc = client.experiment(experiment_id)
        online = by_group(client.online_metrics("arm"), "arm")
        engine = create_engine(url)
        with engine.connect() as conn:
            stored = {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (("clicks", rec_clicks), ("attributions", rec_attributions))
            }
            # one row per list shown: the impressions are its items
            shown = select(func.coalesce(func.sum(rec_impressions.c.n_items), 0))
            stored["impressions"] = conn.execute(shown).scalar_one()
        engine.dispose()
    seen = {"experiment": doc, "online": online, "stored": stored, "good": good, "worse": worse}
    return loop, seen, experiment_id


@pytest.fixture(scope="module")
def loop(
    two_versions: tuple[Path, str, str], replay: Replay
) -> tuple[LoopResult, dict[str, Any], str]:
    return _loop(two_versions, replay)


def test_every_answer_carries_its_arm_and_the_arms_version(
    loop: tuple[LoopResult, dict[str, Any], str],
) -> None:
    result, seen, experiment_id = loop
    assert len(result.answers) == result.visits >= 200
    version_of = {"control": seen["good"], "candidate": seen["worse"]}
    for answer in result.answers:
        assert answer["experiment_id"] == experiment_id
        assert answer["arm"] in version_of
        assert answer["model_version"] == version_of[answer["arm"]]
    arms_of_user: dict[str, set[str]] = {}
    for answer in result.answers:
        arms_of_user.setdefault(answer["user_id"], set()).add(answer["arm"])
    assert all(len(arms) == 1 for arms in arms_of_user.values())  # a user keeps their arm
    users = Counter(next(iter(arms)) for arms in arms_of_user.values())
    n = sum(users.values())
    # half of the users in each arm, within four standard deviations of a fair coin
    assert abs(users["candidate"] - n / 2) <= 4 * math.sqrt(n / 4), users


def test_impressions_clicks_and_attributed_purchases_land(
    loop: tuple[LoopResult, dict[str, Any], str],
) -> None:
    result, seen, _ = loop
    posted = {
        key: sum(getattr(t, key) for t in result.arms.values())
        for key in ("impressions", "clicks", "purchases")
    }
    assert posted["clicks"] > 0
    assert posted["purchases"] > 0
    assert seen["stored"] == {
        "impressions": posted["impressions"],
        "clicks": posted["clicks"],
        "attributions": posted["purchases"],  # every purchase is of an item clicked just now
    }


def test_the_experiments_figures_are_what_was_posted(
    loop: tuple[LoopResult, dict[str, Any], str],
) -> None:
    result, seen, _ = loop
    arms = arms_of(seen["experiment"])
    assert set(arms) == {"control", "candidate"}
    assert seen["experiment"]["results"]["srm"]["mismatch"] is False  # the split is as asked
    for arm, tally in result.arms.items():
        assert arms[arm]["impressions"] == tally.impressions
        assert arms[arm]["users"] == len(tally.users)
        assert arms[arm]["clicks"] == tally.clicks
        assert arms[arm]["purchases"] == tally.purchases


def test_the_online_metrics_per_arm_are_what_was_posted(
    loop: tuple[LoopResult, dict[str, Any], str],
) -> None:
    result, seen, _ = loop
    assert set(seen["online"]) == {"control", "candidate"}
    for arm, tally in result.arms.items():
        figures = seen["online"][arm]
        assert (figures["impressions"], figures["clicks"], figures["purchases"]) == (
            tally.impressions,
            tally.clicks,
            tally.purchases,
        )
        assert figures["ctr"]["low"] <= tally.clicks / tally.impressions <= figures["ctr"]["high"]


def test_detection_can_assign_arms_per_user() -> None:
    # two kinds of user, one ten times as clickable: a split of users moves B's CTR
    lists = [np.full(10, 0.2 if k % 2 else 0.02) for k in range(40)]
    users = [f"u{k % 8}" for k in range(40)]
    per_user = detection(lists, lift=0.1, replications=30, seed=5, step=50, users=users)
    per_visit = detection(lists, lift=0.1, replications=30, seed=5, step=50)
    assert per_user["assigned"] == "user"
    assert per_visit["assigned"] == "visit"
    # with 8 users, half the splits favour A whatever the lift: many wrong-side decisions
    assert per_user["peeking"]["wrong_side"] > per_visit["peeking"]["wrong_side"]
