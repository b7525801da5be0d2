"""Every query of the offers, one sub-repository per concern, on the shared ``Repository``.

``decisions``: the facts the rule reads and the exactly-once decision write with its budget;
``coupons``: look-ups, redemption and release; ``reports``: the read-only counts of the stats
and gauges. An issued decision inserts its coupon inside its own transaction, so
``decisions`` holds ``coupons``; the sub-repositories share the engine and its write queue.
"""

from __future__ import annotations

from service.activity.repository import Repository
from service.offers.repository.coupons import CouponRepository
from service.offers.repository.decisions import DecisionRepository
from service.offers.repository.reports import ReportRepository


class OfferRepository:
    """The offer tables' queries, by concern, on the shared engine and its SQLite write queue."""

    def __init__(self, base: Repository) -> None:
        self.base = base
        self.engine = base.engine
        self.coupons = CouponRepository(base)
        self.decisions = DecisionRepository(base, self.coupons)
        self.reports = ReportRepository(base)
