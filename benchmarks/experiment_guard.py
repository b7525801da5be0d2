"""How often the experiment guard stops a candidate that is not worse, and how soon it stops
one that is, under repeated looks (simulated; issue 14, item 3).

Each simulated experiment shows impressions to both arms at the same pace; the guard looks
after every ``--step`` impressions per arm, from ``--min-impressions`` on, up to ``--max``
per arm, and stops when the upper end of the Newcombe interval of the CTR difference (or of
the conversion difference) at z is below 0, as ``service.experiments.results.guard_state``
does (the vectorised interval is checked against ``service.offers.stats.uplift``). Reported:
the share of A/A experiments (equal rates) ever stopped, for the service's z = 3.29 and for a
naive z = 1.96, and for candidates 10 % and 20 % worse the share stopped and the impressions
per arm at the stop.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import save, this_command
from service.offers.stats import uplift

Array = npt.NDArray[np.float64]


def _wilson(hits: Array, n: Array, z: float) -> tuple[Array, Array, Array]:
    p = hits / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return p, np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def upper(cand: Array, ctrl: Array, n: Array, z: float) -> Array:
    """The upper end of Newcombe's interval of cand/n - ctrl/n (equal arms)."""
    a, _, a_high = _wilson(cand, n, z)
    b, b_low, _ = _wilson(ctrl, n, z)
    return np.minimum(1.0, a - b + np.sqrt((a_high - a) ** 2 + (b - b_low) ** 2))


def simulate(
    rng: np.random.Generator,
    rates: tuple[float, float],
    worse: float,
    *,
    sims: int,
    step: int,
    min_impressions: int,
    max_impressions: int,
    z: float,
) -> dict[str, Any]:
    """``rates``: control's (CTR, conversion); the candidate's are ``1 - worse`` of them."""
    looks = max_impressions // step
    n = np.arange(1, looks + 1, dtype=np.float64) * step
    eligible = n >= min_impressions
    stopped_at = np.full(sims, np.inf)
    for rate in rates:
        ctrl = rng.binomial(step, rate, size=(sims, looks)).cumsum(axis=1).astype(np.float64)
        cand = rng.binomial(step, rate * (1 - worse), size=(sims, looks)).cumsum(axis=1)
        trips = (upper(cand.astype(np.float64), ctrl, n, z) < 0) & eligible
        first = np.where(trips.any(axis=1), trips.argmax(axis=1), looks)
        at = np.where(first < looks, n[np.minimum(first, looks - 1)], np.inf)
        stopped_at = np.minimum(stopped_at, at)
    stopped = np.isfinite(stopped_at)
    return {
        "stopped_share": float(stopped.mean()),
        "median_impressions_at_stop": float(np.median(stopped_at[stopped]))
        if stopped.any()
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--step", type=int, default=250, help="impressions per arm per look")
    parser.add_argument("--min-impressions", type=int, default=1000)
    parser.add_argument("--max", type=int, default=50_000, help="impressions per arm at most")
    parser.add_argument("--ctr", type=float, default=0.05)
    parser.add_argument("--conversion", type=float, default=0.01)
    args = parser.parse_args()
    # the vectorised interval is the service's
    check = upper(np.array([37.0]), np.array([52.0]), np.array([1000.0]), 3.29)[0]
    reference = uplift(37, 1000, 52, 1000, 3.29)
    assert reference is not None
    assert abs(check - reference.high) < 1e-12
    rng = np.random.default_rng(14)
    common = {
        "sims": args.sims,
        "step": args.step,
        "min_impressions": args.min_impressions,
        "max_impressions": args.max,
    }
    rates = (args.ctr, args.conversion)
    rows = []
    for z in (3.29, 1.96):
        for worse in (0.0, 0.1, 0.2):
            found = simulate(rng, rates, worse, z=z, **common)
            rows.append({"z": z, "worse": worse, **found})
            print(rows[-1], flush=True)
    save(
        "experiment_guard",
        this_command(),
        {
            **common,
            "ctr": args.ctr,
            "conversion": args.conversion,
            "looks": args.max // args.step,
            "rows": rows,
        },
    )


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    out = [
        "## A/B test guard: repeated looks",
        "",
        f"Simulated {doc['date']}. Command: `{doc['command']}`",
        "",
        f"{doc['sims']:,} simulated experiments per row; control's CTR {doc['ctr']:.1%} and "
        f"conversion {doc['conversion']:.1%} per impression, the candidate's the same or 10 % / "
        f"20 % lower; the guard looks every {doc['step']:,} impressions per arm from "
        f"{doc['min_impressions']:,} on, {doc['looks']} looks up to {doc['max_impressions']:,} "
        "per arm, and stops when the upper end of the CTR's or the conversion's Newcombe "
        "interval of the difference at z is below 0 (the service's rule; z = 3.29 is its "
        "default, 1.96 a naive 95 % for comparison).",
        "",
        "| z | candidate | experiments stopped | median impressions per arm at the stop |",
        "|---:|---|---:|---:|",
    ]
    for row in doc["rows"]:
        label = "as good (A/A)" if row["worse"] == 0 else f"{row['worse']:.0%} worse"
        at = row["median_impressions_at_stop"]
        shown = "—" if at is None else f"{at:,.0f}"
        out.append(f"| {row['z']:.2f} | {label} | {row['stopped_share']:.1%} | {shown} |")
    out.append("")
    return out


if __name__ == "__main__":
    main()
