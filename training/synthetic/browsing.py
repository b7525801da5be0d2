"""Views and add-to-carts of a shop's established customers around their orders (on demand)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.clock import SECONDS_PER_DAY
from training.synthetic.purchases import HOUR_S
from training.synthetic.shop import SyntheticShop


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
        (line_user, line_item, line_ts - rng.integers(1_800, 2 * HOUR_S, n_lines), "view"),
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
