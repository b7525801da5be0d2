"""Views and add-to-carts of a shop's established customers around their orders, and (on demand)
of the visitors who never buy and the new products nobody bought yet (``every_visitor_events``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EveryVisitor:
    """A shop's history as a browsing log has it: new products and visitors who never buy.

    ``purchases``: the shop's purchases less the new products' sales before ``first_sale``;
    ``events``: views and add-to-carts (columns as ``shop.events``), sorted by time;
    ``new_products``: item ids launched at ``launch`` and first sold at or after
    ``first_sale``; ``browsers``: ids of the visitors who only browse (never in ``purchases``).
    """

    purchases: pd.DataFrame
    events: pd.DataFrame
    new_products: pd.Index
    browsers: pd.Index
    launch: pd.Timestamp
    first_sale: pd.Timestamp


def every_visitor_events(
    shop: SyntheticShop,
    *,
    new_product_share: float = 0.05,
    launch_days: float = 50.0,
    first_sale_days: float = 30.0,
    browsers_per_customer: float = 1.0,
    views_per_browser: float = 8.0,
    new_product_view_share: float = 0.2,
    abandoned_cart_share: float = 0.1,
    seed: int = 11,
) -> EveryVisitor:
    """The shop's browsing with the visitors and products a purchase log leaves out, seeded.

    In the shop's words, on top of ``browsing_events`` (customers' views around their orders):

    - ``new_product_share`` of the catalogue are new products: launched ``launch_days`` before
      ``shop.now``, never sold before ``first_sale_days`` before it (their earlier purchase lines
      are dropped; the later ones are the shop's own, so they follow its taste clusters);
    - after the launch every customer of a new product's taste cluster (their main cluster)
      views it with probability ``new_product_view_share``, at a uniform time;
    - ``browsers_per_customer`` visitors per customer never buy. Each has a main taste cluster
      (drawn as the customers' are), a week of activity starting uniformly over the history and
      1 + Poisson(``views_per_browser`` - 1) views, 85 % inside the main cluster by purchase
      popularity, the rest in another cluster; one visitor active after the launch views each
      new product of their cluster with probability ``new_product_view_share``;
    - ``abandoned_cart_share`` of the taste views go to the cart and are never bought.

    Seeded by ``seed`` alone, so the shop itself is unchanged.
    """
    if not 0 <= new_product_share < 1 or not 0 <= new_product_view_share <= 1:
        raise ValueError("new_product_share in [0, 1) and new_product_view_share in [0, 1]")
    if not 0 < first_sale_days <= launch_days or browsers_per_customer < 0:
        raise ValueError("0 < first_sale_days <= launch_days and browsers_per_customer >= 0")
    if views_per_browser < 1:
        raise ValueError("views_per_browser must be >= 1")
    rng = np.random.default_rng(seed)
    item = shop.items["item_id"].to_numpy(dtype=object)
    n_items = len(item)
    launch = shop.now - pd.Timedelta(days=launch_days)
    first_sale = shop.now - pd.Timedelta(days=first_sale_days)
    new = np.sort(rng.choice(n_items, size=round(new_product_share * n_items), replace=False))
    is_new = np.zeros(n_items, dtype=bool)
    is_new[new] = True

    lines = shop.purchases
    line_item = pd.Index(item).get_indexer(lines["item_id"])
    unsold = is_new[line_item] & (lines["timestamp"] < first_sale).to_numpy()
    purchases = lines[~unsold].reset_index(drop=True)
    shop = dataclasses.replace(shop, purchases=purchases)
    around_orders = browsing_events(shop, abandoned_cart_share=abandoned_cart_share, seed=seed)
    viewed_item = pd.Index(item).get_indexer(around_orders["item_id"])
    before_launch = is_new[viewed_item] & (around_orders["timestamp"] < launch).to_numpy()
    parts = [around_orders[~before_launch]]

    launch_s = int(launch.value // 1_000_000_000)
    now_s = int(shop.now.value // 1_000_000_000)
    customers = pd.Index(shop.users["user_id"]).get_indexer(purchases["user_id"].unique())
    customer_ids = shop.users["user_id"].to_numpy(dtype=object)[customers]
    parts.append(
        _new_product_views(
            rng,
            customer_ids,
            shop.user_cluster[customers],
            item[new],
            shop.item_cluster[new],
            new_product_view_share,
            (launch_s, now_s),
        )
    )

    n_browsers = round(browsers_per_customer * len(customers))
    width = max(6, len(str(max(n_browsers - 1, 0))))
    browsers = np.array([f"v{k:0{width}d}" for k in range(n_browsers)], dtype=object)
    cluster = shop.user_cluster[customers][rng.integers(0, len(customers), n_browsers)]
    start_s = now_s - shop.spec.days * SECONDS_PER_DAY
    active = rng.integers(start_s, now_s, n_browsers)
    per_browser = 1 + rng.poisson(views_per_browser - 1, n_browsers)
    who = np.repeat(np.arange(n_browsers), per_browser)
    n_clusters = int(shop.item_cluster.max()) + 1
    elsewhere = rng.random(len(who)) >= 0.85
    view_cluster = np.where(elsewhere, rng.integers(0, n_clusters, len(who)), cluster[who])
    bought = pd.Index(item).get_indexer(purchases["item_id"])
    view_item = _by_popularity_in_cluster(rng, view_cluster, shop.item_cluster, bought)
    view_ts = np.minimum(active[who] + rng.integers(0, 7 * SECONDS_PER_DAY, len(who)), now_s)
    # a product not launched yet cannot be seen: those views go to the cluster's others (the
    # new products moved to clusters of their own, after the real ones)
    early = is_new[view_item] & (view_ts < launch_s)
    launched_later = np.where(is_new, shop.item_cluster + n_clusters, shop.item_cluster)
    view_item[early] = _by_popularity_in_cluster(rng, view_cluster[early], launched_later, bought)
    abandoned = rng.random(len(who)) < abandoned_cart_share
    parts.append(
        _frame(
            browsers[np.r_[who, who[abandoned]]],
            item[np.r_[view_item, view_item[abandoned]]],
            np.r_[np.full(len(who), "view"), np.full(int(abandoned.sum()), "add_to_cart")],
            np.r_[view_ts, view_ts[abandoned] + rng.integers(60, 600, int(abandoned.sum()))],
        )
    )
    after = active + 7 * SECONDS_PER_DAY >= launch_s
    parts.append(
        _new_product_views(
            rng,
            browsers[after],
            cluster[after],
            item[new],
            shop.item_cluster[new],
            new_product_view_share,
            (launch_s, now_s),
        )
    )
    events = pd.concat(parts, ignore_index=True)
    events = events[events["timestamp"] <= shop.now]
    return EveryVisitor(
        purchases=purchases,
        events=events.sort_values("timestamp", kind="stable").reset_index(drop=True),
        new_products=pd.Index(item[new]),
        browsers=pd.Index(browsers),
        launch=launch,
        first_sale=first_sale,
    )


def _new_product_views(
    rng: np.random.Generator,
    people: np.ndarray,
    people_cluster: np.ndarray,
    products: np.ndarray,
    product_cluster: np.ndarray,
    share: float,
    window_s: tuple[int, int],
) -> pd.DataFrame:
    """Each of ``people`` views each product of their cluster with probability ``share``, at a
    uniform time in ``window_s``."""
    viewer: list[np.ndarray] = []
    viewed: list[np.ndarray] = []
    for product, cluster in zip(products, product_cluster, strict=True):
        fans = np.flatnonzero(people_cluster == cluster)
        chosen = fans[rng.random(len(fans)) < share]
        viewer.append(people[chosen])
        viewed.append(np.full(len(chosen), product, dtype=object))
    who = np.concatenate(viewer) if viewer else np.zeros(0, dtype=object)
    what = np.concatenate(viewed) if viewed else np.zeros(0, dtype=object)
    ts = rng.integers(window_s[0], max(window_s[1], window_s[0] + 1), len(who))
    return _frame(who, what, np.full(len(who), "view"), ts)


def _frame(user: np.ndarray, item: np.ndarray, kind: np.ndarray, ts_s: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": user,
            "item_id": item,
            "type": kind,
            "timestamp": pd.to_datetime(np.asarray(ts_s, dtype=np.int64), unit="s"),
        }
    )
