"""Backtest the lifecycle kinds: replay a historical log through the scheduled sweeps.

``win_back``, ``purchase_anniversary``, ``birthday``, ``frequent_buyer`` and ``abandoned_cart``
qualify users as time passes, so the service sweeps them on a schedule. The replay does the
same: a sweep every ``every`` (a day by default, an hour for abandoned carts) from the first UTC
day of the log to its end, only while the campaign is active, and at each sweep the rule of
``service.offers.rules.check_eligibility`` decides on ``UserFacts`` built from the log as of
that moment (orders up to now, the open cart, the users file's attributes).

Evaluating every user at every sweep would be slow (4,300 customers over 374 days is 1.6
million evaluations), so the candidates come from a vectorised pass over the orders and carts:
between two events of a user their facts do not change, so each kind's rule holds over a time
window per user and segment, which maps onto a range of sweeps. Only a candidate at a sweep is
handed to ``check_eligibility`` (``exhaustive=True`` hands every known user at every sweep,
which the tests use to show both paths decide alike).

As in the service:

- one decision per user per **occurrence** (the occurrence key ``check_eligibility`` returns,
  the decision's unique index): a lapse, a year, a multiple of orders, a cart is decided once;
- the holdout is ``rules.in_holdout`` of campaign and user;
- the caps: both sides of the holdout face them (a full cap refuses a holdout user too) and
  each issued coupon counts against the day's and the total budget; a refused user is a budget
  miss that the next sweep evaluates again while they still qualify for that occurrence;
- candidates of one sweep are decided in user id order (the sweep's order).

Orders are the distinct ``order_id`` of purchase events (a purchase without one is an order of
its own), dated by their first line; ``recent_orders`` counts those in ``(now - within_days,
now]``; the open cart is the add-to-carts after the last order up to now.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from service.errors import DataError
from service.offers.campaigns import KIND_FIELDS, Campaign
from service.offers.occasions import on_day, parse_month_day
from service.offers.rules import UserFacts, check_eligibility, in_holdout
from service.tables import EVENT_TYPES

logger = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9
CENT = Decimal("0.01")
# reasons check_eligibility gives besides the kind's own: a candidate refused for one of them
# is tried again at the next sweep (an account grows old enough, a campaign opens)
SHARED_REASONS = ("campaign_inactive", "unknown_user", "account_age_unknown", "account_too_new")
Ints = npt.NDArray[np.int64]


def default_every(campaign: Campaign) -> timedelta:
    """How often the kind is swept: hourly for abandoned carts, daily for the others."""
    return timedelta(hours=1) if campaign.kind == "abandoned_cart" else timedelta(days=1)


# --- the log as the rules read it ------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """Orders, add-to-carts and users of a log, ready for facts at any moment.

    ``orders``: user_id, order_id, at (naive UTC), value (float, NaN when a line has no price),
    sorted by user and time. ``adds``: user_id, at, item_id (NaN when unknown), sorted likewise.
    ``known``: per user, since when the service would know them (sign-up or first event,
    whichever is earlier; the log's first day for a users-file row without a sign-up time).
    """

    orders: pd.DataFrame
    adds: pd.DataFrame
    known: pd.Series
    signed_up: pd.Series
    attributes: dict[str, dict[str, Any]]
    source: str
    rows: int
    ignored_rows: int
    log_start: pd.Timestamp
    log_end: pd.Timestamp


def activity_from(
    events: pd.DataFrame, users: pd.DataFrame | None = None, *, source: str = "<events>"
) -> Activity:
    """Build the :class:`Activity` of prepared events (``training.event_log.prepare_events``
    form, with order_id, quantity and price when the log has them) and an optional users frame
    (``prepare_user_attributes`` form: user_id, signed_up_at and attribute columns).

    Raises:
        DataError: no usable event at all.
    """
    rows = len(events)
    usable = (
        events["user_id"].notna() & events["timestamp"].notna() & events["type"].isin(EVENT_TYPES)
    ).to_numpy(dtype=bool)
    ev = events.loc[usable]
    if ev.empty:
        raise DataError(
            f"no usable events in {source}: every row lacks a user or a timestamp, or has a "
            f"type other than {', '.join(EVENT_TYPES)}"
        )
    # the service keeps microseconds; a cart holds products, so an add without one is none
    ev = ev.assign(timestamp=ev["timestamp"].dt.floor("us"))
    ev = ev.sort_values(["user_id", "timestamp"], kind="stable")
    orders = _orders(ev.loc[ev["type"] == "purchase"])
    adds = ev.loc[ev["type"] == "add_to_cart"]
    item = adds["item_id"] if "item_id" in adds.columns else pd.Series(np.nan, index=adds.index)
    adds = pd.DataFrame({"user_id": adds["user_id"], "at": adds["timestamp"], "item_id": item})
    adds = adds.loc[adds["item_id"].notna()].reset_index(drop=True)
    first_event = ev.groupby("user_id", sort=True)["timestamp"].min()
    signed_event = ev.loc[ev["type"] == "sign_up"].groupby("user_id")["timestamp"].min()
    log_start, log_end = ev["timestamp"].min(), ev["timestamp"].max()
    attributes: dict[str, dict[str, Any]] = {}
    signed = signed_event
    ids = first_event.index
    if users is not None:
        known_users = users.dropna(subset=["user_id"]).drop_duplicates("user_id", keep="last")
        by_file = known_users.set_index("user_id")["signed_up_at"].dropna()
        signed = signed_event.combine_first(by_file)
        names = [c for c in known_users.columns if c not in ("user_id", "signed_up_at")]
        for record in known_users[["user_id", *names]].to_dict("records"):
            values = {k: v for k, v in record.items() if k != "user_id" and not _missing(v)}
            if values:
                attributes[str(record["user_id"])] = values
        ids = ids.union(pd.Index(known_users["user_id"]))
    # since when the service knows a user: signed up or first seen, whichever is earlier; a
    # users-file row without a sign-up time is the shop's customer from the log's first day
    known = signed.reindex(ids).combine(first_event.reindex(ids), _earliest)
    if users is not None:
        listed = pd.Index(users["user_id"].dropna().unique())
        known.loc[listed.difference(signed.dropna().index)] = log_start.floor("D")
    return Activity(
        orders=orders,
        adds=adds,
        known=known,
        signed_up=signed.reindex(ids),
        attributes=attributes,
        source=source,
        rows=rows,
        ignored_rows=rows - len(ev),
        log_start=log_start,
        log_end=log_end,
    )


def _earliest(a: Any, b: Any) -> Any:
    if pd.isna(a):
        return b
    if pd.isna(b):
        return a
    return min(a, b)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def _orders(purchases: pd.DataFrame) -> pd.DataFrame:
    """One row per order: its first line's time and its value (sum of quantity x price)."""
    if purchases.empty:
        return pd.DataFrame(
            {
                "user_id": pd.Series(dtype=object),
                "order_id": pd.Series(dtype=object),
                "at": pd.Series(dtype="datetime64[ns]"),
                "value": pd.Series(dtype="float64"),
            }
        )
    stamps = purchases["timestamp"]
    order = (
        purchases["order_id"].fillna("@" + stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
        if "order_id" in purchases.columns
        else "@" + stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    )
    quantity = purchases["quantity"].fillna(1.0) if "quantity" in purchases.columns else 1.0
    price = purchases["price"] if "price" in purchases.columns else np.nan
    lines = pd.DataFrame(
        {
            "user_id": purchases["user_id"],
            "order_id": order,
            "at": stamps,
            "value": quantity * price,
        }
    )
    grouped = lines.groupby(["user_id", "order_id"], sort=False)
    orders = grouped.agg(at=("at", "min"), value=("value", lambda v: v.sum(min_count=len(v))))
    return orders.reset_index().sort_values(["user_id", "at"], kind="stable", ignore_index=True)


class _Facts:
    """``UserFacts`` of any user at any moment, from per-user arrays (nanoseconds)."""

    def __init__(self, campaign: Campaign, activity: Activity) -> None:
        self.campaign = campaign
        self.activity = activity
        self.orders = _by_user(activity.orders)
        self.adds = _by_user(activity.adds)
        self.values: dict[str, npt.NDArray[np.float64]] = {
            u: g["value"].to_numpy(dtype="float64")
            for u, g in activity.orders.groupby("user_id", sort=False)
        }
        self.add_items: dict[str, npt.NDArray[Any]] = {
            u: g["item_id"].to_numpy(dtype=object)
            for u, g in activity.adds.groupby("user_id", sort=False)
        }
        self.within = int(timedelta(days=campaign.within_days) / timedelta(microseconds=1)) * 1000
        self.empty: Ints = np.array([], dtype=np.int64)
        self.known = {str(u): t.value for u, t in activity.known.items()}
        self.signed = {str(u): t.value for u, t in activity.signed_up.dropna().items()}

    def at(self, user: str, now: int) -> UserFacts:
        """What the service would read for ``user`` at ``now`` (ns since the epoch, UTC)."""
        known = self.known.get(user)
        if known is None or known > now:
            return UserFacts(user, None, 0, 0, False)
        times = self.orders.get(user, self.empty)
        n = int(np.searchsorted(times, now, side="right"))
        recent = n - int(np.searchsorted(times, now - self.within, side="right"))
        signed = self.signed.get(user)
        cart_start = cart_last = None
        items: tuple[str, ...] = ()
        adds = self.adds.get(user)
        if adds is not None:
            since = times[n - 1] if n else None
            lo = 0 if since is None else int(np.searchsorted(adds, since, side="right"))
            hi = int(np.searchsorted(adds, now, side="right"))
            if hi > lo:
                cart_start, cart_last = _utc(adds[lo]), _utc(adds[hi - 1])
                found = self.add_items[user][lo:hi]
                items = tuple(dict.fromkeys(str(i) for i in found if not _missing(i)))
        return UserFacts(
            user_id=user,
            started_at=_utc(known),
            view_events=0,
            distinct_items=0,
            has_purchased=n > 0,
            signed_up_at=None if signed is None else _utc(signed),
            attributes=self.activity.attributes.get(user, {}),
            orders=n,
            first_order_at=_utc(times[0]) if n else None,
            last_order_at=_utc(times[n - 1]) if n else None,
            recent_orders=recent,
            cart_started_at=cart_start,
            cart_last_at=cart_last,
            cart_items=items,
        )


def _by_user(frame: pd.DataFrame) -> dict[str, Ints]:
    stamps = frame["at"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    users = frame["user_id"].to_numpy(dtype=object)
    if not len(users):
        return {}
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(users)]])
    return {str(users[s]): stamps[s:e] for s, e in zip(starts, ends, strict=True)}


