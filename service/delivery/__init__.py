"""Webhooks to the shop (issue 12, item 6): an outbox written with the facts it tells, a
sender that delivers it signed, in order per coupon, at least once, and a log of every try.

``events``: the event bodies and their signature; ``outbox``: the writes inside the coupon's
own transactions and the scan for expiring coupons; ``repository``: claims, results, the log,
replays and the coupon export; ``sender``: the background loop of each worker.
"""
