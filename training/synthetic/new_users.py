"""The new users' first day: views (high intent or not), add-to-carts and a few purchases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.clock import SECONDS_PER_DAY
from training.synthetic.catalogue import Catalogue, People
from training.synthetic.spec import ShopSpec

_VIEW_TASTE_SHARE = 0.85
_HESITATION_WINDOW_S = SECONDS_PER_DAY
_MAX_DAY_ONE_VIEWS = 136
_ADD_TO_CART_RATE = 0.08
_PURCHASE_RATE_HIGH_INTENT = 0.30
_PURCHASE_RATE_LOW_INTENT = 0.08


@dataclass(frozen=True)
class Events:
    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # 0 view, 1 add_to_cart, 2 purchase
    time_s: np.ndarray


EVENT_TYPES = ("view", "add_to_cart", "purchase")


def draw_new_user_events(
    spec: ShopSpec,
    rng: np.random.Generator,
    catalogue: Catalogue,
    people: People,
) -> Events:
    m = spec.new_users
    if m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Events(user=empty, item=empty, kind=empty, time_s=empty)
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
    return Events(user=user[order], item=item[order], kind=kind[order], time_s=time_s[order])


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
