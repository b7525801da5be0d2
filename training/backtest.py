"""Backtest a campaign: replay a historical behaviour-event log through its offer rule.

The log and the users file are read and normalised by :mod:`training.event_log`.

The rule is the online one (``service.offers.rules``): the hesitation window is measured from
sign-up (a ``sign_up`` event, else the users file's ``signed_up_at``, else the user's first
event); views inside ``[start, start + window]`` are counted as the campaign says (every view
event, or distinct products); the user is evaluated at each view, as the service does with
``evaluate_on_view``, so the qualification moment is the first view at which the count has
reached ``min_views`` while the campaign is active; a purchase at or before that moment
disqualifies when the campaign requires none. The counting is vectorised; each candidate's
verdict then comes from :func:`check_eligibility` itself, and the holdout from
:func:`in_holdout`, so the two paths cannot drift apart.

Coupons are handed out in order of qualification, as the service decides: holdout users get
none and use no budget, but a user of either side who qualifies while a cap is full is turned
away (the service records a budget miss for both sides, so they stay comparable);
``max_per_day`` applies per UTC day and ``max_total`` over the whole log. A capped user is not
evaluated again later (the online service might, on a later view inside the window).

When the log has purchases, the report also says how many qualifying users bought within the
campaign's conversion window after qualifying without any coupon ("bought anyway", the
baseline a coupon has to beat), and, for comparison, how many of the new users who did not
qualify bought within ``window + conversion window`` of their start.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.errors import DataError
from service.offers.campaigns import Campaign
from service.offers.rules import UserFacts, check_eligibility, in_holdout
from service.tables import EVENT_TYPES
from training.event_log import prepare_events, prepare_users

logger = logging.getLogger(__name__)

START_SOURCES: tuple[str, ...] = ("sign_up_event", "users_file", "first_event")
# Why a user in the log does not qualify; from "not_new" on, check_eligibility's reasons.
NOT_QUALIFYING_REASONS: tuple[str, ...] = (
    "too_few_views",
    "campaign_inactive",
    "not_new",
    "already_purchased",
    "account_age_unknown",
    "account_too_new",
)


@dataclass(frozen=True)
class BoughtAnyway:
    """Qualifying users who bought within the conversion window after qualifying, no coupon."""

    users: int
    share: float | None  # of the qualifying users
    would_get_coupon: int  # of them, those the caps would have sent a coupon
    censored: int  # qualifying users whose conversion window runs past the end of the log


@dataclass(frozen=True)
class NonQualifyingBought:
    """New users who did not qualify and bought within ``window + conversion window``."""

    users: int
    bought: int
    share: float | None


@dataclass(frozen=True)
class Backtest:
    """What replaying a log through a campaign's rule gives; ``decisions`` has one row per user.

    ``decisions`` (indexed by user_id): started_at, start_from, new_user, qualified_at (NaT when
    not), reason ("" when qualified), holdout, coupon, bought_after (purchase inside the
    conversion window after qualifying).
    """

    campaign: Campaign
    schedule_ignored: bool
    source: str
    rows: int
    ignored_rows: int
    log_start: pd.Timestamp
    log_end: pd.Timestamp
    users: int
    new_users: int
    start_from: dict[str, int]
    qualifying: int
    qualifying_per_day: dict[str, int]
    not_qualifying: dict[str, int]
    holdout: int
    treated: int
    expected_coupons: int
    coupons_per_day: dict[str, int]
    capped_by_day: int
    capped_by_total: int
    purchases_in_log: bool
    bought_anyway: BoughtAnyway | None
    non_qualifying_new_users: NonQualifyingBought | None
    decisions: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-serialisable object (times in UTC, ISO 8601)."""
        c = self.campaign
        return {
            "campaign": c.campaign_id,
            "rule": {
                "new_user_window_hours": c.new_user_window_hours,
                "min_views": c.min_views,
                "count": c.count,
                "require_no_purchase": c.require_no_purchase,
                "holdout_percent": c.holdout_percent,
                "max_per_day": c.max_per_day,
                "max_total": c.max_total,
                "conversion_window_hours": c.conversion_window.total_seconds() / 3600,
            },
            "schedule_ignored": self.schedule_ignored,
            "events": {
                "source": self.source,
                "rows": self.rows,
                "ignored_rows": self.ignored_rows,
                "start": _iso(self.log_start),
                "end": _iso(self.log_end),
            },
            "users": self.users,
            "new_users": self.new_users,
            "start_from": self.start_from,
            "qualifying": self.qualifying,
            "qualifying_per_day": self.qualifying_per_day,
            "not_qualifying": self.not_qualifying,
            "holdout": self.holdout,
            "treated": self.treated,
            "expected_coupons": self.expected_coupons,
            "coupons_per_day": self.coupons_per_day,
            "capped": {"per_day": self.capped_by_day, "total": self.capped_by_total},
            "purchases_in_log": self.purchases_in_log,
            "bought_anyway": None if self.bought_anyway is None else vars(self.bought_anyway),
            "non_qualifying_new_users": (
                None
                if self.non_qualifying_new_users is None
                else vars(self.non_qualifying_new_users)
            ),
        }


