"""What one worker's lifespan builds: its resources and its domain objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.activity.ingest import Ingest
from service.activity.repository import Repository
from service.activity.sessions import RedisSessions
from service.activity.store import ActivityStore
from service.delivery.service import Webhooks
from service.experiments.service import Experiments
from service.feedback.service import Feedback
from service.health import Health
from service.leader import Leader
from service.metrics import Metrics
from service.offers.auto import AutoEvaluator
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.jobs import SweepJobs
from service.offers.reports import Reports
from service.offers.store import CampaignStore
from service.privacy.service import Privacy
from service.recommend.arrivals import NewArrivals
from service.recommend.holder import ModelHolder
from service.recommend.service import Recommendations
from service.segments.service import SegmentRefresher, Segments
from service.settings import Settings


@dataclass
class AppState:
    """What the lifespan builds: the worker's resources and its domain objects."""

    settings: Settings
    repository: Repository
    activity: ActivityStore
    models: ModelHolder
    metrics: Metrics
    clock: Callable[[], datetime]
    recommendations: Recommendations
    ingest: Ingest
    health: Health
    offers: OfferEngine
    auto_offers: AutoEvaluator
    coupons: Coupons
    reports: Reports
    privacy: Privacy  # erasure, export, tombstones (issue 11, item 2)
    sweeps: SweepJobs  # campaign sweeps in the background (issue 11, item 11)
    campaign_store: CampaignStore  # campaigns managed at run time (issue 12, item 5)
    segments: Segments  # RFM, lifecycle stage, loyalty type (issue 12, item 1)
    segment_refresher: SegmentRefresher
    webhooks: Webhooks | None = None  # the outbox, its log, the coupon export (issue 12, item 6)
    experiments: Experiments | None = None  # A/B tests of recommenders (issue 14, item 3)
    feedback: Feedback | None = None  # impressions, clicks, attribution, figures (issue 14)
    arrivals: NewArrivals | None = None  # products the model does not know (issue 14, item 4)
    sessions: RedisSessions | None = None  # users' recent events in Redis (issue 15, item 5)
    leader: Leader | None = None  # who runs the time-driven jobs (issue 15, item 5)
