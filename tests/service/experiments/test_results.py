"""The experiment's pure rules: the arm of a user, the figures per arm, the sample-ratio check
and the guard."""

from __future__ import annotations

import math

import pytest

from service.experiments.arms import CANDIDATE, CONTROL, arm_of
from service.experiments.results import guard_state, results, sample_ratio
from service.feedback.figures import Tally
from service.offers.rules import in_holdout
from service.offers.stats import uplift, wilson


def test_a_user_is_always_in_the_same_arm_and_the_share_is_respected() -> None:
    users = [f"u{i}" for i in range(20_000)]
    first = [arm_of("exp_a", u, 0.3) for u in users]
    assert first == [arm_of("exp_a", u, 0.3) for u in users]
    share = first.count(CANDIDATE) / len(users)
    assert abs(share - 0.3) < 0.015  # 4.6 standard errors
    assert set(first) == {CONTROL, CANDIDATE}
    # another experiment splits the same users independently
    other = [arm_of("exp_b", u, 0.3) for u in users]
    both = sum(a == b == CANDIDATE for a, b in zip(first, other, strict=True)) / len(users)
    assert abs(both - 0.09) < 0.01


def test_the_arm_is_the_campaign_holdouts_hash() -> None:
    for user in ("alice", "bob", "carol", "dave"):
        expected = CANDIDATE if in_holdout("exp_x", user, 50.0) else CONTROL
        assert arm_of("exp_x", user, 0.5) == expected


def _tallies(control: tuple[int, ...], candidate: tuple[int, ...]) -> list[Tally]:
    """(impressions, users, clicks, purchases[, clickers, buyers]) per arm; by default every
    click and purchase is another user's."""
    out = []
    for arm, counts in (("candidate", candidate), ("control", control)):
        impressions, users, clicks, purchases = counts[:4]
        clickers, buyers = counts[4:] or (min(clicks, users), min(purchases, users))
        out.append(
            Tally(
                (arm,), impressions, users, clicks, 0, purchases, clickers=clickers, buyers=buyers
            )
        )
    return out


def test_figures_per_arm_are_wilson_and_the_difference_newcombes() -> None:
    found = results(_tallies((1000, 400, 50, 10), (900, 380, 72, 9)), 0.5)
    control, candidate = found.arms["control"], found.arms["candidate"]
    assert (control.impressions, control.users, control.clicks) == (1000, 400, 50)
    assert control.ctr == wilson(50, 1000)
    assert candidate.conversion == wilson(9, 900)
    assert found.ctr.difference == uplift(72, 900, 50, 1000)
    assert found.ctr.relative_lift == pytest.approx((72 / 900 - 0.05) / 0.05)
    assert found.conversion.relative_lift == pytest.approx((0.01 - 0.01) / 0.01, abs=1e-12)


def test_an_arm_without_impressions_has_no_rates() -> None:
    found = results([Tally(("control",), 10, 3, 1, 0, 0)], 0.5)
    assert found.arms["candidate"].impressions == 0
    assert found.arms["candidate"].ctr is None
    assert found.ctr.difference is None
    assert found.ctr.relative_lift is None
    assert not found.guard.ready
    assert not found.guard.tripped


def test_the_sample_ratio_check_is_a_chi_square_with_one_degree_of_freedom() -> None:
    balanced = sample_ratio(5010, 4990, 0.5, 0.001)
    assert balanced.chi_square == pytest.approx(0.04)
    assert balanced.p_value == pytest.approx(0.8415, abs=1e-4)  # chi2(1) sf at 0.04
    assert not balanced.mismatch
    broken = sample_ratio(5300, 4700, 0.5, 0.001)
    assert broken.chi_square == pytest.approx(36.0)
    assert broken.p_value == pytest.approx(math.erfc(math.sqrt(18.0)))
    assert broken.p_value is not None
    assert broken.p_value < 1e-8
    assert broken.mismatch
    # against a 20 % share, 2,000 of 10,000 is exactly right
    uneven = sample_ratio(2000, 8000, 0.2, 0.001)
    assert uneven.chi_square == pytest.approx(0.0)
    assert uneven.p_value == pytest.approx(1.0)
    assert sample_ratio(0, 0, 0.5, 0.001).p_value is None


def test_the_guard_stops_a_clearly_worse_candidate_only_after_the_minimum() -> None:
    # CTR 10 % vs 5 %: 200 of 900 users clicked against 100 of 900
    worse = _tallies((2000, 900, 200, 20), (2000, 900, 100, 20))
    found = results(worse, 0.5, min_impressions=1000)
    assert found.guard.ready
    assert found.guard.tripped
    assert found.guard.ctr_upper is not None
    assert found.guard.ctr_upper < 0
    assert found.guard.reason is not None
    assert f"per-user CTR difference {100 / 900 - 200 / 900:+.4f}" in found.guard.reason
    too_early = results(worse, 0.5, min_impressions=5000)
    assert not too_early.guard.ready
    assert not too_early.guard.tripped


def test_the_guard_leaves_a_candidate_that_is_only_a_little_worse() -> None:
    # 95 % says worse (upper end below 0) but 99.9 % does not: the guard waits
    control = (4000, 2000, 400, 0)
    candidate = (4000, 2000, 345, 0)
    assert uplift(345, 4000, 400, 4000) is not None
    assert uplift(345, 4000, 400, 4000).high < 0  # type: ignore[union-attr]
    state = guard_state(
        results(_tallies(control, candidate), 0.5).arms["candidate"],
        results(_tallies(control, candidate), 0.5).arms["control"],
        min_impressions=1000,
        z=3.29,
    )
    assert state.ready
    assert not state.tripped


def test_the_guard_also_looks_at_conversion() -> None:
    found = results(
        _tallies((3000, 1000, 300, 90), (3000, 1000, 300, 20)), 0.5, min_impressions=1000
    )
    assert found.guard.tripped
    assert found.guard.reason is not None
    assert "per-user conversion difference" in found.guard.reason
    assert "CTR" not in found.guard.reason


def test_the_guard_decides_per_user_not_per_impression() -> None:
    """A few users who click in every list make the per-impression CTR look clearly worse;
    the users who clicked at all are as many in both arms, so the guard waits."""
    control = (6000, 1000, 600, 0, 100, 0)  # 100 users clicked, 6 times each
    candidate = (6000, 1000, 400, 0, 100, 0)  # the same 100 share of users, 4 times each
    found = results(_tallies(control, candidate), 0.5, min_impressions=1000)
    per_impression = found.ctr.difference
    assert per_impression is not None
    assert uplift(400, 6000, 600, 6000, 3.29).high < 0  # type: ignore[union-attr]
    assert found.user_ctr is not None
    assert found.user_ctr.difference is not None
    assert found.user_ctr.difference.estimate == 0
    assert found.arms["candidate"].user_ctr == wilson(100, 1000)
    assert not found.guard.tripped