def unscheduled(campaign: Campaign) -> Campaign:
    """The campaign enabled and active at every moment (to backtest one not launched yet)."""
    return campaign.model_copy(update={"enabled": True, "active_from": None, "active_until": None})


# --- the replay -----------------------------------------------------------------------------


def run_backtest(
    campaign: Campaign,
    events: pd.DataFrame,
    users: pd.DataFrame | None = None,
    *,
    source: str = "<events>",
    ignore_schedule: bool = False,
) -> Backtest:
    """Replay ``events`` through ``campaign``'s rule and count reach, coupons and purchases.

    Args:
        campaign: the campaign whose rule, holdout and caps apply.
        events: user_id, type, timestamp and (for ``distinct_items``) item_id; raw or prepared.
            Rows without a user, a timestamp or a known type are ignored and counted.
        users: optional user_id, signed_up_at (used when a user has no ``sign_up`` event).
        source: the name the report and error messages give the events.
        ignore_schedule: treat the campaign as enabled and active throughout the log.

    Returns:
        The report, with one decision row per user in the log.

    Raises:
        DataError: a missing column, a bad timestamp, or no usable event at all.
    """
    if campaign.require_attributes:
        raise DataError(
            f"campaign {campaign.campaign_id} requires user attributes "
            f"({', '.join(campaign.require_attributes)}), which an event log does not carry: "
            "a backtest cannot tell who would pass"
        )
    segments = (*campaign.audience, *campaign.exclude_segments)
    if segments:  # targeting (issue 12, item 4)
        raise DataError(
            f"campaign {campaign.campaign_id} targets segments ({', '.join(segments)}), which "
            "an event log does not carry: a backtest cannot tell who would pass"
        )
    if ignore_schedule:
        campaign = unscheduled(campaign)
    distinct = campaign.count == "distinct_items"
    ev = prepare_events(events, source=source, need_item=distinct)
    rows = len(ev)
    usable = (
        ev["user_id"].notna() & ev["timestamp"].notna() & ev["type"].isin(EVENT_TYPES)
    ).to_numpy(dtype=bool)
    ev = ev.loc[usable].sort_values(["user_id", "timestamp"], kind="stable")
    if ev.empty:
        raise DataError(
            f"no usable events in {source}: every row lacks a user or a timestamp, or has a "
            f"type other than {', '.join(EVENT_TYPES)}"
        )
    log_start, log_end = ev["timestamp"].min(), ev["timestamp"].max()

    people = _starts(ev, None if users is None else prepare_users(users))
    window = pd.Timedelta(campaign.window)
    people["new_user"] = (people["started_at"] >= log_start) & (people["started_at"] <= log_end)

    moments = _first_moments(ev, people, campaign, distinct)
    purchases = ev.loc[ev["type"] == "purchase", ["user_id", "timestamp"]]
    first_purchase = purchases.groupby("user_id")["timestamp"].min()
    _judge(people, moments, first_purchase, campaign)

    qualified = people["reason"] == ""
    holdout = np.zeros(len(people), dtype=bool)
    holdout[qualified.to_numpy(dtype=bool)] = np.array(
        [
            in_holdout(campaign.campaign_id, str(u), campaign.holdout_percent)
            for u in people.index[qualified]
        ],
        dtype=bool,
    )
    people["holdout"] = holdout
    capped_by_day, capped_by_total = _hand_out(people, campaign)

    conversion = pd.Timedelta(campaign.conversion_window)
    people["bought_after"] = _bought_between(
        people, purchases, people["qualified_at"], people["qualified_at"] + conversion, left=False
    )
    has_purchases = not purchases.empty
    bought_anyway = non_qualifying = None
    n_qualified = int(qualified.sum())
    if has_purchases:
        bought = people["bought_after"] & qualified
        bought_anyway = BoughtAnyway(
            users=int(bought.sum()),
            share=_share(int(bought.sum()), n_qualified),
            would_get_coupon=int((bought & people["coupon"]).sum()),
            censored=int((qualified & (people["qualified_at"] + conversion > log_end)).sum()),
        )
        others = people["new_user"] & ~qualified
        horizon = people["started_at"] + window + conversion
        bought_early = _bought_between(people, purchases, people["started_at"], horizon, left=True)
        n_others, n_bought = int(others.sum()), int((bought_early & others).sum())
        non_qualifying = NonQualifyingBought(n_others, n_bought, _share(n_bought, n_others))

    days = pd.date_range(log_start.floor("D"), log_end.floor("D"), freq="D")
    result = Backtest(
        campaign=campaign,
        schedule_ignored=ignore_schedule,
        source=source,
        rows=rows,
        ignored_rows=rows - len(ev),
        log_start=log_start,
        log_end=log_end,
        users=len(people),
        new_users=int(people["new_user"].sum()),
        start_from={s: int((people["start_from"] == s).sum()) for s in START_SOURCES},
        qualifying=n_qualified,
        qualifying_per_day=_per_day(people.loc[qualified, "qualified_at"], days),
        not_qualifying={r: int((people["reason"] == r).sum()) for r in NOT_QUALIFYING_REASONS},
        holdout=int((people["holdout"] & ~people["capped"]).sum()),
        treated=int((qualified & ~people["holdout"]).sum()),
        expected_coupons=int(people["coupon"].sum()),
        coupons_per_day=_per_day(people.loc[people["coupon"], "qualified_at"], days),
        capped_by_day=capped_by_day,
        capped_by_total=capped_by_total,
        purchases_in_log=has_purchases,
        bought_anyway=bought_anyway,
        non_qualifying_new_users=non_qualifying,
        decisions=people,
    )
    logger.info(
        "backtest of %s on %s: %d users, %d qualifying, %d coupons",
        campaign.campaign_id,
        source,
        result.users,
        result.qualifying,
        result.expected_coupons,
    )
    return result


