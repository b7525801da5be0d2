"""Which arm a user is in: deterministic, like the campaign holdout (``offers.rules``)."""

from __future__ import annotations

from service.offers.rules import in_holdout

CONTROL = "control"
CANDIDATE = "candidate"


def arm_of(experiment_id: str, user_id: str, share: float) -> str:
    """``candidate`` for a ``share`` of users, the same user always in the same arm of the same
    experiment (a SHA-256 of experiment and user read as a number in [0, 1), below ``share``),
    independent of any campaign's holdout (whose hash is of another id)."""
    return CANDIDATE if in_holdout(experiment_id, user_id, share * 100.0) else CONTROL
