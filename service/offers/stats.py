"""Conversion and uplift with honest intervals (no scipy on the service's import path).

Uplift is the difference of two proportions, treated minus holdout. Its 95 % interval is
Newcombe's hybrid score interval (method 10 of Newcombe 1998, Statistics in Medicine 17:873),
built from the two Wilson score intervals: unlike the textbook Wald interval it stays inside
[-1, 1] and keeps its coverage for small groups and rates near 0 or 1, which is where a young
campaign lives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def wilson(successes: int, trials: int, z: float = Z95) -> Interval | None:
    """Wilson score interval of a proportion; None without trials."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in 0..{trials}, got {successes}")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def uplift(
    treated_converted: int, treated: int, holdout_converted: int, holdout: int, z: float = Z95
) -> Interval | None:
    """Treated minus holdout conversion with Newcombe's interval; None if a group is empty."""
    a = wilson(treated_converted, treated, z)
    b = wilson(holdout_converted, holdout, z)
    if a is None or b is None:
        return None
    d = a.estimate - b.estimate
    low = d - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = d + math.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
    return Interval(d, max(-1.0, low), min(1.0, high))