def _starts(ev: pd.DataFrame, users: pd.DataFrame | None) -> pd.DataFrame:
    """One row per user: started_at and where it came from (sign_up event, users file, first)."""
    first_event = ev.groupby("user_id", sort=True)["timestamp"].min()
    people = pd.DataFrame(index=first_event.index)
    signed = ev.loc[ev["type"] == "sign_up"].groupby("user_id")["timestamp"].min()
    by_event = signed.reindex(people.index)
    if users is not None:
        known = users.dropna(subset=["user_id", "signed_up_at"])
        by_file = known.groupby("user_id")["signed_up_at"].min().reindex(people.index)
    else:
        by_file = pd.Series(pd.NaT, index=people.index, dtype="datetime64[ns]")
    people["started_at"] = by_event.fillna(by_file).fillna(first_event)
    people["start_from"] = np.select(
        [by_event.notna().to_numpy(), by_file.notna().to_numpy()],
        list(START_SOURCES[:2]),
        default=START_SOURCES[2],
    )
    return people


def _first_moments(
    ev: pd.DataFrame, people: pd.DataFrame, campaign: Campaign, distinct: bool
) -> pd.DataFrame:
    """Per user who reaches ``min_views`` inside the window: the first such view (``reached``)
    and the first such view while the campaign is active (``moment``), with both counts then.
    """
    views = ev.loc[ev["type"] == "view"]
    started = people["started_at"].reindex(views["user_id"]).to_numpy()
    stamps = views["timestamp"].to_numpy()
    inside = (stamps >= started) & (stamps <= started + np.timedelta64(campaign.window))
    views = views.loc[inside].copy()
    # ev is sorted by user then time, so running counts are counts "up to now"
    views["view_events"] = views.groupby("user_id").cumcount() + 1
    if "item_id" in views.columns:
        new_item = views["item_id"].notna() & ~views.duplicated(["user_id", "item_id"])
        views["distinct_items"] = new_item.groupby(views["user_id"]).cumsum()
    else:
        views["distinct_items"] = 0  # not read: the campaign counts view events
    counted = views["distinct_items" if distinct else "view_events"]
    reached = views.loc[counted >= campaign.min_views]
    first_reached = reached.groupby("user_id")["timestamp"].min().rename("reached")
    active = reached.loc[_active(campaign, reached["timestamp"])]
    first_active = active.groupby("user_id").head(1).set_index("user_id")
    moments = first_active[["timestamp", "view_events", "distinct_items"]].rename(
        columns={"timestamp": "moment"}
    )
    return pd.concat([first_reached, moments], axis=1)


def _active(campaign: Campaign, stamps: pd.Series) -> np.ndarray:
    """Vectorised ``campaign.is_active`` on naive UTC timestamps (confirmed per user later)."""
    mask = np.full(len(stamps), campaign.enabled, dtype=bool)
    if campaign.active_from is not None:
        mask &= (stamps >= _naive_utc(campaign.active_from)).to_numpy(dtype=bool)
    if campaign.active_until is not None:
        mask &= (stamps < _naive_utc(campaign.active_until)).to_numpy(dtype=bool)
    return mask


