"""An experiment's figures per arm, the sample-ratio check and the guard's rule (pure).

Every count comes from ``service.feedback.figures.tally`` (impressions tagged with the
experiment's id and their arm); rates are per impression, as everywhere online:

- CTR: impressions clicked / impressions; conversion: impressions with an attributed purchase
  / impressions. Each with its Wilson interval (``service.offers.stats.wilson``); the
  difference candidate - control with Newcombe's interval (``uplift``), and the relative lift.
- Sample-ratio mismatch: a chi-square test of the users seen per arm against the share the
  experiment asked for (one degree of freedom, so the p-value is ``erfc(sqrt(chi2 / 2))``).
  A p-value below ``srm_p`` (0.001 by default) says the split is broken (a client caching
  lists, a bot in one arm, an arm failing to answer): the figures cannot be trusted as an
  A/B comparison. It is shown, never acted on automatically.
- Per user: the share of the arm's users who clicked at least once (``user_ctr``), and who
  bought something credited to a list (``user_conversion``), with the same intervals. Users
  are the unit the arms are drawn by, so these intervals hold; one user's impressions are not
  independent (a user who clicks a lot clicks in many lists), so the per-impression ones are
  too narrow, the more so the fewer and more different the users (``benchmarks/simulator.py``
  measured a per-impression guard stopping better candidates on Online Retail's test window).
- The guard: once each arm has ``min_impressions``, the candidate is "clearly worse" when the
  upper end of the Newcombe interval of its per-user CTR difference, or of its per-user
  conversion difference, at ``z`` (3.29 by default: 99.9 % two-sided, 0.05 % one-sided) is below
  zero. It is looked at again and again while the experiment runs; the strict ``z`` plays the
  part of a Haybittle-Peto boundary: even 100 independent looks would stop a candidate that is
  not worse at most 100 x 0.05 % = 5 % of the time (Bonferroni), and successive looks share
  almost all of their data, so the real rate is far lower: 1.7 % over 200 looks of CTR and
  conversion in ``benchmarks/experiment_guard.py``'s simulation (33 % at z 1.96). The guard only
  ever stops a candidate that is worse; deciding that it is better is the promotion's business
  (a person's).

The per-impression figures are shown (they are what a shop reads as CTR); the guard decides on
the per-user ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from service.feedback.figures import Tally
from service.feedback.online import rate
from service.offers.stats import Interval, uplift

ARMS = ("control", "candidate")
Z_GUARD = 3.2905267314919255  # 99.9 % two-sided
SRM_P = 0.001
MIN_IMPRESSIONS = 1000


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    impressions: int
    users: int
    clicks: int
    carts: int
    purchases: int
    ctr: Interval | None
    conversion: Interval | None
    clickers: int = 0  # users who clicked at least once
    buyers: int = 0  # users with at least one attributed purchase
    user_ctr: Interval | None = None  # clickers / users
    user_conversion: Interval | None = None  # buyers / users


@dataclass(frozen=True)
class Difference:
    """Candidate minus control: the absolute difference with its interval, and the relative
    lift (difference / control's rate; None while control's rate is 0)."""

    difference: Interval | None
    relative_lift: float | None


@dataclass(frozen=True)
class SampleRatio:
    expected_share: float  # of users in the candidate arm
    observed_share: float | None
    chi_square: float | None
    p_value: float | None
    mismatch: bool  # p-value below the threshold


@dataclass(frozen=True)
class GuardState:
    """Whether the guard has enough data, and whether it would stop the candidate now."""

    ready: bool  # each arm has the minimum of impressions
    tripped: bool
    min_impressions: int
    z: float
    ctr_upper: float | None  # the upper end of the per-user difference's interval at ``z``
    conversion_upper: float | None
    reason: str | None


@dataclass(frozen=True)
class Results:
    arms: dict[str, ArmFigures]
    ctr: Difference
    conversion: Difference
    srm: SampleRatio
    guard: GuardState
    user_ctr: Difference | None = None
    user_conversion: Difference | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the outcome stored when the experiment ends)."""
        return asdict(self)