def _utc(ns: int | np.integer[Any]) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(ns) // 1000)


# --- the candidates: where each kind's rule holds, as ranges of sweeps ------------------------


@dataclass(frozen=True)
class _Windows:
    """Per candidate: user, and the first and last sweep (indices) inside its window."""

    users: npt.NDArray[Any]
    first: Ints
    last: Ints


def _windows(campaign: Campaign, activity: Activity, sweeps: Ints) -> _Windows:
    """The sweeps at which ``campaign``'s kind may hold for each user (a superset is fine:
    ``check_eligibility`` has the last word; a sweep outside every window is never tried)."""
    kind = campaign.kind
    if kind == "win_back":
        users, opens, closes = _win_back(campaign, activity)
        first = np.searchsorted(sweeps, opens, side="right")  # strictly older than the threshold
    elif kind == "frequent_buyer":
        users, opens, closes = _frequent(campaign, activity)
        first = np.searchsorted(sweeps, opens, side="left")
    elif kind in ("purchase_anniversary", "birthday"):
        users, opens, closes = _yearly(campaign, activity)
        first = np.searchsorted(sweeps, opens, side="left")
    elif kind == "abandoned_cart":
        users, opens, closes = _carts(campaign, activity)
        first = np.searchsorted(sweeps, opens, side="left")
    else:  # pragma: no cover - run_lifecycle_backtest refuses the other kinds
        raise DataError(f"kind {kind!r} is not a lifecycle kind")
    # closes are exclusive: the first sweep at or after them is out
    last = np.searchsorted(sweeps, closes, side="left") - 1
    keep = first <= last
    return _Windows(users[keep], first[keep].astype(np.int64), last[keep].astype(np.int64))