def _judge(
    people: pd.DataFrame, moments: pd.DataFrame, first_purchase: pd.Series, campaign: Campaign
) -> None:
    """Set ``qualified_at`` and ``reason`` on ``people``; check_eligibility has the last word."""
    people["qualified_at"] = pd.Series(pd.NaT, index=people.index, dtype="datetime64[ns]")
    people["reason"] = "too_few_views"
    reached = moments.index
    people.loc[reached, "reason"] = "campaign_inactive"
    candidates = moments.dropna(subset=["moment"])
    if candidates.empty:
        return
    moment = candidates["moment"]
    purchased = first_purchase.reindex(candidates.index) <= moment
    started = people.loc[candidates.index, "started_at"].dt.tz_localize("UTC")
    # what the service knows as signed_up_at: a sign_up event or the users file, not a guess
    told = (people.loc[candidates.index, "start_from"] != START_SOURCES[2]).to_numpy()
    verdicts = [
        check_eligibility(
            campaign,
            UserFacts(
                user_id=str(user),
                started_at=start.to_pydatetime(),
                view_events=int(views),
                distinct_items=int(items),
                has_purchased=bool(bought),
                signed_up_at=start.to_pydatetime() if signed else None,
            ),
            now=at.to_pydatetime(),
        )
        for user, start, signed, at, views, items, bought in zip(
            candidates.index,
            started,
            told,
            moment.dt.tz_localize("UTC"),
            candidates["view_events"],
            candidates["distinct_items"],
            purchased,
            strict=True,
        )
    ]
    reasons = [v.reasons[0] if v.reasons else "" for v in verdicts]
    people.loc[candidates.index, "reason"] = reasons
    eligible = np.array([v.eligible for v in verdicts], dtype=bool)
    people.loc[candidates.index[eligible], "qualified_at"] = moment.to_numpy()[eligible]


def _hand_out(people: pd.DataFrame, campaign: Campaign) -> tuple[int, int]:
    """Set ``coupon`` and ``capped``: qualified users in order of qualification, as the service
    decides them: both sides of the holdout face the caps (a held-out user who qualifies while
    a cap is full is turned away too, so the two sides stay comparable), and only coupons count
    against the caps.

    Returns how many qualified users (either side) the daily cap, then the total cap, turned
    away.
    """
    people["coupon"] = False
    people["capped"] = False
    qualified = people.loc[people["reason"] == "", ["qualified_at", "holdout"]]
    qualified = qualified.rename_axis("user_id").reset_index()
    qualified = qualified.sort_values(["qualified_at", "user_id"], kind="stable")
    per_day: Counter[pd.Timestamp] = Counter()
    total = by_day = by_total = 0
    coupons: list[str] = []
    capped: list[str] = []
    for user, at, held in zip(
        qualified["user_id"], qualified["qualified_at"], qualified["holdout"], strict=True
    ):
        day = at.floor("D")
        if campaign.max_per_day is not None and per_day[day] >= campaign.max_per_day:
            by_day += 1
            capped.append(user)
        elif campaign.max_total is not None and total >= campaign.max_total:
            by_total += 1
            capped.append(user)
        elif not held:
            coupons.append(user)
            per_day[day] += 1
            total += 1
    people.loc[coupons, "coupon"] = True
    people.loc[capped, "capped"] = True
    return by_day, by_total


def _bought_between(
    people: pd.DataFrame,
    purchases: pd.DataFrame,
    since: pd.Series,
    until: pd.Series,
    *,
    left: bool,
) -> pd.Series:
    """Per user: a purchase in ``(since, until]`` (``[since, until]`` when ``left``)."""
    bounds = pd.DataFrame({"since": since, "until": until}).dropna()
    joined = purchases.join(bounds, on="user_id", how="inner")
    after = (
        joined["timestamp"] >= joined["since"] if left else joined["timestamp"] > joined["since"]
    )
    hit = after & (joined["timestamp"] <= joined["until"])
    users = joined.loc[hit, "user_id"].unique()
    return pd.Series(people.index.isin(users), index=people.index)


def _per_day(stamps: pd.Series, days: pd.DatetimeIndex) -> dict[str, int]:
    """UTC date -> how many of ``stamps`` fall on it, for every day of the log."""
    counts = stamps.dt.floor("D").value_counts().reindex(days, fill_value=0)
    return {day.strftime("%Y-%m-%d"): int(n) for day, n in counts.items()}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _naive_utc(moment: Any) -> pd.Timestamp:
    return pd.Timestamp(moment).tz_convert("UTC").tz_localize(None)


def _iso(stamp: pd.Timestamp) -> str:
    return str(stamp.tz_localize("UTC").isoformat())
