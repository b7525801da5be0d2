"""The offer engine: decide for one user, sweep a campaign's window, the page's offer.

Plain Python over ``OfferRepository.decisions``; the clock is injected, so every rule that
depends on time is tested without sleeping. Decisions are final once recorded (``issued`` or
``holdout``); ``not_eligible`` is an answer, not a record, as a user with too few views now
may qualify later. Caps and the holdout are decided here; the budget is taken by the write.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from service.errors import BudgetExhausted, PurchasedMeanwhile
from service.offers.campaigns import Campaign, find_campaign
from service.offers.coupons import coupon_status
from service.offers.discounts import budget_reason, coupon_terms, money_caps
from service.offers.kinds import DecisionKind
from service.offers.repository import OfferRepository
from service.offers.repository.coupons import CouponRecord
from service.offers.repository.decisions import (
    Caps,
    Claim,
    CouponDraft,
    DecisionRecord,
    Recorded,
)
from service.offers.rules import UserFacts, check_eligibility, new_code, redacted
from service.offers.store import version_of
from service.offers.targeting import UpliftTargeting, final_kind

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)
# (user_id, products the user viewed) -> the same products, the model's favourite first
RankItems = Callable[[str, Sequence[str]], list[str]]
# (users done, of how many, decisions so far by kind): called by a sweep after every batch
SweepProgress = Callable[[int, int, Counter[str]], None]
SWEEP_BATCH = 2_000  # users evaluated per batch; about a fifth of them are written


@dataclass(frozen=True)
class Decision:
    campaign_id: str
    user_id: str
    decision: DecisionKind
    reasons: tuple[str, ...] = ()
    views: int | None = None
    min_views: int | None = None
    attribution_id: str | None = None
    decided_at: datetime | None = None
    previous: str | None = None  # already_decided: what was decided then
    coupon: CouponRecord | None = None
    campaign_version: int | None = None  # the definition it was decided with (item 5)


@dataclass(frozen=True)
class SweepResult:
    campaign_id: str
    active: bool
    evaluated: int
    decisions: Counter[str]
    seconds: float


class OfferEngine:
    """Campaign decisions for one service process."""

    def __init__(
        self,
        campaigns: Mapping[str, Campaign],
        repository: OfferRepository,
        clock: Callable[[], datetime],
        *,
        rank_items: RankItems | None = None,
        metrics: Metrics | None = None,
        targeting: UpliftTargeting | None = None,
    ) -> None:
        self.campaigns = dict(campaigns)
        self.repository = repository
        self.clock = clock
        self.rank_items = rank_items
        self.metrics = metrics
        # the side of each decision: the holdout draw, and uplift targeting (issue 12, item 4)
        self.targeting = targeting or UpliftTargeting(repository.reports, clock)

    def campaign(self, campaign_id: str) -> Campaign:
        return find_campaign(self.campaigns, campaign_id)

    def evaluate(self, user_id: str, campaign_id: str) -> Decision:
        """Decide for one user now and record it; a user is decided once per campaign."""
        campaign = self.campaign(campaign_id)
        now = self.clock()
        existing, facts = self.repository.decisions.decision_and_facts(
            campaign_id, user_id, campaign.window, now, attributes=bool(campaign.require_attributes)
        )
        if facts is None:
            assert existing is not None  # a final decision
            return self._count(self._already(existing, self._coupon_of(existing), campaign))
        return self._count(self._decide(campaign, facts, now))

    def sweep(self, campaign_id: str, progress: SweepProgress | None = None) -> SweepResult:
        """Evaluate every user inside the campaign's window who has no final decision yet.

        The users are decided in batches of ``SWEEP_BATCH``, each at its own moment and
        written in one transaction (``record_batch``) with the guarantees of ``evaluate``:
        one decision per user (the unique index), caps never exceeded (budget rows locked),
        the holdout drawn per user, a purchase seen in the transaction refusing the offer.
        Safe to run again and concurrently with itself and with single evaluations. Once a
        cap is reached, the remaining eligible users are recorded as budget misses.

        ``progress`` is called after every batch is committed (users done so far, of how
        many, the counts); an exception it raises stops the sweep there, with every batch
        written so far kept.
        """
        campaign = self.campaign(campaign_id)
        started = time.perf_counter()
        now = self.clock()
        if not campaign.is_active(now):
            return SweepResult(campaign_id, False, 0, Counter(), 0.0)
        candidates = self.repository.decisions.candidates(
            campaign_id, campaign.window, now, attributes=bool(campaign.require_attributes)
        )
        counts: Counter[str] = Counter()
        if progress is not None:
            progress(0, len(candidates), counts)
        exhausted: str | None = None
        for first in range(0, len(candidates), SWEEP_BATCH):
            batch = candidates[first : first + SWEEP_BATCH]
            moment = self.clock()  # a long sweep decides each batch at its own moment
            eligible: list[tuple[UserFacts, int]] = []
            for facts in batch:
                eligibility = check_eligibility(campaign, facts, moment)
                if eligibility.eligible:
                    eligible.append((facts, eligibility.views))
            made = Counter({"not_eligible": len(batch) - len(eligible)})
            if exhausted is None:
                outcome, exhausted = self._decide_batch(campaign, eligible, moment)
                made.update(outcome)
            elif eligible:
                self.repository.decisions.record_misses(
                    campaign_id,
                    [(facts.user_id, views) for facts, views in eligible],
                    moment,
                    moment + campaign.conversion_window,
                    version_of(campaign),
                )
                made["budget_exhausted"] += len(eligible)
            made = +made  # no zero counts
            self._count_many(campaign_id, made)
            counts.update(made)
            if progress is not None:
                progress(first + len(batch), len(candidates), counts)
        seconds = time.perf_counter() - started
        log.info(
            "campaign_swept",
            extra={"campaign": campaign_id, "evaluated": len(candidates), **counts},
        )
        return SweepResult(campaign_id, True, len(candidates), counts, seconds)

    def _decide_batch(
        self, campaign: Campaign, eligible: list[tuple[UserFacts, int]], now: datetime
    ) -> tuple[Counter[str], str | None]:
        """Record the decisions of eligible users in one write: their counts by kind, and the
        reason (``cap_<period>``) when a cap was reached."""
        if not eligible:
            return Counter(), None
        viewed: dict[str, list[str]] = {}
        if campaign.restrict_to_top_items > 0:
            viewed = self.repository.decisions.viewed_items_many(
                [facts.user_id for facts, _ in eligible], now
            )
        claims = []
        for facts, views in eligible:
            kind, _ = self.targeting.side(campaign, facts)
            claims.append(
                Claim(
                    facts.user_id,
                    kind,
                    views,
                    None
                    if kind != "issued"
                    else self._draft(campaign, facts, now, viewed.get(facts.user_id)),
                    lifecycle_stage=facts.lifecycle_stage,
                    loyalty_type=facts.loyalty_type,
                )
            )
        recorded = self.repository.decisions.record_batch(
            campaign.campaign_id,
            claims,
            now=now,
            convert_until=now + campaign.conversion_window,
            caps=Caps(campaign.max_per_day, campaign.max_total, money_caps(campaign)),
            no_purchase=campaign.require_no_purchase,
            campaign_version=version_of(campaign),
        )
        for made in recorded.made:
            self._made(made, campaign.min_views)
        counts = Counter(r.decision.decision for r in recorded.made)
        counts.update(
            {
                "already_decided": len(recorded.already),
                "not_eligible": len(recorded.purchased),
                "budget_exhausted": len(recorded.missed),
            }
        )
        exhausted = None if recorded.exhausted is None else budget_reason(recorded.exhausted)
        return counts, exhausted

    def offer_for_page(self, user_id: str, *, decide: bool) -> Decision | None:
        """The offer to show beside a page's products.

        ``decide``: every active campaign evaluates the user now (recorded, as ``evaluate``),
        for the POST of the one-call flow; otherwise only decisions already recorded are read
        and nothing is written (a GET, which a prefetch or a crawler may send). In the order of
        the campaigns file, the first decision with a usable coupon wins, else the first
        decision is returned without a coupon (a used or expired one is not an offer). None
        when no campaign is active, or, without ``decide``, when none has decided yet.
        """
        now = self.clock()
        first: Decision | None = None
        for campaign in self.campaigns.values():
            if not campaign.is_active(now):
                continue
            decision = (
                self.evaluate(user_id, campaign.campaign_id)
                if decide
                else self._recorded(campaign, user_id)
            )
            if decision is None:
                continue
            if decision.coupon is not None and coupon_status(decision.coupon, now).status == (
                "active"
            ):
                return decision
            first = first or decision
        return None if first is None else dataclasses.replace(first, coupon=None)

    @staticmethod
    def _refusal(
        campaign: Campaign, user_id: str, views: int, kind: DecisionKind, reasons: tuple[str, ...]
    ) -> Decision:
        return Decision(
            campaign_id=campaign.campaign_id,
            user_id=user_id,
            decision=kind,
            reasons=reasons,
            views=views,
            min_views=campaign.min_views,
            campaign_version=version_of(campaign),
        )

    def _decide(self, campaign: Campaign, facts: UserFacts, now: datetime) -> Decision:
        eligibility = check_eligibility(campaign, facts, now)
        views = eligibility.views
        if not eligibility.eligible:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", eligibility.reasons
            )
        kind, why = self.targeting.side(campaign, facts)
        try:
            recorded = self.repository.decisions.record(
                campaign.campaign_id,
                facts.user_id,
                kind,
                views=views,
                now=now,
                convert_until=now + campaign.conversion_window,
                coupon=None if kind != "issued" else self._draft(campaign, facts, now),
                # both sides of the holdout face the caps, so they stay comparable
                caps=Caps(campaign.max_per_day, campaign.max_total, money_caps(campaign)),
                no_purchase=campaign.require_no_purchase,
                lifecycle_stage=facts.lifecycle_stage,
                loyalty_type=facts.loyalty_type,
                campaign_version=version_of(campaign),
            )
        except BudgetExhausted as exc:
            return self._refusal(
                campaign, facts.user_id, views, "budget_exhausted", (budget_reason(exc.args[0]),)
            )
        except PurchasedMeanwhile:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", ("already_purchased",)
            )
        if not recorded.created:
            return self._already(recorded.decision, recorded.coupon, campaign)
        made = self._made(recorded, campaign.min_views)
        return made if why is None else dataclasses.replace(made, reasons=(why,))

    def _made(self, recorded: Recorded, min_views: int) -> Decision:
        d = recorded.decision
        if recorded.coupon is not None:
            log.info(
                "coupon_issued",
                extra={
                    "campaign": d.campaign_id,
                    "user_id": d.user_id,
                    "code": redacted(recorded.coupon.code),
                    "attribution_id": d.attribution_id,
                },
            )
        return Decision(
            campaign_id=d.campaign_id,
            user_id=d.user_id,
            decision=final_kind(d.decision),
            views=d.views,
            min_views=min_views,
            attribution_id=d.attribution_id,
            decided_at=d.decided_at,
            coupon=recorded.coupon,
            campaign_version=d.campaign_version,
        )

    def _draft(
        self,
        campaign: Campaign,
        facts: UserFacts,
        now: datetime,
        viewed: list[str] | None = None,
    ) -> CouponDraft:
        """The coupon for ``facts``' user; ``viewed``: their products, when already read."""
        expires = now + campaign.coupon_ttl
        if campaign.expire_at_window_end and facts.started_at is not None:
            expires = min(expires, facts.started_at + campaign.window)
        return CouponDraft(
            code=new_code(),
            item_ids=self._restricted_items(campaign, facts, now, viewed),
            expires_at=expires,
            **coupon_terms(campaign),  # percent or fixed, currency, minimum (issue 12, item 3)
        )

    def _restricted_items(
        self, campaign: Campaign, facts: UserFacts, now: datetime, viewed: list[str] | None
    ) -> list[str] | None:
        if campaign.restrict_to_top_items <= 0 or facts.started_at is None:
            return None
        if viewed is None:
            viewed = self.repository.decisions.viewed_items(facts.user_id, facts.started_at, now)
        if self.rank_items is not None and viewed:
            try:
                viewed = self.rank_items(facts.user_id, viewed)
            except Exception:  # no model, or a model swap mid-call: most viewed first instead
                log.exception("coupon_item_ranking_failed")
        return viewed[: campaign.restrict_to_top_items] or None

    def _recorded(self, campaign: Campaign, user_id: str) -> Decision | None:
        """The decision already recorded for the user (None before one), read only."""
        existing = self.repository.decisions.recorded(campaign.campaign_id, user_id)
        if existing is None:
            return None
        return self._already(existing, self._coupon_of(existing), campaign)

    def _already(
        self, decision: DecisionRecord, coupon: CouponRecord | None, campaign: Campaign
    ) -> Decision:
        return Decision(
            campaign_id=decision.campaign_id,
            user_id=decision.user_id,
            decision="already_decided",
            views=decision.views,
            min_views=campaign.min_views,
            attribution_id=decision.attribution_id,
            decided_at=decision.decided_at,
            previous=decision.decision,
            coupon=coupon,
            campaign_version=decision.campaign_version,
        )

    def _coupon_of(self, decision: DecisionRecord) -> CouponRecord | None:
        if decision.decision != "issued":
            return None
        return self.repository.coupons.issued_with(decision.attribution_id)

    def _count(self, decision: Decision) -> Decision:
        if self.metrics is not None:
            self.metrics.offer_decisions.labels(decision.campaign_id, decision.decision).inc()
        return decision

    def _count_many(self, campaign_id: str, counts: Counter[str]) -> None:
        if self.metrics is not None:
            for kind, n in counts.items():
                self.metrics.offer_decisions.labels(campaign_id, kind).inc(n)
