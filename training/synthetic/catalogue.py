"""The catalogue (categories, taste clusters, prices, names) and the users' tastes and sign-ups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.clock import SECONDS_PER_DAY
from training.synthetic.spec import ShopSpec

# Views are spread wider than purchases: a flatter Zipf inside the cluster.
_VIEW_EXPONENT = 0.6
_NEW_USER_WINDOW_S = 2 * SECONDS_PER_DAY

_ADJECTIVES = (
    "Classic",
    "Modern",
    "Rustic",
    "Vintage",
    "Compact",
    "Deluxe",
    "Eco",
    "Bright",
    "Soft",
    "Bold",
    "Mini",
    "Grand",
    "Smart",
    "Cosy",
    "Sleek",
    "Handmade",
)
_NOUNS = (
    "mug",
    "lamp",
    "notebook",
    "candle",
    "scarf",
    "backpack",
    "teapot",
    "cushion",
    "poster",
    "planter",
    "wallet",
    "clock",
    "blanket",
    "bowl",
    "pen",
    "frame",
    "jar",
    "towel",
    "basket",
    "umbrella",
    "speaker",
    "kettle",
    "apron",
    "puzzle",
    "bottle",
    "tray",
    "mirror",
    "rug",
    "vase",
    "soap",
)


@dataclass(frozen=True)
class Catalogue:
    category: np.ndarray  # per item
    cluster: np.ndarray  # per item
    price: np.ndarray  # per item
    names: list[str]
    cluster_share: np.ndarray  # per cluster: share of users, and of off-taste picks
    purchase_sampler: ClusterSampler
    view_sampler: ClusterSampler


@dataclass(frozen=True)
class People:
    cluster: np.ndarray  # main taste cluster, per user
    second_cluster: np.ndarray
    signed_up_s: np.ndarray  # seconds since the history start (negative: before it)
    active_from_day: np.ndarray  # first day an established user can order


class ClusterSampler:
    """Draws items from a chosen cluster, Zipf-weighted by popularity rank inside the cluster.

    One ``searchsorted`` serves all clusters: cluster ``c``'s cumulative weights are stored as
    ``c + F``, with ``F`` rising from 0 to 1, so ``c + u`` lands inside cluster ``c``'s segment.
    """

    def __init__(self, cluster: np.ndarray, rank: np.ndarray, n_clusters: int, exponent: float):
        order = np.lexsort((rank, cluster))
        sorted_cluster = cluster[order]
        clusters = np.arange(n_clusters)
        self.items = order
        self.seg_start = np.searchsorted(sorted_cluster, clusters, side="left")
        self.seg_end = np.searchsorted(sorted_cluster, clusters, side="right")
        weights = (rank[order] + 1.0) ** -exponent
        cumulative = np.cumsum(weights)
        before = np.concatenate(([0.0], cumulative))[self.seg_start]
        total = cumulative[self.seg_end - 1] - before
        self.cdf = sorted_cluster + (cumulative - before[sorted_cluster]) / total[sorted_cluster]
        self.cdf[self.seg_end - 1] = clusters + 1.0

    def sample(self, clusters: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self.cdf, clusters + uniform, side="right")
        position = np.minimum(position, self.seg_end[clusters] - 1)
        items: np.ndarray = self.items[position]
        return items


def draw_catalogue(spec: ShopSpec, rng: np.random.Generator) -> Catalogue:
    n_items, n_categories, k = spec.n_items, spec.n_categories, spec.n_taste_clusters
    # Every cluster gets at least one category and every category at least one item.
    category_cluster = rng.permutation(np.arange(n_categories) % k)
    category_share = rng.dirichlet(np.full(n_categories, 4.0))
    extra = rng.choice(n_categories, size=n_items - n_categories, p=category_share)
    category = rng.permutation(np.concatenate((np.arange(n_categories), extra)))
    cluster = category_cluster[category]

    log_mean = rng.normal(np.log(20.0), 0.8, size=n_categories)
    log_sd = rng.uniform(0.25, 0.6, size=n_categories)
    raw_price = np.exp(rng.normal(log_mean[category], log_sd[category]))
    price = np.floor(raw_price) + 0.99

    # Popularity rank inside the cluster: a random order of the cluster's items.
    order = np.lexsort((rng.random(n_items), cluster))
    first_of_cluster = np.searchsorted(cluster[order], np.arange(k))
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items) - first_of_cluster[cluster[order]]

    adjective = rng.integers(0, len(_ADJECTIVES), size=n_items)
    names = [
        f"{_ADJECTIVES[a]} {_NOUNS[c % len(_NOUNS)]} {i}"
        for i, (a, c) in enumerate(zip(adjective.tolist(), category.tolist(), strict=True))
    ]
    return Catalogue(
        category=category,
        cluster=cluster,
        price=price,
        names=names,
        cluster_share=rng.dirichlet(np.full(k, 3.0)),
        purchase_sampler=ClusterSampler(cluster, rank, k, spec.zipf_exponent),
        view_sampler=ClusterSampler(cluster, rank, k, _VIEW_EXPONENT),
    )


def draw_users(spec: ShopSpec, rng: np.random.Generator, cluster_share: np.ndarray) -> People:
    n_established = spec.n_users - spec.new_users
    k = spec.n_taste_clusters
    cluster = rng.choice(k, size=spec.n_users, p=cluster_share)
    second = (cluster + rng.integers(1, max(k, 2), size=spec.n_users)) % k if k > 1 else cluster

    # Established customers: 75 % joined before the history starts (up to two years before),
    # the rest during it. Ids follow sign-up order, so the new users get the highest ids.
    history_s = spec.days * SECONDS_PER_DAY
    joined_before = rng.random(n_established) < 0.75
    signed_up = np.where(
        joined_before,
        -rng.uniform(0, 2 * 365 * SECONDS_PER_DAY, size=n_established),
        rng.uniform(0, history_s - 3 * SECONDS_PER_DAY, size=n_established),
    )
    new_signed_up = rng.uniform(
        history_s - _NEW_USER_WINDOW_S, history_s - 1_800, size=spec.new_users
    )
    signed_up_s = np.concatenate((np.sort(signed_up), np.sort(new_signed_up))).astype(np.int64)
    active_from_day = np.maximum(0, -(-signed_up_s[:n_established] // SECONDS_PER_DAY))
    return People(
        cluster=cluster,
        second_cluster=second,
        signed_up_s=signed_up_s,
        active_from_day=active_from_day,
    )
