"""The purchase history of the established customers: orders, lines, re-buys, quantities."""

from __future__ import annotations

import numpy as np

from service.clock import SECONDS_PER_DAY
from training.synthetic.catalogue import Catalogue, People
from training.synthetic.spec import ShopSpec

HOUR_S = 3_600
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


def _trend_cdf(x: np.ndarray) -> np.ndarray:
    """CDF on [0, 1] of the density proportional to ``1 + _TREND * x``."""
    cdf: np.ndarray = (x + 0.5 * _TREND * x * x) / (1.0 + 0.5 * _TREND)
    return cdf


def _trend_inverse(y: np.ndarray) -> np.ndarray:
    return (np.sqrt(1.0 + 2.0 * _TREND * (1.0 + 0.5 * _TREND) * y) - 1.0) / _TREND


def draw_purchases(
    spec: ShopSpec,
    rng: np.random.Generator,
    catalogue: Catalogue,
    people: People,
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
    order_time = day * SECONDS_PER_DAY + hour * HOUR_S + rng.integers(0, HOUR_S, size=n_orders)
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