def _ns(frame: pd.DataFrame, column: str) -> Ints:
    stamps: Ints = frame[column].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return stamps


NEVER = np.iinfo(np.int64).max


def _shifted(users: npt.NDArray[Any], values: Ints, by: int, fill: int) -> Ints:
    """``values`` moved ``by`` rows (positive: from earlier rows) within runs of one user;
    ``fill`` where the row would come from another user. Exact on nanoseconds (no floats)."""
    n = len(values)
    out = np.full(n, fill, dtype=np.int64)
    if n == 0 or abs(by) >= n:
        return out
    if by > 0:
        same = users[by:] == users[:-by]
        out[by:] = np.where(same, values[:-by], fill)
    elif by < 0:
        same = users[:by] == users[-by:]
        out[:by] = np.where(same, values[-by:], fill)
    else:
        out[:] = values
    return out


def _order_segments(activity: Activity) -> pd.DataFrame:
    """Per order k of a user: at (ns), k (1-based), the user's first order and the next one."""
    o = activity.orders
    users = o["user_id"].to_numpy(dtype=object)
    seg = pd.DataFrame({"user_id": users, "at": _ns(o, "at")})
    seg["k"] = seg.groupby("user_id", sort=False).cumcount() + 1
    seg["first"] = seg.groupby("user_id", sort=False)["at"].transform("min")
    seg["next"] = _shifted(users, seg["at"].to_numpy(dtype=np.int64), -1, NEVER)
    return seg


