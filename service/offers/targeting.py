"""Uplift targeting (issue 12, item 4): treat only the segments where the coupon measurably works.

A campaign with ``uplift_targeting`` measures its uplift per segment of ``uplift_by`` (the
loyalty type by default) from its own decisions: treated (``issued``) against ``holdout``
users of the segment, conversions counted as the stats count them, the 95 % interval of
``stats.uplift`` (Newcombe). Each segment is, at any moment:

- ``learning``: fewer than ``uplift_min_users`` treated or held-out users decided yet; treated
  as usual, so the campaign learns;
- ``uplift_above_zero``: the interval's lower bound is above zero; treated as usual;
- ``no_measured_uplift``: the lower bound is at or below zero. Its users are still drawn for the
  holdout as before, and of the others a deterministic ``uplift_exploration_percent`` is still
  treated (``issued``); the rest are recorded ``not_targeted`` (final: no coupon, no second
  decision). So both sides of the measurement keep growing: a segment whose uplift shows up
  later (a season, a better discount) comes back on its own, and one that never had any costs
  only the exploration share.

The verdicts are taken from each campaign's per-segment counts, read in one grouped query and
kept for ``uplift_refresh_seconds`` (by the injected clock), not recomputed per decision. Once
they are older, the next decision starts one read in a background thread and is decided on the
previous verdicts meanwhile, so no request waits for the read but the very first of each
campaign in a process (its cost: docs/benchmarks.md, "Uplift targeting"); a read that
fails is logged and the previous verdicts stay until one succeeds. Each replica keeps its own
copy, so replicas may disagree for a period; every decision is recorded with its kind and
segment, so the measurement stays exact whatever they decided.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.offers.audience import AXES, AXIS_SEGMENTS, Axis, closed_segment, segment_on
from service.offers.campaigns import Campaign
from service.offers.kinds import FINAL, FinalKind
from service.offers.repository.reports import ReportRepository
from service.offers.rules import UserFacts, in_holdout
from service.offers.stats import Interval, uplift

log = logging.getLogger(__name__)
FINAL_KINDS: dict[str, FinalKind] = {k: k for k in FINAL}


@dataclass(frozen=True)
class SegmentResult:
    """A campaign's decided users of one segment, by side, and their conversions."""

    segment: str
    treated: int = 0
    treated_converted: int = 0
    holdout: int = 0
    holdout_converted: int = 0
    not_targeted: int = 0
    not_targeted_converted: int = 0

    @property
    def decided(self) -> int:
        return self.treated + self.holdout + self.not_targeted

    @property
    def uplift(self) -> Interval | None:
        """Treated minus holdout conversion, with its 95 % interval; None if a side is empty."""
        return uplift(self.treated_converted, self.treated, self.holdout_converted, self.holdout)


def verdict(campaign: Campaign, result: SegmentResult) -> tuple[bool, str]:
    """Whether uplift targeting treats ``result``'s segment now, and why (module docstring)."""
    least = campaign.uplift_min_users
    if result.treated < least or result.holdout < least:
        return True, "learning"
    measured = result.uplift
    if measured is not None and measured.low > 0:
        return True, "uplift_above_zero"
    return False, "no_measured_uplift"


def final_kind(recorded: str) -> FinalKind:
    """A final decision as stored, typed (anything else, as before: ``holdout``)."""
    return FINAL_KINDS.get(recorded, "holdout")


def explored(campaign_id: str, user_id: str, percent: float) -> bool:
    """Deterministic exploration draw, independent of the holdout's (its own salt)."""
    return in_holdout(f"{campaign_id}\x1fexplore", user_id, percent)


def results_from(
    counts: Mapping[tuple[str, str], tuple[int, int]], axis: Axis
) -> dict[str, SegmentResult]:
    """Every segment of ``axis`` from (segment, decision) -> (users, converted)."""

    def side(segment: str, kind: str) -> tuple[int, int]:
        users, converted = counts.get((segment, kind), (0, 0))
        return users, min(users, converted)

    out = {}
    for segment in AXIS_SEGMENTS[axis]:
        t, h, n = side(segment, "issued"), side(segment, "holdout"), side(segment, "not_targeted")
        out[segment] = SegmentResult(segment, t[0], t[1], h[0], h[1], n[0], n[1])
    return out


@dataclass(frozen=True)
class SegmentRow:
    """One segment in a campaign's stats: its results and whether it is targeted, and why."""

    axis: Axis
    result: SegmentResult
    targeted: bool
    reason: str  # excluded, outside_audience, not_measured, learning, uplift_above_zero, ...


