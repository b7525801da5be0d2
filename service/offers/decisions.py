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
from typing import TYPE_CHECKING, Protocol

from service.activity.records import Activity
from service.errors import BudgetExhausted, ErasedMeanwhile, PurchasedMeanwhile
from service.offers.campaigns import Campaign, find_campaign
from service.offers.coupons import coupon_status
from service.offers.discounts import budget_reason, coupon_terms, money_caps
from service.offers.kinds import DecisionKind
from service.offers.occasions import ONCE
from service.offers.repository import OfferRepository
from service.offers.repository.coupons import CouponRecord
from service.offers.repository.decisions import (
    Caps,
    Claim,
    CouponDraft,
    DecisionRecord,
    Recorded,
)
from service.offers.rules import Eligibility, UserFacts, check_eligibility, new_code, redacted
from service.offers.store import version_of
from service.offers.targeting import UpliftTargeting, final_kind

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)


# (user_id, products the user viewed) -> the same products, the model's favourite first
class RankItems(Protocol):
    """``item_ids`` by the user's model; ``recent``: their session, already read."""

    def __call__(
        self, user_id: str, item_ids: Sequence[str], recent: Sequence[Activity] | None = None
    ) -> list[str]: ...


# (user_id, n) -> the n products of the whole catalogue the model ranks highest for the user
class TopItems(Protocol):
    """The ``n`` products ranked highest for a user; ``recent``: their session, already read."""

    def __call__(
        self, user_id: str, n: int, recent: Sequence[Activity] | None = None
    ) -> list[str]: ...


