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

Modules: ``spec`` (sizes and presets), ``shop`` (generate and write a shop), ``catalogue``
(items and users), ``purchases`` (the history), ``new_users`` (their event streams) and
``browsing`` (established customers' views around their orders, on demand).
"""
