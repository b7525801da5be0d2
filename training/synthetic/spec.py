"""The size and shape of a synthetic shop, and the named presets."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ShopSpec:
    """Size and shape of a synthetic shop; see ``training.synthetic`` for the model.

    n_users: all users, the ``new_users`` recent sign-ups included.
    n_items, n_categories, n_taste_clusters: catalogue; every cluster gets >= 1 category.
    n_interactions: purchase rows wanted (exact unless the catalogue is too small to hold that
        many distinct order lines).
    days: length of the purchase history, ending at ``end`` (tz-naive, read as UTC).
    seed: the only source of randomness.
    new_users: recent sign-ups with view streams in ``events`` and no purchase history.
    high_intent_share: share of new users viewing more than 10 products on day one.
    taste_share, second_taste_share: share of fresh purchase lines from the user's main and
        second taste cluster; the rest come from anywhere.
    repeat_share: mean per-user probability that a line re-buys an earlier item.
    zipf_exponent: popularity skew inside a cluster (1.0: Zipf).
    mean_order_lines: mean lines per order.
    """

    n_users: int = 2_000
    n_items: int = 1_000
    n_interactions: int = 40_000
    n_categories: int = 20
    n_taste_clusters: int = 8
    days: int = 365
    seed: int = 42
    new_users: int = 200
    high_intent_share: float = 0.25
    taste_share: float = 0.75
    second_taste_share: float = 0.10
    repeat_share: float = 0.30
    zipf_exponent: float = 1.0
    mean_order_lines: float = 2.5
    end: str = "2025-06-30"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.n_users < 1:
            problems.append("n_users must be >= 1")
        if not 0 <= self.new_users < self.n_users:
            problems.append("new_users must be >= 0 and < n_users")
        if self.n_interactions < 1:
            problems.append("n_interactions must be >= 1")
        if self.n_taste_clusters < 1:
            problems.append("n_taste_clusters must be >= 1")
        if self.n_categories < self.n_taste_clusters:
            problems.append("n_categories must be >= n_taste_clusters")
        if self.n_items < self.n_categories:
            problems.append("n_items must be >= n_categories")
        if self.new_users > 0 and self.high_intent_share > 0 and self.n_items <= 10:
            problems.append("high-intent new users need n_items > 10")
        if self.days < 3:
            problems.append("days must be >= 3")
        for name in ("high_intent_share", "taste_share", "second_taste_share", "repeat_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if self.taste_share + self.second_taste_share > 1.0:
            problems.append("taste_share + second_taste_share must be <= 1")
        if self.repeat_share >= 1.0:
            problems.append("repeat_share must be < 1")
        if self.zipf_exponent < 0:
            problems.append("zipf_exponent must be >= 0")
        if self.mean_order_lines < 1:
            problems.append("mean_order_lines must be >= 1")
        try:
            end = pd.Timestamp(self.end)
        except ValueError:
            end = pd.NaT
        if pd.isna(end):
            problems.append(f"end {self.end!r} is not a timestamp")
        elif end.tzinfo is not None:
            problems.append("end must be tz-naive (UTC)")
        if problems:
            raise ValueError("invalid ShopSpec: " + "; ".join(problems))


PRESETS: dict[str, ShopSpec] = {
    "tiny": ShopSpec(
        n_users=200,
        n_items=100,
        n_interactions=3_000,
        n_categories=8,
        n_taste_clusters=4,
        days=120,
        new_users=40,
    ),
    "small": ShopSpec(),
    "demo": ShopSpec(
        n_users=5_000,
        n_items=2_000,
        n_interactions=150_000,
        n_categories=30,
        n_taste_clusters=10,
        new_users=500,
    ),
    "100k": ShopSpec(
        n_users=10_000,
        n_items=4_000,
        n_interactions=100_000,
        n_categories=40,
        n_taste_clusters=10,
        new_users=500,
    ),
    "1m": ShopSpec(
        n_users=50_000,
        n_items=15_000,
        n_interactions=1_000_000,
        n_categories=80,
        n_taste_clusters=16,
        new_users=2_000,
    ),
    "2m": ShopSpec(
        n_users=100_000,
        n_items=20_000,
        n_interactions=2_000_000,
        n_categories=100,
        n_taste_clusters=20,
        new_users=5_000,
    ),
    "10m": ShopSpec(
        n_users=500_000,
        n_items=50_000,
        n_interactions=10_000_000,
        n_categories=200,
        n_taste_clusters=40,
        new_users=20_000,
    ),
}


def spec_for(name: str) -> ShopSpec:
    """Return the preset spec called ``name``; ValueError names the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(repr(key) for key in PRESETS)
        raise ValueError(f"unknown shop preset {name!r}; known presets: {known}") from None
