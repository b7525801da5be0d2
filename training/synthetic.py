"""Seeded synthetic shop: catalogue, users, purchase history and new users' view streams.

Used by the demo, the tests and the scale benchmarks. Every random number comes from one
``numpy.random.default_rng(spec.seed)`` drawn in a fixed order, so one spec always gives the same
shop. All per-row work is vectorised numpy (no Python loop per purchase or per event), so the
"10m" preset generates in seconds.

The generative model, in the shop's words:

- items belong to categories; every category belongs to one taste cluster, so every item does;
- prices are log-normal per category (and end in .99);
- every user has a main and a second taste cluster; a fresh purchase line comes from the main
  cluster (``taste_share``), the second one (``second_taste_share``) or anywhere (the rest);
- inside a cluster item popularity is Zipf-like (``zipf_exponent``);
- user activity is heavy-tailed (log-normal), scaled by how long the user has been a customer;
- a line re-buys an item from one of the user's earlier orders with a per-user probability
  (mean ``repeat_share``), so "buy again" has real signal;
- orders hold several lines (geometric, mean ``mean_order_lines``) sharing one ``order_id`` and one
  timestamp; order days follow a mild upward trend and hours a day-night curve;
- the last ``new_users`` users signed up within the last two days of the history. They have no
  rows in ``purchases``; their views, add-to-carts and (for a minority) first purchases are in
  ``events``, a stream to replay against the service. ``high_intent_share`` of them view more than
  10 distinct products within 24 h of sign-up, the rest fewer (median 4-5, as in the Taobao log).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from service.clock import SECONDS_PER_DAY

_HOUR_S = 3_600
_NS_PER_S = 1_000_000_000
# Orders per hour of the day (UTC), evening peak, quiet night.
_HOUR_WEIGHTS = np.array(
    [
        1.0,
        0.6,
        0.4,
        0.3,
        0.3,
        0.5,
        1.0,
        2.0,
        3.0,
        4.0,
        4.5,
        5.0,
        5.5,
        5.0,
        4.5,
        4.5,
        5.0,
        5.5,
        6.0,
        6.5,
        6.0,
        5.0,
        3.5,
        2.0,
    ]
)
# Sales at the end of the history are (1 + _TREND) times those at its start.
_TREND = 0.15
# Oversampling of purchase lines, to make up for lines merged as duplicates; trimmed afterwards.
# Small catalogues merge more; a draw that still falls short is redrawn with more (rarely).
_OVERSAMPLE = 1.12
_OVERSAMPLE_TRIES = 4
# Views are spread wider than purchases: a flatter Zipf inside the cluster.
_VIEW_EXPONENT = 0.6
_VIEW_TASTE_SHARE = 0.85
_NEW_USER_WINDOW_S = 2 * SECONDS_PER_DAY
_HESITATION_WINDOW_S = SECONDS_PER_DAY
_MAX_DAY_ONE_VIEWS = 136
_ADD_TO_CART_RATE = 0.08
_PURCHASE_RATE_HIGH_INTENT = 0.30
_PURCHASE_RATE_LOW_INTENT = 0.08

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

ShopFormat = Literal["csv", "parquet"]


@dataclass(frozen=True)
class ShopSpec:
    """Size and shape of a synthetic shop; see the module docstring for the model.

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


@dataclass
class SyntheticShop:
    """A generated shop: pandas frames plus the ground truth the tests check against.

    ``user_cluster[k]`` is the main taste cluster of ``users.iloc[k]``; ``item_cluster[k]`` the
    cluster of ``items.iloc[k]``. ``now`` is the end of the history: every timestamp is <= now.
    """

    purchases: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    user_cluster: np.ndarray
    item_cluster: np.ndarray
    now: pd.Timestamp
    spec: ShopSpec