def _win_back(campaign: Campaign, activity: Activity) -> tuple[npt.NDArray[Any], Ints, Ints]:
    """After order k (k >= min_orders): lapsed once ``now - t_k`` passes the threshold, until
    max_lapse_days or the next order. Opens are exclusive, closes exclusive."""
    seg = _order_segments(activity)
    seg = seg.loc[seg["k"] >= campaign.min_orders]
    k = seg["k"].to_numpy(dtype=np.int64)
    at = seg["at"].to_numpy(dtype=np.int64)
    rhythm = np.where(
        k >= 2, (at - seg["first"].to_numpy(dtype=np.int64)) / np.maximum(k - 1, 1), 0
    )
    fallback = campaign.lapse_days * NS_PER_DAY
    if campaign.lapse_rhythm_factor is not None:
        threshold = np.where(rhythm > 0, rhythm * campaign.lapse_rhythm_factor, fallback)
    else:
        threshold = np.full(len(seg), fallback, dtype=np.float64)
    threshold = np.maximum(threshold, campaign.min_lapse_days * NS_PER_DAY)
    # a millisecond early rather than late (the rule measures in microseconds): it confirms
    opens = at + np.floor(threshold).astype(np.int64) - 1_000_000
    closes = seg["next"].to_numpy(dtype=np.int64)
    if campaign.max_lapse_days is not None:
        limit = at + int(campaign.max_lapse_days * NS_PER_DAY) + 1  # "not longer than": inclusive
        closes = np.minimum(closes, limit)
    return seg["user_id"].to_numpy(dtype=object), opens, closes


def _frequent(campaign: Campaign, activity: Activity) -> tuple[npt.NDArray[Any], Ints, Ints]:
    """After order k (k >= min_orders): while the m-th latest order is younger than within_days
    (until the next order, whose facts differ)."""
    m = campaign.min_orders
    seg = _order_segments(activity)
    users = seg["user_id"].to_numpy(dtype=object)
    seg["mth"] = _shifted(users, seg["at"].to_numpy(dtype=np.int64), m - 1, 0)
    seg = seg.loc[seg["k"] >= m]
    within = int(campaign.within_days * NS_PER_DAY)
    closes = np.minimum(
        seg["next"].to_numpy(dtype=np.int64), seg["mth"].to_numpy(dtype=np.int64) + within
    )
    return seg["user_id"].to_numpy(dtype=object), seg["at"].to_numpy(dtype=np.int64), closes


def _yearly(campaign: Campaign, activity: Activity) -> tuple[npt.NDArray[Any], Ints, Ints]:
    """The whole UTC days ``[date - days_before, date + days_after]`` of every year of the log,
    around the first order's date (anniversary, from the next year on) or the birthday."""
    users: list[str] = []
    dates: list[tuple[int, int, int]] = []  # (month, day, first year)
    if campaign.kind == "purchase_anniversary":
        firsts = activity.orders.groupby("user_id", sort=True)["at"].min()
        for user, first in firsts.items():
            users.append(str(user))
            dates.append((first.month, first.day, first.year + 1))
    else:
        for user, values in activity.attributes.items():
            parsed = parse_month_day(values.get(campaign.birthday_attribute))
            if parsed is not None:
                users.append(user)
                dates.append((*parsed, activity.log_start.year - 1))
    out_users: list[str] = []
    opens: list[int] = []
    closes: list[int] = []
    before, after = timedelta(days=campaign.days_before), timedelta(days=campaign.days_after + 1)
    for user, (month, day, first_year) in zip(users, dates, strict=True):
        for year in range(max(first_year, activity.log_start.year - 1), activity.log_end.year + 2):
            anchor = datetime.combine(on_day(year, month, day), datetime.min.time())
            out_users.append(user)
            opens.append(pd.Timestamp(anchor - before).value)
            closes.append(pd.Timestamp(anchor + after).value)
    return (
        np.array(out_users, dtype=object),
        np.array(opens, dtype=np.int64),
        np.array(closes, dtype=np.int64),
    )


def _carts(campaign: Campaign, activity: Activity) -> tuple[npt.NDArray[Any], Ints, Ints]:
    """After each add-to-cart: from cart_idle_hours to cart_max_age_hours later (inclusive),
    until the next add or order of the user (either changes the facts)."""
    adds = activity.adds.drop_duplicates(["user_id", "at"], keep="last")
    if adds.empty:
        empty = np.array([], dtype=np.int64)
        return np.array([], dtype=object), empty, empty
    users = adds["user_id"].to_numpy(dtype=object)
    frame = pd.DataFrame({"user_id": users, "at": _ns(adds, "at")})
    frame["next_add"] = _shifted(users, frame["at"].to_numpy(dtype=np.int64), -1, NEVER)
    orders = pd.DataFrame(
        {
            "user_id": activity.orders["user_id"].to_numpy(dtype=object),
            "order_at": activity.orders["at"].to_numpy(dtype="datetime64[ns]"),
        }
    )
    frame = frame.sort_values("at", kind="stable")
    if orders.empty:
        frame["next_order"] = NEVER
    else:
        # on datetimes, not nanosecond integers: "no next order" is NaT, never a float
        joined = pd.merge_asof(
            frame.assign(stamp=pd.to_datetime(frame["at"], unit="ns")),
            orders.sort_values("order_at", kind="stable"),
            left_on="stamp",
            right_on="order_at",
            by="user_id",
            direction="forward",
            allow_exact_matches=True,  # an order at the add's moment closes the cart
        )
        found = joined["order_at"]
        nanos = found.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        frame["next_order"] = np.where(found.notna().to_numpy(), nanos, NEVER)
    at = frame["at"].to_numpy(dtype=np.int64)
    idle = int(campaign.cart_idle_hours * 3600 * 10**9)
    oldest = int(campaign.cart_max_age_hours * 3600 * 10**9)
    closes = np.minimum.reduce(
        [at + oldest + 1, frame["next_add"].to_numpy(), frame["next_order"].to_numpy()]
    )
    return frame["user_id"].to_numpy(dtype=object), at + idle, closes


