"""Prometheus metrics of one service process (a registry per app, so tests stay isolated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoadResult(Protocol):
    @property
    def changed(self) -> bool: ...
    @property
    def version(self) -> str | None: ...
    @property
    def attempted(self) -> bool: ...


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram(
            "recoffer_http_request_duration_seconds",
            "Request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "recoffer_recommendations_total",
            "Recommendation responses by source (model, session, popular)",
            ["source"],
            registry=r,
        )
        self.events = Counter(
            "recoffer_events_ingested_total", "Events stored, by type", ["type"], registry=r
        )
        self.event_duplicates = Counter(
            "recoffer_event_duplicates_total",
            "Events skipped because their client_event_id was already stored",
            registry=r,
        )
        self.model_info = Gauge(
            "recoffer_model_info", "The served model version (value 1)", ["version"], registry=r
        )
        self.model_age = Gauge(
            "recoffer_model_age_seconds",
            "Seconds since the served model was trained",
            registry=r,
        )
        self.model_loads = Counter(
            "recoffer_model_loads_total", "Model loads by outcome", ["outcome"], registry=r
        )
        self.database_up = Gauge(
            "recoffer_database_up", "1 when the last database call succeeded", registry=r
        )
        self.offer_decisions = Counter(
            "recoffer_offer_decisions_total",
            "Offer evaluations by campaign and decision (issued, holdout, not_eligible, ...)",
            ["campaign", "decision"],
            registry=r,
        )
        self.coupons_redeemed = Counter(
            "recoffer_coupons_redeemed_total",
            "Coupons redeemed through this process",
            ["campaign"],
            registry=r,
        )
        self.coupon_refusals = Counter(
            "recoffer_coupon_refusals_total",
            "Coupon lookups refused: not_found, not_yours, rate_limited",
            ["reason"],
            registry=r,
        )
        self.coupons = Gauge(
            "recoffer_coupons",
            "Coupons in the database by campaign and state (active, redeemed, expired)",
            ["campaign", "state"],
            registry=r,
        )
        # issue 11, item 10: the activity store's memory (service/activity/store.py)
        self.activity_users = Gauge(
            "recoffer_activity_users",
            "Users whose recent events this process holds in memory",
            registry=r,
        )
        self.activity_bytes = Gauge(
            "recoffer_activity_bytes_estimated",
            "Estimated memory of the recent events held (bytes)",
            registry=r,
        )
        self.activity_evictions = Counter(
            "recoffer_activity_evictions_total",
            "Users forgotten by the activity store to stay within activity_max_users",
            registry=r,
        )
        self.budget_left = Gauge(
            "recoffer_campaign_budget_left",
            "Coupons a campaign may still issue, today and in total (capped campaigns only)",
            ["campaign", "period"],
            registry=r,
        )

    def model_load(self, outcome: LoadResult) -> None:
        """Count an attempted model load and, on success, switch the version label."""
        if not outcome.attempted:
            return
        self.model_loads.labels("ok" if outcome.changed else "failed").inc()
        if outcome.changed and outcome.version:
            self.model_info.clear()
            self.model_info.labels(outcome.version).set(1)