def generate_shop(spec: ShopSpec) -> SyntheticShop:
    """Generate the shop described by ``spec``; the same spec always gives the same shop."""
    rng = np.random.default_rng(spec.seed)
    now = pd.Timestamp(spec.end).as_unit("ns")
    start_s = now.value // _NS_PER_S - spec.days * SECONDS_PER_DAY

    catalogue = _draw_catalogue(spec, rng)
    people = _draw_users(spec, rng, catalogue.cluster_share)
    oversample = _OVERSAMPLE
    for _ in range(_OVERSAMPLE_TRIES):
        lines = _draw_purchases(spec, rng, catalogue, people, oversample)
        shortfall = spec.n_interactions - len(lines["user"])
        if shortfall <= 0:
            break
        oversample *= 1.05 + 1.2 * shortfall / spec.n_interactions
    user_width = max(6, len(str(spec.n_users - 1)))
    item_width = max(5, len(str(spec.n_items - 1)))
    category_width = max(2, len(str(spec.n_categories - 1)))
    # Consumes `lines` column by column, which keeps the peak memory down at scale.
    purchases = _purchases_frame(lines, catalogue.price, start_s, user_width, item_width)
    events = _draw_new_user_events(spec, rng, catalogue, people)

    items = _to_frame(
        {
            "item_id": _format_ids("i", np.arange(spec.n_items), item_width),
            "category": _format_ids("c", catalogue.category, category_width),
            "price": catalogue.price,
            "name": pa.array(catalogue.names, type=pa.string()),
        }
    )
    users = _to_frame(
        {
            "user_id": _format_ids("u", np.arange(spec.n_users), user_width),
            "signed_up_at": _timestamps(start_s, people.signed_up_s),
        }
    )
    return SyntheticShop(
        purchases=purchases,
        items=items,
        users=users,
        events=_events_frame(events, start_s, user_width, item_width),
        user_cluster=people.cluster,
        item_cluster=catalogue.cluster,
        now=now,
        spec=spec,
    )