# --- the replay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Money:
    """Expected discount cost of the coupons, in the log's currency (estimates, exact sums)."""

    currency: str | None
    discount: str  # "10 %" or "5.00 GBP"
    if_every_coupon_redeemed: Decimal
    on_orders_placed_anyway: Decimal
    orders_placed_anyway: int
    typical_order_value: Decimal | None  # the shop's median, the fallback of unknown customers
    coupons_valued_at_shop_median: int

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "discount": self.discount,
            "if_every_coupon_redeemed": str(self.if_every_coupon_redeemed),
            "on_orders_placed_anyway": str(self.on_orders_placed_anyway),
            "orders_placed_anyway": self.orders_placed_anyway,
            "shop_median_order_value": (
                None if self.typical_order_value is None else str(self.typical_order_value)
            ),
            "coupons_valued_at_shop_median": self.coupons_valued_at_shop_median,
        }


def discount_on(campaign: Campaign, order_value: Decimal) -> Decimal:
    """The discount one coupon of ``campaign`` takes off an order worth ``order_value``.

    The one place the backtest turns a coupon into money: a percent of the order, or a fixed
    amount (``fixed_discount``, never more than the order); nothing on an order below its
    ``min_order_amount``.
    """
    minimum = campaign.min_order_amount
    if minimum is not None and order_value < minimum:
        return Decimal(0)
    fixed = campaign.fixed_discount
    if fixed is not None:
        return min(Decimal(fixed), order_value)
    share = Decimal(str(campaign.discount_percent)) / 100
    return (order_value * share).quantize(CENT, rounding=ROUND_HALF_EVEN)


def _discount_label(campaign: Campaign, currency: str | None) -> str:
    fixed = campaign.fixed_discount
    if fixed is not None:
        return f"{fixed} {currency or ''}".strip()
    return f"{campaign.discount_percent:g} %"