# lifecycle kinds whose offer a purchase made meanwhile takes back, a purchase after the
# facts' last one (a win-back's: an order after the last one seen; a cart's: the cart bought);
# the new-user kind's is any purchase (require_no_purchase)
_PURCHASE_GUARDED = frozenset(("win_back", "abandoned_cart"))
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
    occurrence: str = ONCE  # a recurring campaign's occurrence (service.offers.occasions)


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
        top_items: TopItems | None = None,
    ) -> None:
        self.campaigns = dict(campaigns)
        self.repository = repository
        self.clock = clock
        self.rank_items = rank_items
        self.metrics = metrics
        # the side of each decision: the holdout draw, and uplift targeting (issue 12, item 4)
        self.targeting = targeting or UpliftTargeting(repository.reports, clock)
        self.top_items = top_items

    def campaign(self, campaign_id: str) -> Campaign:
        return find_campaign(self.campaigns, campaign_id)

    def evaluate(
        self, user_id: str, campaign_id: str, recent: Sequence[Activity] | None = None
    ) -> Decision:
        """Decide for one user now and record it; a user is decided once per campaign (once
        per occurrence in a recurring one). ``recent``: the user's session when the caller
        read it already (an evaluation on a view), so the coupon's ranking reads it no more."""
        campaign = self.campaign(campaign_id)
        now = self.clock()
        if campaign.recurring:
            return self._count(self._evaluate_occasion(campaign, user_id, now, recent))
        existing, facts = self.repository.decisions.decision_and_facts(
            campaign_id, user_id, campaign.window, now, attributes=bool(campaign.require_attributes)
        )
        if facts is None:
            assert existing is not None  # a final decision
            return self._count(self._already(existing, self._coupon_of(existing), campaign))
        return self._count(self._decide(campaign, facts, now, recent))

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
        written so far kept. Each batch applies the campaign as this worker holds it then: a
        change made through the API meanwhile applies from the next batch, and a pause or an
        archive stops the sweep there.
        """
        campaign = self.campaign(campaign_id)
        started = time.perf_counter()
        now = self.clock()
        if not campaign.is_active(now):
            return SweepResult(campaign_id, False, 0, Counter(), 0.0)
        if campaign.recurring:
            return self._sweep_occasions(campaign, now, started, progress)
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
            current = self._still_on(campaign_id, moment)
            if current is None:
                break
            campaign = current  # a change made meanwhile applies from the next batch
            eligible: list[tuple[UserFacts, Eligibility]] = []
            for facts in batch:
                eligibility = check_eligibility(campaign, facts, moment)
                if eligibility.eligible:
                    eligible.append((facts, eligibility))
            made = Counter({"not_eligible": len(batch) - len(eligible)})
            if exhausted is None:
                outcome, exhausted = self._decide_batch(campaign, eligible, moment)
                made.update(outcome)
            elif eligible:
                self.repository.decisions.record_misses(
                    campaign_id,
                    [(facts.user_id, e.views) for facts, e in eligible],
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

    def _sweep_occasions(
        self,
        campaign: Campaign,
        now: datetime,
        started: float,
        progress: SweepProgress | None,
    ) -> SweepResult:
        """``sweep`` of a recurring campaign: its kind's candidates with their facts (an SQL
        pre-filter, one read), the rule batch by batch, and the batched write once per user
        per occurrence.

        A user already decided for the occurrence the rule finds is counted
        ``already_decided`` and nothing is written for them (the unique index would refuse
        it anyway; skipping them first spares the coupon drafts).
        """
        cid = campaign.campaign_id
        decisions = self.repository.decisions
        attributes = _reads_attributes(campaign)
        candidates = decisions.lifecycle_candidates(campaign, now, attributes=attributes)
        counts: Counter[str] = Counter()
        if progress is not None:
            progress(0, len(candidates), counts)
        exhausted: str | None = None
        for first in range(0, len(candidates), SWEEP_BATCH):
            batch = candidates[first : first + SWEEP_BATCH]
            moment = self.clock()  # the facts are the sweep's, the rule applies at this moment
            current = self._still_on(cid, moment)
            if current is None:
                break
            campaign = current  # a change made meanwhile applies from the next batch
            eligible: list[tuple[UserFacts, Eligibility]] = []
            for facts in batch:
                eligibility = check_eligibility(campaign, facts, moment)
                if eligibility.eligible:
                    eligible.append((facts, eligibility))
            done = decisions.decided(cid, [(f.user_id, e.occurrence) for f, e in eligible])
            fresh = [(f, e) for f, e in eligible if (f.user_id, e.occurrence) not in done]
            made = Counter(
                {
                    "not_eligible": len(batch) - len(eligible),
                    "already_decided": len(eligible) - len(fresh),
                }
            )
            if exhausted is None:
                outcome, exhausted = self._decide_batch(campaign, fresh, moment)
                made.update(outcome)
            elif fresh:
                decisions.record_misses(
                    cid,
                    [(f.user_id, e.views) for f, e in fresh],
                    moment,
                    moment + campaign.conversion_window,
                    version_of(campaign),
                    occurrences={f.user_id: e.occurrence for f, e in fresh},
                )
                made["budget_exhausted"] += len(fresh)
            made = +made
            self._count_many(cid, made)
            counts.update(made)
            if progress is not None:
                progress(first + len(batch), len(candidates), counts)
        seconds = time.perf_counter() - started
        log.info("campaign_swept", extra={"campaign": cid, "evaluated": len(candidates), **counts})
        return SweepResult(cid, True, len(candidates), counts, seconds)

    def _still_on(self, campaign_id: str, now: datetime) -> Campaign | None:
        """The campaign as this worker holds it now, None when it was paused, archived or
        ended since the sweep began: a sweep stops at its next batch (what was written stays).
        """
        current = self.campaigns.get(campaign_id)
        if current is None or not current.is_active(now):
            log.info("campaign_sweep_stopped", extra={"campaign": campaign_id})
            return None
        return current

    def _decide_batch(
        self, campaign: Campaign, eligible: list[tuple[UserFacts, Eligibility]], now: datetime
    ) -> tuple[Counter[str], str | None]:
        """Record the decisions of eligible users in one write: their counts by kind, and the
        reason (``cap_<period>``) when a cap was reached."""
        if not eligible:
            return Counter(), None
        viewed: dict[str, list[str]] = {}
        if campaign.restrict_to_top_items > 0 and campaign.kind == "new_user_high_intent":
            viewed = self.repository.decisions.viewed_items_many(
                [facts.user_id for facts, _ in eligible], now
            )
        no_purchase, _ = _purchase_guard(campaign, None)
        claims = []
        for facts, eligibility in eligible:
            kind, _ = self.targeting.side(campaign, facts)
            claims.append(
                Claim(
                    facts.user_id,
                    kind,
                    eligibility.views,
                    None
                    if kind != "issued"
                    else self._draft(campaign, facts, now, viewed.get(facts.user_id)),
                    lifecycle_stage=facts.lifecycle_stage,
                    loyalty_type=facts.loyalty_type,
                    occurrence=eligibility.occurrence,
                    purchase_after=_purchase_guard(campaign, facts)[1],
                )
            )
        recorded = self.repository.decisions.record_batch(
            campaign.campaign_id,
            claims,
            now=now,
            convert_until=now + campaign.conversion_window,
            caps=Caps(campaign.max_per_day, campaign.max_total, money_caps(campaign)),
            no_purchase=no_purchase,
            campaign_version=version_of(campaign),
        )
        for made in recorded.made:
            self._made(made, _min_views(campaign))
        counts = Counter(r.decision.decision for r in recorded.made)
        counts.update(
            {
                "already_decided": len(recorded.already),
                "not_eligible": len(recorded.purchased) + len(recorded.gone),
                "budget_exhausted": len(recorded.missed),
            }
        )
        exhausted = None if recorded.exhausted is None else budget_reason(recorded.exhausted)
        return counts, exhausted

    def offer_for_page(self, user_id: str, *, decide: bool) -> Decision | None:
        """The offer to show beside a page's products.

        ``decide``: every active campaign evaluates the user now (recorded, as ``evaluate``),
        for the POST of the one-call flow; otherwise only decisions already recorded are read
        and nothing is written (a GET, which a prefetch or a crawler may send; a recurring
        campaign shows the decision of the occurrence the user qualifies for now, if any, not
        an earlier occurrence's). In the order of
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
                else self._recorded(campaign, user_id, now)
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
            min_views=_min_views(campaign),
            campaign_version=version_of(campaign),
        )

    def _evaluate_occasion(
        self,
        campaign: Campaign,
        user_id: str,
        now: datetime,
        recent: Sequence[Activity] | None = None,
    ) -> Decision:
        """``evaluate`` of a recurring campaign: the facts first, as the occurrence they give
        says which decision to look for; a user decided for it gets that decision back."""
        decisions = self.repository.decisions
        facts = decisions.lifecycle_facts(
            campaign, user_id, now, attributes=_reads_attributes(campaign)
        )
        eligibility = check_eligibility(campaign, facts, now)
        if eligibility.eligible:
            existing = decisions.recorded(campaign.campaign_id, user_id, eligibility.occurrence)
            if existing is not None and existing.decision != "budget_exhausted":
                return self._already(existing, self._coupon_of(existing), campaign)
            return self._decide(campaign, facts, now, recent)
        # not (or no longer) qualifying: a coupon of an earlier occurrence still usable stays
        # the user's offer (a customer back at their cart, a birthday coupon after the day)
        live = self._live(campaign, user_id, now)
        return live if live is not None else self._decide(campaign, facts, now, recent)

    def _live(self, campaign: Campaign, user_id: str, now: datetime) -> Decision | None:
        """The user's latest decision in ``campaign`` while its coupon can still be used."""
        latest = self.repository.decisions.latest(campaign.campaign_id, user_id)
        if latest is None or latest.decision != "issued":
            return None
        coupon = self._coupon_of(latest)
        if coupon is None or coupon_status(coupon, now).status != "active":
            return None
        return self._already(latest, coupon, campaign)

    def _decide(
        self,
        campaign: Campaign,
        facts: UserFacts,
        now: datetime,
        recent: Sequence[Activity] | None = None,
    ) -> Decision:
        eligibility = check_eligibility(campaign, facts, now)
        views = eligibility.views
        if not eligibility.eligible:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", eligibility.reasons
            )
        kind, why = self.targeting.side(campaign, facts)
        no_purchase, purchase_after = _purchase_guard(campaign, facts)
        try:
            recorded = self.repository.decisions.record(
                campaign.campaign_id,
                facts.user_id,
                kind,
                views=views,
                now=now,
                convert_until=now + campaign.conversion_window,
                coupon=None
                if kind != "issued"
                else self._draft(campaign, facts, now, None, recent),
                # both sides of the holdout face the caps, so they stay comparable
                caps=Caps(campaign.max_per_day, campaign.max_total, money_caps(campaign)),
                no_purchase=no_purchase,
                lifecycle_stage=facts.lifecycle_stage,
                loyalty_type=facts.loyalty_type,
                campaign_version=version_of(campaign),
                occurrence=eligibility.occurrence,
                purchase_after=purchase_after,
            )
        except BudgetExhausted as exc:
            return self._refusal(
                campaign, facts.user_id, views, "budget_exhausted", (budget_reason(exc.args[0]),)
            )
        except ErasedMeanwhile:
            return self._refusal(campaign, facts.user_id, views, "not_eligible", ("unknown_user",))
        except PurchasedMeanwhile:
            return self._refusal(
                campaign, facts.user_id, views, "not_eligible", ("already_purchased",)
            )
        if not recorded.created:
            return self._already(recorded.decision, recorded.coupon, campaign)
        made = self._made(recorded, _min_views(campaign))
        return made if why is None else dataclasses.replace(made, reasons=(why,))

    def _made(self, recorded: Recorded, min_views: int | None) -> Decision:
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
            occurrence=d.occurrence,
        )

    def _draft(
        self,
        campaign: Campaign,
        facts: UserFacts,
        now: datetime,
        viewed: list[str] | None = None,
        recent: Sequence[Activity] | None = None,
    ) -> CouponDraft:
        """The coupon for ``facts``' user; ``viewed``: their products, when already read."""
        expires = now + campaign.coupon_ttl
        if campaign.expire_at_window_end and facts.started_at is not None:
            expires = min(expires, facts.started_at + campaign.window)
        return CouponDraft(
            code=new_code(),
            item_ids=self._restricted_items(campaign, facts, now, viewed, recent),
            expires_at=expires,
            **coupon_terms(campaign),  # percent or fixed, currency, minimum (issue 12, item 3)
        )

    def _restricted_items(
        self,
        campaign: Campaign,
        facts: UserFacts,
        now: datetime,
        viewed: list[str] | None,
        recent: Sequence[Activity] | None = None,
    ) -> list[str] | None:
        """The coupon's products (None: store-wide), as ``restrict_to_top_items`` says per kind."""
        top = campaign.restrict_to_top_items
        if campaign.kind == "abandoned_cart":  # always the cart; N > 0 keeps its top N
            cart = self._ranked(facts.user_id, list(facts.cart_items), recent)
            return (cart[:top] if top > 0 else cart) or None
        if top > 0 and campaign.kind != "new_user_high_intent":  # the whole catalogue
            if self.top_items is None:
                return None
            try:
                return self.top_items(facts.user_id, top, recent)[:top] or None
            except Exception:  # no model, or a model swap mid-call: store-wide, said in the log
                log.exception("coupon_item_ranking_failed")
                return None
        if top <= 0 or facts.started_at is None:
            return None
        if viewed is None:
            viewed = self.repository.decisions.viewed_items(facts.user_id, facts.started_at, now)
        return self._ranked(facts.user_id, viewed, recent)[: campaign.restrict_to_top_items] or None

    def _ranked(
        self, user_id: str, item_ids: list[str], recent: Sequence[Activity] | None = None
    ) -> list[str]:
        """``item_ids``, the model's favourite first (as given when it cannot rank them)."""
        if self.rank_items is not None and item_ids:
            try:
                return self.rank_items(user_id, item_ids, recent)
            except Exception:  # no model, or a model swap mid-call: most viewed first instead
                log.exception("coupon_item_ranking_failed")
        return item_ids

    def _recorded(self, campaign: Campaign, user_id: str, now: datetime) -> Decision | None:
        """The decision already recorded for the user (None before one), read only; in a
        recurring campaign, the decision of the occurrence the user qualifies for now, else
        the latest one while its coupon is usable."""
        decisions = self.repository.decisions
        occurrence = ONCE
        if campaign.recurring:
            facts = decisions.lifecycle_facts(
                campaign, user_id, now, attributes=_reads_attributes(campaign)
            )
            eligibility = check_eligibility(campaign, facts, now)
            if not eligibility.eligible:  # an earlier occurrence's coupon may still be live
                return self._live(campaign, user_id, now)
            occurrence = eligibility.occurrence
        existing = decisions.recorded(campaign.campaign_id, user_id, occurrence)
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
            min_views=_min_views(campaign),
            attribution_id=decision.attribution_id,
            decided_at=decision.decided_at,
            previous=decision.decision,
            coupon=coupon,
            campaign_version=decision.campaign_version,
            occurrence=decision.occurrence,
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


def _min_views(campaign: Campaign) -> int | None:
    """The views a decision is compared with: the new-user kind's alone counts them."""
    return campaign.min_views if campaign.kind == "new_user_high_intent" else None


def _reads_attributes(campaign: Campaign) -> bool:
    """A lifecycle campaign reads the user's attributes: a birthday, or required ones."""
    return campaign.kind == "birthday" or bool(campaign.require_attributes)


def _purchase_guard(campaign: Campaign, facts: UserFacts | None) -> tuple[bool, datetime | None]:
    """Whether a purchase made meanwhile takes the offer back, and after which moment.

    The new-user kind: any purchase (``require_no_purchase``); win-back and abandoned cart:
    a purchase after the last one the facts saw; the others: none (a thank-you, a date).
    """
    if campaign.kind == "new_user_high_intent":
        return campaign.require_no_purchase, None
    if campaign.kind in _PURCHASE_GUARDED:
        return True, None if facts is None else facts.last_order_at
    return False, None