def write_shop(shop: SyntheticShop, directory: Path, fmt: ShopFormat = "csv") -> dict[str, Path]:
    """Write purchases, items, users and events as ``<name>.<fmt>`` files under ``directory``.

    Creates the directory; each file is written to a temporary file beside it and then renamed
    over the target, so a reader never sees half a file. Returns the paths by table name.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r}; use 'csv' or 'parquet'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = {
        "purchases": shop.purchases,
        "items": shop.items,
        "users": shop.users,
        "events": shop.events,
    }
    paths: dict[str, Path] = {}
    for name, frame in frames.items():
        target = directory / f"{name}.{fmt}"
        _write_atomically(frame, target, fmt)
        paths[name] = target
    return paths


def browsing_events(
    shop: SyntheticShop,
    *,
    taste_views_per_order: float = 4.0,
    research_share: float = 0.5,
    abandoned_cart_share: float = 0.1,
    seed: int = 7,
) -> pd.DataFrame:
    """Views and add-to-carts of the shop's established customers around their orders.

    Around every order, in the shop's words:

    - every line bought was viewed up to two hours before and added to the cart minutes before;
    - with probability ``research_share`` it was also viewed 1 to 14 days earlier (research);
    - the customer viewed Poisson(``taste_views_per_order``) other products of their main taste
      cluster, by popularity, in the three days before; ``abandoned_cart_share`` of those went to
      the cart and were never bought.

    Events after ``shop.now`` are dropped. Columns as ``shop.events`` (user_id, item_id, type,
    timestamp), sorted by time. Seeded by ``seed`` alone, so the shop itself is unchanged.
    """
    if taste_views_per_order < 0 or not 0 <= research_share <= 1:
        raise ValueError("taste_views_per_order >= 0 and research_share in [0, 1]")
    if not 0 <= abandoned_cart_share <= 1:
        raise ValueError("abandoned_cart_share must be in [0, 1]")
    rng = np.random.default_rng(seed)
    lines = shop.purchases
    n_lines = len(lines)
    user = shop.users["user_id"].to_numpy(dtype=object)
    item = shop.items["item_id"].to_numpy(dtype=object)
    line_user = pd.Index(user).get_indexer(lines["user_id"])
    line_item = pd.Index(item).get_indexer(lines["item_id"])
    line_ts = lines["timestamp"].to_numpy(dtype="datetime64[s]").astype(np.int64)

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = [
        (line_user, line_item, line_ts - rng.integers(1_800, 2 * _HOUR_S, n_lines), "view"),
        (line_user, line_item, line_ts - rng.integers(60, 1_800, n_lines), "add_to_cart"),
    ]
    research = rng.random(n_lines) < research_share
    parts.append(
        (
            line_user[research],
            line_item[research],
            line_ts[research]
            - rng.integers(SECONDS_PER_DAY, 14 * SECONDS_PER_DAY, int(research.sum())),
            "view",
        )
    )

    first_line = ~lines["order_id"].duplicated().to_numpy()
    order_user, order_ts = line_user[first_line], line_ts[first_line]
    per_order = rng.poisson(taste_views_per_order, len(order_user))
    view_user = np.repeat(order_user, per_order)
    view_ts = np.repeat(order_ts, per_order) - rng.integers(0, 3 * SECONDS_PER_DAY, len(view_user))
    view_item = _by_popularity_in_cluster(
        rng, shop.user_cluster[view_user], shop.item_cluster, line_item
    )
    parts.append((view_user, view_item, view_ts, "view"))
    abandoned = rng.random(len(view_user)) < abandoned_cart_share
    parts.append(
        (
            view_user[abandoned],
            view_item[abandoned],
            view_ts[abandoned] + rng.integers(60, 600, int(abandoned.sum())),
            "add_to_cart",
        )
    )

    frame = pd.DataFrame(
        {
            "user_id": np.concatenate([user[u] for u, _, _, _ in parts]),
            "item_id": np.concatenate([item[i] for _, i, _, _ in parts]),
            "type": np.concatenate([np.full(len(u), kind) for u, _, _, kind in parts]),
            "timestamp": pd.to_datetime(np.concatenate([ts for _, _, ts, _ in parts]), unit="s"),
        }
    )
    frame = frame[frame["timestamp"] <= shop.now]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _by_popularity_in_cluster(
    rng: np.random.Generator,
    cluster: np.ndarray,
    item_cluster: np.ndarray,
    bought: np.ndarray,
) -> np.ndarray:
    """One item per entry of ``cluster``, drawn inside that cluster by purchase popularity."""
    weight = np.bincount(bought, minlength=len(item_cluster)).astype(np.float64) + 1.0
    order = np.argsort(item_cluster, kind="stable")
    sorted_cluster = item_cluster[order]
    cumulative = np.cumsum(weight[order])
    starts = np.searchsorted(sorted_cluster, np.arange(int(item_cluster.max()) + 1))
    before = np.r_[0.0, cumulative][starts]
    total = np.bincount(sorted_cluster, weights=weight[order], minlength=len(starts))
    # every cluster's items span [c, c + 1) on one axis: one searchsorted draws them all
    position = sorted_cluster + (cumulative - before[sorted_cluster]) / total[sorted_cluster]
    wanted = cluster + rng.random(len(cluster))
    found = np.minimum(np.searchsorted(position, wanted), len(order) - 1)
    return order[found]


# --- catalogue and users -------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray  # per item
    cluster: np.ndarray  # per item
    price: np.ndarray  # per item
    names: list[str]
    cluster_share: np.ndarray  # per cluster: share of users, and of off-taste picks
    purchase_sampler: _ClusterSampler
    view_sampler: _ClusterSampler


@dataclass(frozen=True)
class _People:
    cluster: np.ndarray  # main taste cluster, per user
    second_cluster: np.ndarray
    signed_up_s: np.ndarray  # seconds since the history start (negative: before it)
    active_from_day: np.ndarray  # first day an established user can order


class _ClusterSampler:
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


def _draw_catalogue(spec: ShopSpec, rng: np.random.Generator) -> _Catalogue:
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
    return _Catalogue(
        category=category,
        cluster=cluster,
        price=price,
        names=names,
        cluster_share=rng.dirichlet(np.full(k, 3.0)),
        purchase_sampler=_ClusterSampler(cluster, rank, k, spec.zipf_exponent),
        view_sampler=_ClusterSampler(cluster, rank, k, _VIEW_EXPONENT),
    )


def _draw_users(spec: ShopSpec, rng: np.random.Generator, cluster_share: np.ndarray) -> _People:
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
    return _People(
        cluster=cluster,
        second_cluster=second,
        signed_up_s=signed_up_s,
        active_from_day=active_from_day,
    )


# --- purchase history ----------------------------------------------------------------------


def _trend_cdf(x: np.ndarray) -> np.ndarray:
    """CDF on [0, 1] of the density proportional to ``1 + _TREND * x``."""
    cdf: np.ndarray = (x + 0.5 * _TREND * x * x) / (1.0 + 0.5 * _TREND)
    return cdf


def _trend_inverse(y: np.ndarray) -> np.ndarray:
    return (np.sqrt(1.0 + 2.0 * _TREND * (1.0 + 0.5 * _TREND) * y) - 1.0) / _TREND


def _draw_purchases(
    spec: ShopSpec,
    rng: np.random.Generator,
    catalogue: _Catalogue,
    people: _People,
    oversample: float,
) -> dict[str, np.ndarray]:
    """Purchase rows sorted by time: ``user``, ``item``, ``order`` (chronological number),
    ``time_s`` (seconds since the history start) and ``quantity``; about
    ``n_interactions * oversample`` lines before merging duplicates, trimmed to the target.
    """
    n_established = spec.n_users - spec.new_users
    days = spec.days

    # Orders per user: heavy-tailed activity, scaled by the user's share of the sales curve.
    start_mass = _trend_cdf(people.active_from_day / days)
    mass = 1.0 - start_mass
    activity = rng.lognormal(0.0, 1.1, size=n_established) * mass
    n_orders = max(1, round(spec.n_interactions * oversample / spec.mean_order_lines))
    orders_per_user = rng.multinomial(n_orders, activity / activity.sum())
    loyalty = _repeat_probability(spec.repeat_share, rng, n_established)

    order_user = np.repeat(np.arange(n_established), orders_per_user)
    y = start_mass[order_user] + rng.random(n_orders) * mass[order_user]
    day = np.floor(_trend_inverse(y) * days).astype(np.int64)
    day = np.clip(day, people.active_from_day[order_user], days - 1)
    hour_cdf = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(n_orders), side="right"), 23)
    order_time = day * SECONDS_PER_DAY + hour * _HOUR_S + rng.integers(0, _HOUR_S, size=n_orders)
    del y, day, hour
    # Orders are grouped by user already; sort them by time inside the user.
    history_s = days * SECONDS_PER_DAY
    user_and_time = order_user * history_s + order_time
    user_and_time.sort()
    order_time = user_and_time - order_user * history_s
    del user_and_time

    lines_per_order = rng.geometric(1.0 / spec.mean_order_lines, size=n_orders)
    n_lines = int(lines_per_order.sum())
    # Line-level index arrays dominate memory: 32 bits whenever they fit.
    index = np.int32 if n_lines < 2**31 else np.int64
    order_first_line = (np.cumsum(lines_per_order) - lines_per_order).astype(index)
    line_order = np.repeat(np.arange(n_orders, dtype=index), lines_per_order)
    line_user = order_user.astype(index)[line_order]

    # Fresh picks: main taste, second taste, or anything (by cluster share).
    source = rng.random(n_lines)
    cluster = people.cluster.astype(np.int32)[line_user]
    second = (source >= spec.taste_share) & (source < spec.taste_share + spec.second_taste_share)
    cluster[second] = people.second_cluster[line_user[second]]
    anywhere = source >= spec.taste_share + spec.second_taste_share
    del source, second
    cluster[anywhere] = rng.choice(
        spec.n_taste_clusters, size=int(anywhere.sum()), p=catalogue.cluster_share
    )
    del anywhere
    fresh_item = catalogue.purchase_sampler.sample(cluster, rng.random(n_lines)).astype(index)
    del cluster

    # Re-buys: copy the item of a random line from one of the user's earlier orders.
    user_first_order = np.cumsum(orders_per_user) - orders_per_user
    user_first_line = order_first_line[np.minimum(user_first_order, n_orders - 1)]
    first_line = user_first_line[line_user]
    earlier = order_first_line[line_order] - first_line
    rebuy = rng.random(n_lines) < loyalty[line_user]
    rebuy &= earlier > 0
    del line_user
    reference = np.arange(n_lines, dtype=index)
    reference[rebuy] = first_line[rebuy] + (rng.random(int(rebuy.sum())) * earlier[rebuy]).astype(
        index
    )
    del first_line, earlier, rebuy
    # A re-buy may point at a re-buy: follow the pointers (by doubling) to a fresh pick.
    while True:
        followed = reference[reference]
        if np.array_equal(followed, reference):
            break
        reference = followed
    del followed
    item = fresh_item[reference]
    del reference, fresh_item

    # One row per (order, item): duplicates inside an order become quantity.
    key = line_order.astype(np.int64) * spec.n_items + item
    del line_order, item
    key.sort(kind="stable")
    is_first = np.empty(n_lines, dtype=bool)
    is_first[0] = True
    np.not_equal(key[1:], key[:-1], out=is_first[1:])
    starts = np.flatnonzero(is_first)
    del is_first
    copies = np.diff(np.append(starts, n_lines))
    key = key[starts]
    del starts
    quantity = rng.geometric(0.7, size=len(key)) + copies - 1
    del copies

    excess = len(key) - spec.n_interactions
    if excess > 0:
        keep = np.ones(len(key), dtype=bool)
        keep[rng.choice(len(key), size=excess, replace=False)] = False
        key = key[keep]
        quantity = quantity[keep]
        del keep
    row_order = (key // spec.n_items).astype(index)
    row_item = (key - row_order * spec.n_items).astype(index)
    del key

    # Rows sorted by (order time, order): order-level columns follow from a repeat, only the
    # row-level ones (item, quantity) have to move. Order numbers are chronological.
    by_time = np.argsort(order_time, kind="stable")
    rows_per_order = np.bincount(row_order, minlength=n_orders)
    rows_in_time_order = rows_per_order[by_time]
    new_start = np.empty(n_orders, dtype=np.int64)
    new_start[by_time] = np.cumsum(rows_in_time_order) - rows_in_time_order
    first_row = np.cumsum(rows_per_order) - rows_per_order
    position = new_start[row_order] + np.arange(len(row_order)) - first_row[row_order]
    del new_start, first_row, rows_per_order, row_order
    item = np.empty_like(row_item)
    item[position] = row_item
    del row_item
    placed_quantity = np.empty(len(position), dtype=np.int64)
    placed_quantity[position] = quantity
    del quantity, position

    row_rank = np.repeat(np.arange(n_orders, dtype=index), rows_in_time_order)
    number = (np.cumsum(rows_in_time_order > 0) - 1).astype(index)
    return {
        "user": order_user.astype(index)[by_time][row_rank],
        "item": item,
        "order": number[row_rank],
        "time_s": order_time[by_time][row_rank],
        "quantity": placed_quantity,
    }


def _repeat_probability(mean: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-user re-buy probability: Beta-distributed with the given mean (loyal and not)."""
    if mean <= 0.0:
        return np.zeros(n)
    return rng.beta(1.5, 1.5 * (1.0 - mean) / mean, size=n)