@dataclass(frozen=True)
class LifecycleBacktest:
    """What replaying a log through a lifecycle campaign's sweeps gives.

    ``decisions``: one row per decided occurrence: user_id, occurrence, decided_at, holdout,
    misses (budget misses before it was decided), bought_after, order_value_after (NaN when
    none), typical_value (NaN when unknown).
    """

    campaign: Campaign
    schedule_ignored: bool
    activity: Activity
    every: timedelta
    sweeps: int
    evaluated: int
    seconds: float  # the replay (candidates, sweeps, outcomes), without reading the log
    per_day: pd.DataFrame  # day -> eligible, issued, holdout, budget_misses
    eligible_occurrences: int
    eligible_users: int
    issued: int
    holdout: int
    missed_never_decided: int
    already_decided: int
    refused_at_sweep: dict[str, int]
    money: Money
    bought_anyway: dict[str, Any] | None
    decisions: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-serialisable object (times in UTC, ISO 8601)."""
        c, a = self.campaign, self.activity
        per_day = self.per_day
        days = {
            str(day): {k: int(v) for k, v in row.items()}
            for day, row in per_day.to_dict("index").items()
        }
        return {
            "campaign": c.campaign_id,
            "kind": c.kind,
            "rule": {name: getattr(c, name) for name in _rule_fields(c)},
            "schedule_ignored": self.schedule_ignored,
            "events": {
                "source": a.source,
                "rows": a.rows,
                "ignored_rows": a.ignored_rows,
                "start": _iso(a.log_start),
                "end": _iso(a.log_end),
                "users": len(a.known),
                "orders": len(a.orders),
                "add_to_carts": len(a.adds),
            },
            "sweeps": {
                "every_hours": self.every.total_seconds() / 3600,
                "count": self.sweeps,
                "evaluated": self.evaluated,
                "seconds": round(self.seconds, 3),
            },
            "eligible": {"occurrences": self.eligible_occurrences, "users": self.eligible_users},
            "issued": self.issued,
            "holdout": self.holdout,
            "budget_misses_never_decided": self.missed_never_decided,
            "already_decided": self.already_decided,
            "refused_at_sweep": self.refused_at_sweep,
            "per_day_summary": {
                column: {
                    "median": float(per_day[column].median()) if len(per_day) else 0.0,
                    "max": int(per_day[column].max()) if len(per_day) else 0,
                    "total": int(per_day[column].sum()),
                }
                for column in PER_DAY
            },
            "per_day": days,
            "money": self.money.to_json(),
            "bought_anyway": self.bought_anyway,
        }


PER_DAY = ("eligible", "issued", "holdout", "budget_misses")


def _rule_fields(campaign: Campaign) -> list[str]:
    shared = [
        "discount_percent",
        "coupon_ttl_hours",
        "conversion_window_hours",
        "holdout_percent",
        "max_per_day",
        "max_total",
    ]
    return sorted(KIND_FIELDS[campaign.kind]) + shared


def refusal(campaign: Campaign, activity: Activity, users_given: bool) -> str | None:
    """Why ``campaign`` cannot be replayed on ``activity`` (one line), or None."""
    cid, kind = campaign.campaign_id, campaign.kind
    if kind == "birthday":
        name = campaign.birthday_attribute
        if not any(name in values for values in activity.attributes.values()):
            where = "the users file has no" if users_given else "no users file (--users) gives a"
            return (
                f"campaign {cid} is a birthday campaign: it needs each user's {name!r} attribute "
                f"(MM-DD or YYYY-MM-DD), and {where} {name!r} column; {activity.source} alone "
                "cannot tell when anyone's birthday is"
            )
    if kind == "abandoned_cart" and activity.adds.empty:
        return (
            f"campaign {cid} is an abandoned_cart campaign: it needs add_to_cart events, and "
            f"{activity.source} has none"
        )
    if kind in ("win_back", "purchase_anniversary", "frequent_buyer") and activity.orders.empty:
        return (
            f"campaign {cid} is a {kind} campaign: it needs purchases, and {activity.source} "
            "has none"
        )
    missing = [
        n
        for n in campaign.require_attributes
        if not any(n in v for v in activity.attributes.values())
    ]
    if missing:
        return (
            f"campaign {cid} requires user attributes ({', '.join(missing)}), which "
            + (
                "the users file does not carry"
                if users_given
                else "an event log does not carry (pass --users with those columns)"
            )
            + ": "
            "a backtest cannot tell who would pass"
        )
    segments = (*campaign.audience, *campaign.exclude_segments)
    if segments:  # targeting (issue 12, item 4): segments come from the service's database
        return (
            f"campaign {cid} targets segments ({', '.join(segments)}), which an event log does "
            "not carry: a backtest cannot tell who would pass"
        )
    return None


def run_lifecycle_backtest(
    campaign: Campaign,
    activity: Activity,
    *,
    users_given: bool = False,
    every: timedelta | None = None,
    ignore_schedule: bool = False,
    exhaustive: bool = False,
    currency: str | None = None,
) -> LifecycleBacktest:
    """Replay ``activity`` through the sweeps of a lifecycle ``campaign``.

    Args:
        campaign: a campaign of a time-driven kind; its rule, holdout, caps and discount apply.
        activity: the log (:func:`activity_from`).
        users_given: whether a users file came with the log (for the refusal's wording).
        every: the time between sweeps (default :func:`default_every`).
        ignore_schedule: treat the campaign as enabled and active throughout the log.
        exhaustive: evaluate every known user at every sweep (slow; to check the candidates).
        currency: the currency of the log's prices, for the report.

    Raises:
        DataError: the kind is not a lifecycle one, or the log cannot replay it (no birthday
            attribute, no add-to-carts, no purchases); the message is one line.
    """
    if not campaign.time_driven:
        raise DataError(
            f"campaign {campaign.campaign_id} is a {campaign.kind} campaign, not a scheduled "
            "kind: training.backtest.run_backtest replays it"
        )
    if ignore_schedule:
        campaign = campaign.model_copy(
            update={"enabled": True, "active_from": None, "active_until": None}
        )
    problem = refusal(campaign, activity, users_given)
    if problem is not None:
        raise DataError(problem)
    started = time.perf_counter()
    every = every or default_every(campaign)
    step = int(every / timedelta(microseconds=1)) * 1000
    if step <= 0:
        raise DataError("the time between sweeps must be positive")
    origin = activity.log_start.floor("D").value
    everything = np.arange(origin, activity.log_end.value + 1, step, dtype=np.int64)
    sweeps = everything[[campaign.is_active(_utc(s)) for s in everything]]
    facts = _Facts(campaign, activity)
    if exhaustive:
        users = np.array(sorted(str(u) for u in activity.known.index), dtype=object)
        windows = _Windows(
            users,
            np.zeros(len(users), dtype=np.int64),
            np.full(len(users), len(sweeps) - 1, dtype=np.int64),
        )
    else:
        windows = _windows(campaign, activity, sweeps)
    replay = _Replay(campaign, facts, sweeps, windows, exhaustive=exhaustive)
    replay.run()
    decisions = replay.frame()
    _outcomes(decisions, facts, campaign)
    per_day = replay.per_day(origin, activity.log_end.value)
    money = _money(campaign, decisions, activity, currency or campaign.currency)
    bought = _bought_anyway(decisions, campaign) if len(activity.orders) else None
    seconds = time.perf_counter() - started
    result = LifecycleBacktest(
        campaign=campaign,
        schedule_ignored=ignore_schedule,
        activity=activity,
        every=every,
        sweeps=len(sweeps),
        evaluated=replay.evaluated,
        seconds=seconds,
        per_day=per_day,
        eligible_occurrences=len(replay.eligible),
        eligible_users=len({user for user, _ in replay.eligible}),
        issued=int((~decisions["holdout"]).sum()),
        holdout=int(decisions["holdout"].sum()),
        missed_never_decided=len(replay.missed - set(replay.decided)),
        already_decided=replay.already,
        refused_at_sweep=dict(sorted(replay.refused.items())),
        money=money,
        bought_anyway=bought,
        decisions=decisions,
    )
    logger.info(
        "backtest of %s (%s) on %s: %d sweeps, %d evaluated, %d eligible, %d coupons",
        campaign.campaign_id,
        campaign.kind,
        activity.source,
        result.sweeps,
        result.evaluated,
        result.eligible_occurrences,
        result.issued,
    )
    return result


class _Replay:
    """The sweeps in order: candidates due at each, decided in user id order under the caps."""

    def __init__(
        self,
        campaign: Campaign,
        facts: _Facts,
        sweeps: Ints,
        windows: _Windows,
        *,
        exhaustive: bool,
    ) -> None:
        self.campaign = campaign
        self.facts = facts
        self.sweeps = sweeps
        self.windows = windows
        self.exhaustive = exhaustive
        self.due: dict[int, list[int]] = defaultdict(list)
        self.heap: list[int] = []
        self.decided: dict[tuple[str, str], tuple[int, bool, int]] = {}
        self.eligible: set[tuple[str, str]] = set()
        self.missed: set[tuple[str, str]] = set()
        self.misses: Counter[tuple[str, str]] = Counter()
        self.refused: Counter[str] = Counter()
        self.already = 0
        self.evaluated = 0
        self.daily: dict[int, Counter[str]] = defaultdict(Counter)
        self.holdout: dict[str, bool] = {}

    def _push(self, sweep: int, window: int) -> None:
        if sweep not in self.due:
            heapq.heappush(self.heap, sweep)
        self.due[sweep].append(window)

    def run(self) -> None:
        for w, first in enumerate(self.windows.first.tolist()):
            self._push(first, w)
        c = self.campaign
        total_left = c.max_total
        day_used: Counter[int] = Counter()
        while self.heap:
            i = heapq.heappop(self.heap)
            batch = self.due.pop(i)
            now = int(self.sweeps[i])
            moment = _utc(now)
            day = now // NS_PER_DAY
            missed_today: set[tuple[str, str]] = set()
            seen: set[str] = set()
            for w in sorted(batch, key=lambda w: (str(self.windows.users[w]), w)):
                user = str(self.windows.users[w])
                if user in seen:  # one evaluation per user per sweep, as the service's query
                    continue
                seen.add(user)
                self.evaluated += 1
                verdict = check_eligibility(c, self.facts.at(user, now), moment)
                retry = i + 1 <= self.windows.last[w]
                if not verdict.eligible:
                    # the kind's own reasons are expected at a window's edges (and everywhere
                    # when exhaustive); the shared rules' are a finding: count them
                    for reason in verdict.reasons:
                        if reason in SHARED_REASONS or reason.startswith("attribute_not_true:"):
                            self.refused[reason] += 1
                    if retry:
                        self._push(i + 1, w)
                    continue
                key = (user, verdict.occurrence)
                if key in self.decided:
                    self.already += 1
                    if self.exhaustive and retry:
                        self._push(i + 1, w)
                    continue
                self.eligible.add(key)
                held = self.holdout.setdefault(
                    user, in_holdout(c.campaign_id, user, c.holdout_percent)
                )
                full = (total_left is not None and total_left <= 0) or (
                    c.max_per_day is not None and day_used[day] >= c.max_per_day
                )
                if full:
                    self.missed.add(key)
                    self.misses[key] += 1
                    missed_today.add(key)
                    if retry:
                        self._push(i + 1, w)
                    continue
                self.decided[key] = (now, held, self.misses[key])
                missed_today.discard(key)
                self.daily[day]["holdout" if held else "issued"] += 1
                if not held:
                    day_used[day] += 1
                    if total_left is not None:
                        total_left -= 1
                if self.exhaustive and retry:
                    self._push(i + 1, w)
            self.daily[day]["budget_misses"] += len(missed_today)

    def frame(self) -> pd.DataFrame:
        rows = [
            (user, occurrence, at, held, misses)
            for (user, occurrence), (at, held, misses) in self.decided.items()
        ]
        frame = pd.DataFrame(
            rows, columns=["user_id", "occurrence", "decided_ns", "holdout", "misses"]
        )
        frame["holdout"] = frame["holdout"].astype(bool)
        frame["decided_ns"] = frame["decided_ns"].astype(np.int64)
        frame["decided_at"] = pd.to_datetime(frame["decided_ns"], unit="ns")
        return frame.sort_values(["decided_ns", "user_id"], ignore_index=True)

    def per_day(self, origin: int, end: int) -> pd.DataFrame:
        days = range(origin // NS_PER_DAY, end // NS_PER_DAY + 1)
        table = pd.DataFrame(
            [[self.daily[d][k] for k in PER_DAY[1:]] for d in days],
            columns=list(PER_DAY[1:]),
            index=[pd.Timestamp(d * NS_PER_DAY).strftime("%Y-%m-%d") for d in days],
        )
        table.insert(0, "eligible", table.sum(axis=1))
        return table.astype(np.int64)


def _outcomes(decisions: pd.DataFrame, facts: _Facts, campaign: Campaign) -> None:
    """Per decision: the first order in ``(decided_at, + conversion window]`` and its value,
    and the customer's typical order value then (median of their orders up to it)."""
    window = int(campaign.conversion_window / timedelta(microseconds=1)) * 1000
    bought, value_after, typical = [], [], []
    for user, now in zip(decisions["user_id"], decisions["decided_ns"], strict=True):
        times = facts.orders.get(user, facts.empty)
        values = facts.values.get(user)
        n = int(np.searchsorted(times, now, side="right"))
        hit = n < len(times) and times[n] <= now + window
        bought.append(bool(hit))
        value_after.append(float(values[n]) if hit and values is not None else np.nan)
        past = values[:n] if values is not None else np.array([])
        past = past[~np.isnan(past)]
        typical.append(float(np.median(past)) if len(past) else np.nan)
    decisions["bought_after"] = np.array(bought, dtype=bool)
    decisions["order_value_after"] = np.array(value_after, dtype=np.float64)
    decisions["typical_value"] = np.array(typical, dtype=np.float64)
    decisions["censored"] = decisions["decided_ns"] + window > facts.activity.log_end.value


def _bought_anyway(decisions: pd.DataFrame, campaign: Campaign) -> dict[str, Any]:
    """Treated and held-out users who ordered within the conversion window (no coupon was
    used: the log is history), each side separately: the baseline the uplift must beat."""
    out: dict[str, Any] = {
        "conversion_window_hours": campaign.conversion_window.total_seconds() / 3600
    }
    for side, mask in (("treated", ~decisions["holdout"]), ("holdout", decisions["holdout"])):
        part = decisions.loc[mask]
        n, hit = len(part), int(part["bought_after"].sum())
        out[side] = {
            "decided": n,
            "bought": hit,
            "share": round(hit / n, 4) if n else None,
            "censored": int(part["censored"].sum()),
        }
    return out


def _money(
    campaign: Campaign, decisions: pd.DataFrame, activity: Activity, currency: str | None
) -> Money:
    """The discount cost of the issued coupons: if every one were redeemed on an order of the
    customer's typical value (the shop's median for a customer without one), and on the
    orders the coupon holders placed anyway in the conversion window."""
    known_values = activity.orders["value"].dropna()
    shop = _decimal(float(known_values.median())) if len(known_values) else None
    treated = decisions.loc[~decisions["holdout"]]
    every = Decimal(0)
    fallback = 0
    for value in treated["typical_value"].tolist():
        if np.isnan(value):
            fallback += 1
            if shop is None:
                continue
            every += discount_on(campaign, shop)
        else:
            every += discount_on(campaign, _decimal(value))
    anyway = Decimal(0)
    placed = treated.loc[treated["bought_after"], "order_value_after"]
    for value in placed.tolist():
        if not np.isnan(value):
            anyway += discount_on(campaign, _decimal(value))
    return Money(
        currency=currency,
        discount=_discount_label(campaign, currency),
        if_every_coupon_redeemed=every.quantize(CENT),
        on_orders_placed_anyway=anyway.quantize(CENT),
        orders_placed_anyway=len(placed),
        typical_order_value=None if shop is None else shop.quantize(CENT),
        coupons_valued_at_shop_median=fallback,
    )


def _decimal(value: float) -> Decimal:
    return Decimal(str(round(value, 4)))


def _iso(stamp: pd.Timestamp) -> str:
    return str(stamp.tz_localize("UTC").isoformat())