def segment_rows(
    campaign: Campaign, counts: Mapping[Axis, Mapping[tuple[str, str], tuple[int, int]]]
) -> list[SegmentRow]:
    """The stats' per-segment rows of both axes, with the targeting verdict of each now.

    ``not_measured``: uplift targeting is off, or measures the other axis; the segment is
    treated as usual.
    """
    rows = []
    for axis, by_segment in counts.items():
        for segment, result in results_from(by_segment, axis).items():
            closed = closed_segment(campaign, axis, segment)
            if closed is not None:
                targeted, reason = False, closed
            elif campaign.uplift_targeting and axis == campaign.uplift_by:
                targeted, reason = verdict(campaign, result)
            else:
                targeted, reason = True, "not_measured"
            rows.append(SegmentRow(axis, result, targeted, reason))
    return rows


class UpliftTargeting:
    """The side of the next decision: holdout, treated, or not targeted; verdicts cached.

    ``background``: stale verdicts are re-read in a thread while the previous ones serve (the
    service); False reads them in the calling thread (deterministic, for tests and tools).
    """

    def __init__(
        self,
        reports: ReportRepository,
        clock: Callable[[], datetime],
        *,
        background: bool = True,
    ) -> None:
        self.reports = reports
        self.clock = clock
        self.background = background
        # campaign -> (read at, axis -> segment -> results): both axes come from one read
        self._cache: dict[str, tuple[datetime, dict[Axis, dict[str, SegmentResult]]]] = {}
        self._reading = threading.Lock()  # one read at a time, not one per waiting request
        self._threads: dict[str, threading.Thread] = {}
        self._starting = threading.Lock()  # guards _threads

    def side(self, campaign: Campaign, facts: UserFacts) -> tuple[FinalKind, str | None]:
        """``holdout`` (the campaign's draw, in every segment), ``issued``, or
        ``not_targeted``; with the reason ``no_measured_uplift:<segment>`` for the last."""
        if in_holdout(campaign.campaign_id, facts.user_id, campaign.holdout_percent):
            return "holdout", None
        if not campaign.uplift_targeting:
            return "issued", None
        segment = segment_on(campaign.uplift_by, facts.lifecycle_stage, facts.loyalty_type)
        result = self.results(campaign).get(segment, SegmentResult(segment))
        targeted, _ = verdict(campaign, result)
        percent = campaign.uplift_exploration_percent
        if targeted or explored(campaign.campaign_id, facts.user_id, percent):
            return "issued", None
        return "not_targeted", f"no_measured_uplift:{segment}"

    def results(self, campaign: Campaign) -> dict[str, SegmentResult]:
        """The campaign's per-segment results: read at most ``uplift_refresh_seconds`` ago,
        or, while a background read of newer ones runs, the previous ones."""
        key, axis = campaign.campaign_id, campaign.uplift_by
        entry = self._cache.get(key)
        if entry is not None and self._fresh(campaign, entry[0]):
            return entry[1][axis]
        if entry is not None and self.background:
            self._read_later(campaign)
            return entry[1][axis]
        with self._reading:
            entry = self._cache.get(key)  # another thread may have read it meanwhile
            if entry is not None and self._fresh(campaign, entry[0]):
                return entry[1][axis]
            return self._read(campaign)[axis]

    def wait(self) -> None:
        """Until the background reads started so far are done (tests, shutdown)."""
        for thread in list(self._threads.values()):
            thread.join()

    def _fresh(self, campaign: Campaign, read_at: datetime) -> bool:
        now = self.clock()
        return read_at <= now < read_at + timedelta(seconds=campaign.uplift_refresh_seconds)

    def _read(self, campaign: Campaign) -> dict[Axis, dict[str, SegmentResult]]:
        now = self.clock()
        counts = self.reports.segment_counts(campaign.campaign_id, now, long=True)
        results = {axis: results_from(counts[axis], axis) for axis in AXES}
        self._cache[campaign.campaign_id] = (now, results)
        return results

    def _read_later(self, campaign: Campaign) -> None:
        key = campaign.campaign_id
        with self._starting:
            running = self._threads.get(key)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(
                target=self._read_quietly, args=(campaign,), name="uplift-verdicts", daemon=True
            )
            self._threads[key] = thread
            thread.start()

    def _read_quietly(self, campaign: Campaign) -> None:
        try:
            self._read(campaign)
        except Exception:  # the previous verdicts stay; the next decision tries again
            log.exception("uplift_verdicts_read_failed", extra={"campaign": campaign.campaign_id})