# --- new users ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Events:
    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # 0 view, 1 add_to_cart, 2 purchase
    time_s: np.ndarray


_EVENT_TYPES = ("view", "add_to_cart", "purchase")


def _draw_new_user_events(
    spec: ShopSpec,
    rng: np.random.Generator,
    catalogue: _Catalogue,
    people: _People,
) -> _Events:
    m = spec.new_users
    if m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Events(user=empty, item=empty, kind=empty, time_s=empty)
    n_items = spec.n_items
    first_user = spec.n_users - m
    history_s = spec.days * SECONDS_PER_DAY
    signed_up = people.signed_up_s[first_user:]
    cluster = people.cluster[first_user:]
    # What can be seen of each new user's first day: they may have signed up an hour ago.
    window = np.minimum(_HESITATION_WINDOW_S, history_s - signed_up)

    # Distinct products viewed on day one: high intent > 10, the rest 1..10 (median 4).
    high = np.zeros(m, dtype=bool)
    high[rng.choice(m, size=round(spec.high_intent_share * m), replace=False)] = True
    cap = min(_MAX_DAY_ONE_VIEWS, n_items)
    low_views = 1 + rng.binomial(9, 0.35, size=m)
    high_views = 11 + np.floor(rng.lognormal(np.log(9.0), 0.8, size=m)).astype(np.int64)
    wanted = np.minimum(np.where(high, high_views, low_views), cap)

    # Oversample views (mostly in the user's taste), keep first sightings, cut to `wanted`.
    draws = 3 * wanted + 8
    draw_user = np.repeat(np.arange(m), draws)
    n_draws = len(draw_user)
    other = rng.choice(spec.n_taste_clusters, size=n_draws, p=catalogue.cluster_share)
    own = rng.random(n_draws) < _VIEW_TASTE_SHARE
    draw_cluster = np.where(own, cluster[draw_user], other)
    draw_item = catalogue.view_sampler.sample(draw_cluster, rng.random(n_draws))
    _, first_sighting = np.unique(draw_user * n_items + draw_item, return_index=True)
    first_sighting.sort()
    view_user = draw_user[first_sighting]
    view_item = draw_item[first_sighting]
    rank = np.arange(len(view_user)) - np.searchsorted(view_user, np.arange(m))[view_user]
    keep = rank < wanted[view_user]
    view_user, view_item = view_user[keep], view_item[keep]
    view_user, view_item = _top_up_views(
        rng, view_user, view_item, wanted, cluster, catalogue.cluster
    )

    # Day-one view times, early-weighted, sorted inside each user.
    n_views = len(view_user)
    offset = np.floor(rng.random(n_views) ** 1.5 * window[view_user]).astype(np.int64)
    user_and_offset = view_user * (2 * SECONDS_PER_DAY) + offset
    user_and_offset.sort()
    view_time = signed_up[view_user] + user_and_offset - view_user * (2 * SECONDS_PER_DAY)
    del user_and_offset

    # A few views lead to the cart; a minority of users buy one product they viewed.
    buyer = rng.random(m) < np.where(high, _PURCHASE_RATE_HIGH_INTENT, _PURCHASE_RATE_LOW_INTENT)
    view_start = np.searchsorted(view_user, np.arange(m))
    views_per_user = np.diff(np.append(view_start, n_views))
    bought_view = view_start + (rng.random(m) * views_per_user).astype(np.int64)
    bought_view = bought_view[buyer]
    in_cart = rng.random(n_views) < _ADD_TO_CART_RATE
    in_cart[bought_view] = True
    cart_time = np.minimum(view_time + rng.integers(30, 600, size=n_views), history_s)
    purchase_time = np.minimum(
        cart_time[bought_view] + rng.integers(60, 1_800, size=len(bought_view)), history_s
    )

    user = np.concatenate((view_user, view_user[in_cart], view_user[bought_view])) + first_user
    item = np.concatenate((view_item, view_item[in_cart], view_item[bought_view]))
    kind = np.repeat(np.arange(3), [n_views, int(in_cart.sum()), len(bought_view)])
    time_s = np.concatenate((view_time, cart_time[in_cart], purchase_time))
    order = np.lexsort((kind, user, time_s))
    return _Events(user=user[order], item=item[order], kind=kind[order], time_s=time_s[order])


