"""ALS-like factors with the synthetic shop's taste structure, at sizes no fit here reaches.

A fit of a million items and ten million users does not run on this machine, and random vectors
are the easy case for a nearest-neighbour index (no structure, no hubs). These factors follow
the generative model of ``training.synthetic`` instead: the catalogue is the shop's own
(``training.synthetic.catalogue.draw_catalogue``: categories inside taste clusters, Zipf
popularity inside a cluster), an item's vector is its cluster's direction plus its category's
plus its own, longer the more it sells (as ALS item vectors are); a user's vector mixes their
main and second taste cluster (``taste_share``, ``second_taste_share``) with a share of noise,
and their history is a few items drawn from those clusters by the shop's purchase sampler.
Seeded; generated in chunks so ten million users stay within a few hundred MB at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.synthetic.catalogue import Catalogue, draw_catalogue
from training.synthetic.spec import ShopSpec

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TasteSpace:
    """The shop's catalogue and the directions of its clusters and categories."""

    spec: ShopSpec
    catalogue: Catalogue
    cluster_dirs: F32  # clusters x factors
    category_dirs: F32  # categories x factors
    item_factors: F32  # items x factors
    buyers: npt.NDArray[np.int64]  # distinct buyers per item (popularity)
    recent_buyers: npt.NDArray[np.int64]  # in the last weeks (trending)
    seed: int


def taste_space(n_items: int, factors: int, *, seed: int = 7) -> TasteSpace:
    """The catalogue of ``n_items`` and its item factors (one cluster per ~2,500 items)."""
    spec = ShopSpec(
        n_users=2,
        new_users=0,
        n_items=n_items,
        n_categories=max(20, n_items // 250),
        n_taste_clusters=max(8, n_items // 2_500),
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    catalogue = draw_catalogue(spec, rng)
    scale = 1.0 / np.sqrt(factors)
    clusters = rng.normal(0, scale, (spec.n_taste_clusters, factors)).astype(np.float32)
    categories = rng.normal(0, 0.6 * scale, (spec.n_categories, factors)).astype(np.float32)
    own = rng.normal(0, 0.8 * scale, (n_items, factors)).astype(np.float32)
    # expected buyers: the cluster's share of users times the item's Zipf weight in it
    sampler = catalogue.purchase_sampler
    weight = np.empty(n_items)
    for c in range(spec.n_taste_clusters):
        members = sampler.items[sampler.seg_start[c] : sampler.seg_end[c]]
        w = (np.arange(len(members)) + 1.0) ** -spec.zipf_exponent
        weight[members] = catalogue.cluster_share[c] * w / w.sum()
    buyers = rng.poisson(weight * 40.0 * n_items).astype(np.int64)
    recent = rng.binomial(buyers, rng.beta(1.0, 9.0, n_items)).astype(np.int64)
    length = (0.25 + np.log1p(buyers) / np.log1p(max(1, int(buyers.max())))).astype(np.float32)
    items = clusters[catalogue.cluster] + categories[catalogue.category] + own
    items *= (length / np.linalg.norm(items, axis=1))[:, None]
    return TasteSpace(
        spec=spec,
        catalogue=catalogue,
        cluster_dirs=clusters,
        category_dirs=categories,
        item_factors=items.astype(np.float32),
        buyers=buyers,
        recent_buyers=recent,
        seed=seed,
    )


@dataclass(frozen=True)
class UserChunk:
    factors: F32  # users x factors
    history_indptr: npt.NDArray[np.int64]  # users + 1, from 0
    history_indices: npt.NDArray[np.int32]
    history_counts: F32
    history_age_days: F32


def users(space: TasteSpace, n_users: int, *, chunk: int = 500_000) -> Iterator[UserChunk]:
    """``n_users`` users in chunks: vectors of their tastes and a few bought items each."""
    spec, catalogue = space.spec, space.catalogue
    k, factors = spec.n_taste_clusters, space.item_factors.shape[1]
    for start in range(0, n_users, chunk):
        rng = np.random.default_rng([space.seed, start])
        n = min(chunk, n_users - start)
        main = rng.choice(k, size=n, p=catalogue.cluster_share)
        second = (main + rng.integers(1, max(k, 2), size=n)) % k
        noise = rng.normal(0, 1.0 / np.sqrt(factors), (n, factors)).astype(np.float32)
        vectors = (
            spec.taste_share * space.cluster_dirs[main]
            + spec.second_taste_share * space.cluster_dirs[second]
            + 0.5 * noise
        )
        activity = rng.lognormal(0.0, 0.5, n).astype(np.float32)
        vectors *= (activity / np.linalg.norm(vectors, axis=1))[:, None]
        lines = 1 + rng.poisson(3.0, n)
        owner = np.repeat(np.arange(n), lines)
        from_second = rng.random(len(owner)) < spec.second_taste_share / (
            spec.taste_share + spec.second_taste_share
        )
        cluster = np.where(from_second, second[owner], main[owner])
        bought = catalogue.purchase_sampler.sample(cluster, rng.random(len(owner)))
        pairs = np.unique(owner.astype(np.int64) * space.item_factors.shape[0] + bought)
        row, col = np.divmod(pairs, space.item_factors.shape[0])
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
        yield UserChunk(
            factors=vectors.astype(np.float32),
            history_indptr=indptr,
            history_indices=col.astype(np.int32),
            history_counts=(1 + rng.poisson(0.4, len(col))).astype(np.float32),
            history_age_days=rng.uniform(1, 365, len(col)).astype(np.float32),
        )
