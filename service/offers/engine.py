"""The offer engine: decide for one user, sweep a campaign, validate and redeem coupons, stats.

Plain Python over ``OfferRepository``; the clock is injected, so every rule that depends on
time is tested without sleeping. Decisions are final once recorded (``issued`` or ``holdout``);
``not_eligible`` is an answer, not a record, as a user with too few views now may qualify later.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from service.errors import (
    BudgetExhausted,
    CouponAlreadyRedeemed,
    CouponExpired,
    CouponNotFound,
    CouponNotYours,
    PurchasedMeanwhile,
    UnknownCampaign,
)
from service.offers.campaigns import Campaign
from service.offers.repository import (
    Caps,
    CouponDraft,
    CouponRecord,
    DecisionRecord,
    OfferRepository,
    Recorded,
)
from service.offers.rules import (
    UserFacts,
    check_eligibility,
    in_holdout,
    new_code,
    normalise_code,
    redacted,
)
from service.offers.stats import Interval, uplift, wilson

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)
DecisionKind = Literal["issued", "holdout", "not_eligible", "already_decided", "budget_exhausted"]
# (user_id, products the user viewed) -> the same products, the model's favourite first
RankItems = Callable[[str, Sequence[str]], list[str]]


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


@dataclass(frozen=True)
class SweepResult:
    campaign_id: str
    active: bool
    evaluated: int
    decisions: Counter[str]
    seconds: float


@dataclass(frozen=True)
class CouponStatus:
    coupon: CouponRecord
    status: Literal["active", "redeemed", "expired"]
    seconds_left: int


@dataclass(frozen=True)
class CampaignStats:
    campaign_id: str
    at: datetime
    eligible: int
    decisions: dict[str, int]
    coupons: dict[str, int]
    budget: dict[str, int | None]
    conversion: dict[str, Interval | None]
    converted: dict[str, int]
    open_windows: int
    uplift: Interval | None
    discount_cost: float
    discount_cost_estimated: float
    unpriced_orders: int = 0
    notes: list[str] = field(default_factory=list)


class OfferEngine:
    """Campaign decisions and coupons for one service process."""

    def __init__(
        self,
        campaigns: Mapping[str, Campaign],
        repository: OfferRepository,
        clock: Callable[[], datetime],
        *,
        rank_items: RankItems | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.campaigns = dict(campaigns)
        self.repository = repository
        self.clock = clock
        self.rank_items = rank_items
        self.metrics = metrics

    def campaign(self, campaign_id: str) -> Campaign:
        try:
            return self.campaigns[campaign_id]
        except KeyError:
            raise UnknownCampaign(campaign_id) from None

    # --- decisions ------------------------------------------------------------------------

    def evaluate(self, user_id: str, campaign_id: str) -> Decision:
        """Decide for one user now and record it; a user is decided once per campaign."""
        campaign = self.campaign(campaign_id)
        now = self.clock()
        existing, facts = self.repository.decision_and_facts(
            campaign_id, user_id, campaign.window, now
        )
        if facts is None:
            assert existing is not None  # a final decision
            return self._count(self._already(existing, self._coupon_of(existing), campaign))
        return self._count(self._decide(campaign, facts, now))

    def sweep(self, campaign_id: str) -> SweepResult:
        """Evaluate every user inside the campaign's window who has no final decision yet.

        Safe to run again and concurrently with itself and with single evaluations: every
        decision goes through the same exactly-once write. Once a cap is reached, the
        remaining eligible users are recorded as budget misses in one write.
        """
        campaign = self.campaign(campaign_id)
        started = time.perf_counter()
        now = self.clock()
        if not campaign.is_active(now):
            return SweepResult(campaign_id, False, 0, Counter(), 0.0)
        candidates = self.repository.candidates(campaign_id, campaign.window, now)
        counts: Counter[str] = Counter()
        missed: list[tuple[str, int]] = []
        exhausted: str | None = None
        for facts in candidates:
            moment = self.clock()  # a long sweep decides each user at their own moment
            if exhausted is None:
                decision = self._decide(campaign, facts, moment)
                if decision.decision == "budget_exhausted":
                    exhausted = decision.reasons[0]
            else:
                eligibility = check_eligibility(campaign, facts, moment)
                if eligibility.eligible:
                    missed.append((facts.user_id, eligibility.views))
                    decision = self._refusal(
                        campaign, facts.user_id, eligibility.views, "budget_exhausted", (exhausted,)
                    )
                else:
                    decision = self._refusal(
                        campaign,
                        facts.user_id,
                        eligibility.views,
                        "not_eligible",
                        eligibility.reasons,
                    )
            counts[self._count(decision).decision] += 1
        moment = self.clock()
        self.repository.record_misses(
            campaign_id, missed, moment, moment + campaign.conversion_window
        )
        seconds = time.perf_counter() - started
        log.info(
            "campaign_swept",
            extra={"campaign": campaign_id, "evaluated": len(candidates), **counts},
        )
        return SweepResult(campaign_id, True, len(candidates), counts, seconds)

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
        )

    def _decide(self, campaign: Campaign, facts: UserFacts, now: datetime) -> Decision:
        eligibility = check_eligibility(campaign, facts, now)
        views = eligibility.views
        if not eligibility.eligible:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", eligibility.reasons
            )
        held_out = in_holdout(campaign.campaign_id, facts.user_id, campaign.holdout_percent)
        try:
            recorded = self.repository.record(
                campaign.campaign_id,
                facts.user_id,
                "holdout" if held_out else "issued",
                views=views,
                now=now,
                convert_until=now + campaign.conversion_window,
                coupon=None if held_out else self._draft(campaign, facts, now),
                # both sides of the holdout face the caps, so they stay comparable
                caps=Caps(campaign.max_per_day, campaign.max_total),
                no_purchase=campaign.require_no_purchase,
            )
        except BudgetExhausted as exc:
            return self._refusal(
                campaign, facts.user_id, views, "budget_exhausted", (f"cap_{exc.args[0]}",)
            )
        except PurchasedMeanwhile:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", ("already_purchased",)
            )
        if not recorded.created:
            return self._already(recorded.decision, recorded.coupon, campaign)
        return self._made(recorded, campaign.min_views)

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
            decision="issued" if d.decision == "issued" else "holdout",
            views=d.views,
            min_views=min_views,
            attribution_id=d.attribution_id,
            decided_at=d.decided_at,
            coupon=recorded.coupon,
        )

    def _draft(self, campaign: Campaign, facts: UserFacts, now: datetime) -> CouponDraft:
        expires = now + campaign.coupon_ttl
        if campaign.expire_at_window_end and facts.started_at is not None:
            expires = min(expires, facts.started_at + campaign.window)
        return CouponDraft(
            code=new_code(),
            discount_percent=campaign.discount_percent,
            item_ids=self._restricted_items(campaign, facts, now),
            expires_at=expires,
        )

    def _restricted_items(
        self, campaign: Campaign, facts: UserFacts, now: datetime
    ) -> list[str] | None:
        if campaign.restrict_to_top_items <= 0 or facts.started_at is None:
            return None
        viewed = self.repository.viewed_items(facts.user_id, facts.started_at, now)
        if self.rank_items is not None and viewed:
            try:
                viewed = self.rank_items(facts.user_id, viewed)
            except Exception:  # no model, or a model swap mid-call: most viewed first instead
                log.exception("coupon_item_ranking_failed")
        return viewed[: campaign.restrict_to_top_items] or None

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
        )

    def _coupon_of(self, decision: DecisionRecord) -> CouponRecord | None:
        if decision.decision != "issued":
            return None
        return self.repository.coupon_for(decision.attribution_id)

    def _count(self, decision: Decision) -> Decision:
        if self.metrics is not None:
            self.metrics.offer_decisions.labels(decision.campaign_id, decision.decision).inc()
        return decision

    def offer_for_page(self, user_id: str) -> Decision | None:
        """The offer to show beside a page's products, deciding now where nothing is decided.

        Every active campaign evaluates the user, in the order of the campaigns file; the
        first decision with a usable coupon wins, else the first decision is returned without
        a coupon (a used or expired one is not an offer). None when no campaign is active.
        """
        now = self.clock()
        first: Decision | None = None
        for campaign in self.campaigns.values():
            if not campaign.is_active(now):
                continue
            decision = self.evaluate(user_id, campaign.campaign_id)
            if decision.coupon is not None and self._status(decision.coupon, now).status == (
                "active"
            ):
                return decision
            first = first or decision
        return None if first is None else dataclasses.replace(first, coupon=None)

    # --- coupons --------------------------------------------------------------------------

    def active_offers(self, user_id: str) -> list[CouponStatus]:
        now = self.clock()
        return [self._status(c, now) for c in self.repository.active_coupons(user_id, now)]

    def validate(self, text: str, user_id: str | None = None) -> CouponStatus:
        """The coupon behind ``text`` and whether it can be used now; redeems nothing."""
        coupon = self._find(text)
        if user_id is not None and coupon.user_id != user_id:
            raise CouponNotYours(redacted(coupon.code))
        return self._status(coupon, self.clock())

    def redeem(
        self, text: str, user_id: str, order_id: str, order_amount: float | None = None
    ) -> tuple[CouponStatus, bool]:
        """Use the coupon for ``order_id``, exactly once; returns (status, replayed).

        A retry with the same order id answers like the first call (``replayed`` True).
        """
        code = normalise_code(text)
        if code is None:
            raise CouponNotFound("not a coupon code")
        now = self.clock()
        used = self.repository.redeem(code, user_id, order_id, order_amount, now)
        coupon = None if used is not None else self.repository.coupon(code)
        if coupon is not None and coupon.redeemed_at is None and coupon.expires_at > now:
            # usable after all: another order's use was released between the two reads
            used = self.repository.redeem(code, user_id, order_id, order_amount, now)
            coupon = None if used is not None else self.repository.coupon(code)
        if used is not None:
            if self.metrics is not None:
                self.metrics.coupons_redeemed.labels(used.campaign_id).inc()
            log.info(
                "coupon_redeemed",
                extra={"campaign": used.campaign_id, "code": redacted(code), "order_id": order_id},
            )
            return self._status(used, now), False
        if coupon is None:
            raise CouponNotFound(redacted(code))
        if coupon.user_id != user_id:
            raise CouponNotYours(redacted(code))
        if coupon.redeemed_at is not None:
            if coupon.order_id == order_id:
                return self._status(coupon, now), True
            raise CouponAlreadyRedeemed(redacted(code))
        raise CouponExpired(redacted(code))

    def release(self, text: str, user_id: str, order_id: str) -> CouponStatus:
        """Undo a redemption (the order was cancelled) while the coupon has time left."""
        coupon = self._find(text)
        if coupon.user_id != user_id:
            raise CouponNotYours(redacted(coupon.code))
        now = self.clock()
        released = self.repository.release(coupon.code, user_id, order_id, now)
        if released is not None:
            return self._status(released, now)
        if coupon.expires_at <= now:
            raise CouponExpired(redacted(coupon.code))
        if coupon.redeemed_at is None:
            return self._status(coupon, now)  # nothing to undo: idempotent
        raise CouponAlreadyRedeemed(redacted(coupon.code))  # used by another order

    def _find(self, text: str) -> CouponRecord:
        code = normalise_code(text)
        coupon = self.repository.coupon(code) if code is not None else None
        if coupon is None:
            raise CouponNotFound("no such coupon")
        return coupon

    def status_of(self, coupon: CouponRecord) -> CouponStatus:
        """Whether ``coupon`` can be used now, and for how long."""
        return self._status(coupon, self.clock())

    @staticmethod
    def _status(coupon: CouponRecord, now: datetime) -> CouponStatus:
        if coupon.redeemed_at is not None:
            status: Literal["active", "redeemed", "expired"] = "redeemed"
        elif coupon.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        left = max(0, int((coupon.expires_at - now).total_seconds()))
        return CouponStatus(coupon, status, left if status == "active" else 0)

    # --- results --------------------------------------------------------------------------

    def stats(self, campaign_id: str) -> CampaignStats:
        """Reach, coupons, budget, conversion of treated and holdout users, and the uplift."""
        campaign = self.campaign(campaign_id)
        now = self.clock()
        counts = self.repository.counts(campaign_id, now)
        issued = counts.decisions.get("issued", 0)
        holdout = counts.decisions.get("holdout", 0)
        converted_t = min(issued, counts.converted.get("issued", 0))
        converted_h = min(holdout, counts.converted.get("holdout", 0))
        estimated, unpriced = self._estimated_discount(counts.redeemed_unpriced)
        used = self.repository.budget_used(campaign_id, now)
        notes = []
        open_windows = counts.open_windows.get("issued", 0) + counts.open_windows.get("holdout", 0)
        if open_windows:
            notes.append(
                f"{open_windows} decided users are still inside their conversion window; "
                "their conversions so far are counted"
            )
        return CampaignStats(
            campaign_id=campaign_id,
            at=now,
            eligible=sum(counts.decisions.values()),
            decisions={k: counts.decisions.get(k, 0) for k in DECISION_RECORDS},
            coupons={
                "issued": issued,
                "active": counts.coupons_active,
                "redeemed": counts.coupons_redeemed,
                "expired": counts.coupons_expired,
            },
            budget={
                "max_total": campaign.max_total,
                "used_total": used["total"],
                "left_total": None
                if campaign.max_total is None
                else max(0, campaign.max_total - used["total"]),
                "max_per_day": campaign.max_per_day,
                "used_today": used["today"],
                "left_today": None
                if campaign.max_per_day is None
                else max(0, campaign.max_per_day - used["today"]),
            },
            conversion={
                "treated": wilson(converted_t, issued),
                "holdout": wilson(converted_h, holdout),
            },
            converted={"treated": converted_t, "holdout": converted_h},
            open_windows=open_windows,
            uplift=uplift(converted_t, issued, converted_h, holdout),
            discount_cost=round(counts.discount_known + estimated, 2),
            discount_cost_estimated=round(estimated, 2),
            unpriced_orders=unpriced,
            notes=notes,
        )

    def _estimated_discount(self, redeemed: Sequence[CouponRecord]) -> tuple[float, int]:
        """Discount on orders redeemed without an amount, from catalogue prices of their lines."""
        total, unpriced = 0.0, 0
        for coupon in redeemed:
            if coupon.order_id is None:
                continue
            lines = self.repository.order_lines(coupon.user_id, coupon.order_id)
            allowed = set(coupon.item_ids) if coupon.item_ids else None
            prices = [p for item, p in lines if allowed is None or item in allowed]
            if not prices or any(p is None for p in prices):
                unpriced += 1
            total += sum(p for p in prices if p is not None) * coupon.discount_percent / 100.0
        return total, unpriced


DECISION_RECORDS = ("issued", "holdout", "budget_exhausted")