def arm_figures(arm: str, tallies: Iterable[Tally]) -> ArmFigures:
    """One arm's counts and rates from the tallies keyed by arm (``tally(by=("arm",))``)."""
    found = next((t for t in tallies if t.key and t.key[0] == arm), None)
    if found is None:
        return ArmFigures(arm, 0, 0, 0, 0, 0, None, None)
    return ArmFigures(
        arm,
        found.impressions,
        found.users,
        found.clicks,
        found.carts,
        found.purchases,
        rate(found.clicks, found.impressions),
        rate(found.purchases, found.impressions),
        found.clickers,
        found.buyers,
        rate(found.clickers, found.users),
        rate(found.buyers, found.users),
    )


def difference(cand_hits: int, cand_n: int, ctrl_hits: int, ctrl_n: int) -> Difference:
    cand_hits, ctrl_hits = min(cand_hits, cand_n), min(ctrl_hits, ctrl_n)  # never a 500
    interval = uplift(cand_hits, cand_n, ctrl_hits, ctrl_n)
    lift = None
    if interval is not None and ctrl_n and ctrl_hits:
        lift = interval.estimate / (ctrl_hits / ctrl_n)
    return Difference(interval, lift)


def sample_ratio(candidate_users: int, control_users: int, share: float, p: float) -> SampleRatio:
    """Chi-square goodness of fit of the users per arm to ``share`` (one degree of freedom)."""
    total = candidate_users + control_users
    if total == 0:
        return SampleRatio(share, None, None, None, False)
    expected = (total * share, total * (1 - share))
    observed = (candidate_users, control_users)
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    p_value = math.erfc(math.sqrt(chi2 / 2))  # the chi-square(1) survival function
    return SampleRatio(share, candidate_users / total, chi2, p_value, p_value < p)


def guard_state(
    candidate: ArmFigures, control: ArmFigures, *, min_impressions: int, z: float
) -> GuardState:
    """The guard's verdict now (see the module's docstring for the rule)."""
    ready = min(candidate.impressions, control.impressions) >= min_impressions
    cu, ku = candidate.users, control.users
    ctr = uplift(min(candidate.clickers, cu), cu, min(control.clickers, ku), ku, z)
    conv = uplift(min(candidate.buyers, cu), cu, min(control.buyers, ku), ku, z)
    ctr_upper = None if ctr is None else ctr.high
    conv_upper = None if conv is None else conv.high
    reason = None
    if ready:
        worse = [
            f"{name} difference {d.estimate:+.4f} (upper bound {d.high:+.4f})"
            for name, d in (("per-user CTR", ctr), ("per-user conversion", conv))
            if d is not None and d.high < 0
        ]
        if worse:
            reason = (
                "the candidate is clearly worse: " + "; ".join(worse) + f" at z {z:.2f}, "
                f"with at least {min_impressions} impressions per arm"
            )
    return GuardState(ready, reason is not None, min_impressions, z, ctr_upper, conv_upper, reason)


def results(
    tallies: list[Tally],
    share: float,
    *,
    min_impressions: int = MIN_IMPRESSIONS,
    z: float = Z_GUARD,
    srm_p: float = SRM_P,
) -> Results:
    """Everything ``GET /v1/experiments/{id}`` shows, from ``tally(by=("arm",), ...)``."""
    control, candidate = (arm_figures(a, tallies) for a in ARMS)
    return Results(
        arms={"control": control, "candidate": candidate},
        ctr=difference(
            candidate.clicks, candidate.impressions, control.clicks, control.impressions
        ),
        conversion=difference(
            candidate.purchases, candidate.impressions, control.purchases, control.impressions
        ),
        srm=sample_ratio(candidate.users, control.users, share, srm_p),
        guard=guard_state(candidate, control, min_impressions=min_impressions, z=z),
        user_ctr=difference(candidate.clickers, candidate.users, control.clickers, control.users),
        user_conversion=difference(
            candidate.buyers, candidate.users, control.buyers, control.users
        ),
    )