def _top_up_views(
    rng: np.random.Generator,
    view_user: np.ndarray,
    view_item: np.ndarray,
    wanted: np.ndarray,
    user_cluster: np.ndarray,
    item_cluster: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Give users whose oversampled draws fell short unseen items, own cluster first.

    Rare (tiny catalogues, long streams), so a loop over the short users is cheap.
    """
    got = np.bincount(view_user, minlength=len(wanted))
    short = np.flatnonzero(got < wanted)
    if short.size == 0:
        return view_user, view_item
    start = np.searchsorted(view_user, short)
    all_items = np.arange(len(item_cluster))
    extra_user: list[np.ndarray] = []
    extra_item: list[np.ndarray] = []
    for user, begin in zip(short.tolist(), start.tolist(), strict=True):
        unseen = np.setdiff1d(all_items, view_item[begin : begin + got[user]])
        own = item_cluster[unseen] == user_cluster[user]
        ranked = np.concatenate((rng.permutation(unseen[own]), rng.permutation(unseen[~own])))
        picked = ranked[: wanted[user] - got[user]]
        extra_user.append(np.full(len(picked), user))
        extra_item.append(picked)
    all_users = np.concatenate([view_user, *extra_user])
    all_views = np.concatenate([view_item, *extra_item])
    order = np.argsort(all_users, kind="stable")
    return all_users[order], all_views[order]


# --- frames and files -----------------------------------------------------------------------


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded ids (``u000123``) for many numbers at once, built as one Arrow buffer.

    Numbers are formatted once each (``0 .. max``) into fixed-width byte rows, which are then
    gathered as opaque ``V<row>`` items: two vectorised passes, no Python string per row.
    """
    n = len(numbers)
    row = len(prefix) + width
    numbers = np.asarray(numbers)
    size = int(numbers.max(initial=-1)) + 1
    if size > 10**width:
        raise ValueError(f"{prefix!r} ids need more than {width} digits")
    if size <= 2 * n:
        rows = _digit_rows(prefix, np.arange(size), width).view(f"V{row}").ravel()
        data = np.take(rows, numbers).view(np.uint8)
    else:
        data = _digit_rows(prefix, numbers, width).ravel()
    offset_type = np.int32 if n * row < 2**31 else np.int64
    offsets = np.arange(0, (n + 1) * row, row, dtype=offset_type)
    string_type = pa.string() if offset_type is np.int32 else pa.large_string()
    return pa.Array.from_buffers(string_type, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _digit_rows(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` plus ``width`` zero-padded decimal digits per number, as ASCII byte rows."""
    head = len(prefix)
    data = np.empty((len(numbers), head + width), dtype=np.uint8)
    data[:, :head] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    # 32-bit division is about twice as fast as 64-bit; ids beyond 4e9 fall back to 64 bits.
    small = len(numbers) == 0 or int(numbers.max()) < 2**32
    rest: np.ndarray = numbers.astype(np.uint32 if small else np.uint64)
    for column in range(head + width - 1, head - 1, -1):
        quotient = rest // 10
        data[:, column] = rest - quotient * 10 + ord("0")
        rest = quotient
    return data


def _timestamps(start_s: int, seconds: np.ndarray) -> np.ndarray:
    nanoseconds = (start_s + seconds.astype(np.int64)) * _NS_PER_S
    return nanoseconds.view("datetime64[ns]")


def _to_frame(columns: dict[str, pa.Array | np.ndarray]) -> pd.DataFrame:
    """A frame over the given arrays without copying them: Arrow strings become pandas' default
    string dtype (``str``), numpy arrays stay as they are (owned, writable)."""
    string_dtype = pd.Series([""]).dtype
    data = {
        name: pd.array(values, dtype=string_dtype) if isinstance(values, pa.Array) else values
        for name, values in columns.items()
    }
    return pd.DataFrame(data, copy=False)


def _purchases_frame(
    lines: dict[str, np.ndarray],
    item_price: np.ndarray,
    start_s: int,
    user_width: int,
    item_width: int,
) -> pd.DataFrame:
    """Purchases as a frame; empties ``lines`` as it goes so each array is freed once used."""
    user_id = _format_ids("u", lines.pop("user"), user_width)
    item = lines.pop("item")
    item_id = _format_ids("i", item, item_width)
    price = item_price[item]
    del item
    timestamp = _timestamps(start_s, lines.pop("time_s"))
    quantity = lines.pop("quantity")
    order = lines.pop("order")
    order_width = max(7, len(str(int(order.max(initial=0)))))
    order_id = _format_ids("o", order, order_width)
    del order
    return _to_frame(
        {
            "user_id": user_id,
            "item_id": item_id,
            "timestamp": timestamp,
            "quantity": quantity,
            "price": price,
            "order_id": order_id,
        }
    )


def _events_frame(events: _Events, start_s: int, user_width: int, item_width: int) -> pd.DataFrame:
    kinds = pa.array(list(_EVENT_TYPES), type=pa.string())
    return _to_frame(
        {
            "user_id": _format_ids("u", events.user, user_width),
            "item_id": _format_ids("i", events.item, item_width),
            "type": kinds.take(pa.array(events.kind, type=pa.int64())),
            "timestamp": _timestamps(start_s, events.time_s),
        }
    )


def _write_atomically(frame: pd.DataFrame, target: Path, fmt: ShopFormat) -> None:
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        if fmt == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
