"""The backtest of the lifecycle kinds: the scheduled sweeps replayed over a small log.

Every expected figure is worked out by hand (or by a plain loop) here, not by the module; a
random log checks the vectorised candidates decide exactly as evaluating every user at every
sweep does.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.errors import DataError
from service.offers.campaigns import Campaign
from service.offers.rules import in_holdout
from training.backtest_kinds import (
    LifecycleBacktest,
    activity_from,
    discount_on,
    run_lifecycle_backtest,
)
from training.cli import app
from training.cli.backtest import online_retail_events
from training.event_log import prepare_user_attributes

runner = CliRunner()
DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2025-01-01 12:00")


def order(
    user: str, at: pd.Timestamp, value: float = 100.0, order_id: str | None = None
) -> dict[str, Any]:
    return {
        "user_id": user,
        "type": "purchase",
        "timestamp": at,
        "item_id": "sku",
        "order_id": order_id or f"{user}@{at.isoformat()}",
        "quantity": 1.0,
        "price": value,
    }


def add(user: str, at: pd.Timestamp, item: str = "sku") -> dict[str, Any]:
    return {"user_id": user, "type": "add_to_cart", "timestamp": at, "item_id": item}


def view(user: str, at: pd.Timestamp) -> dict[str, Any]:
    return {"user_id": user, "type": "view", "timestamp": at, "item_id": "sku"}


def replay(
    campaign: Campaign, rows: list[dict[str, Any]], users: pd.DataFrame | None = None, **kw: Any
) -> LifecycleBacktest:
    people = None if users is None else prepare_user_attributes(users)
    activity = activity_from(pd.DataFrame(rows), people, source="hand-made")
    return run_lifecycle_backtest(campaign, activity, users_given=users is not None, **kw)


def kind(name: str, **fields: Any) -> Campaign:
    defaults: dict[str, Any] = {"holdout_percent": 0, "max_per_day": None}
    return Campaign(campaign_id=name.replace("_", "-"), kind=name, **{**defaults, **fields})


def decided(result: LifecycleBacktest) -> list[tuple[str, str, str]]:
    d = result.decisions
    return [
        (u, o, t.strftime("%Y-%m-%d %H:%M"))
        for u, o, t in zip(d["user_id"], d["occurrence"], d["decided_at"], strict=True)
    ]


# --- each kind on a hand-made log ----------------------------------------------------------------


def test_win_back_decides_once_per_lapse_at_the_first_sweep_past_twice_the_rhythm() -> None:
    rows = [
        order("a", T0),
        order("a", T0 + 10 * DAY),  # rhythm 10 days: lapsed after 20, on 31 Jan at 12:00
        order("a", T0 + 50 * DAY),  # back on 20 Feb: rhythm 25 days, lapsed after 50
        order("one", T0),  # one order: never (min_orders 2)
        view("z", T0 + 120 * DAY),  # the log runs to 1 May
    ]
    result = replay(kind("win_back"), rows)
    # 31 Jan 12:00 + a moment -> the sweep of 1 Feb; 20 Feb 12:00 + 50 days -> 12 Apr
    assert decided(result) == [
        ("a", "lapse:2025-01-11", "2025-02-01 00:00"),
        ("a", "lapse:2025-02-20", "2025-04-12 00:00"),
    ]
    assert result.eligible_occurrences == 2
    assert result.eligible_users == 1
    assert result.issued == 2
    assert result.per_day.loc["2025-02-01", "issued"] == 1
    assert result.per_day["eligible"].sum() == 2


def test_win_back_without_rhythm_uses_lapse_days_and_stops_after_max_lapse_days() -> None:
    rows = [order("a", T0), order("a", T0 + DAY), view("z", T0 + 100 * DAY)]
    campaign = kind(
        "win_back", lapse_rhythm_factor=None, lapse_days=30, min_lapse_days=0, max_lapse_days=40
    )
    result = replay(campaign, rows)
    assert decided(result) == [("a", "lapse:2025-01-02", "2025-02-02 00:00")]
    # begun after max_lapse_days: the sweep never finds it lapsed "not too long"
    late = replay(campaign, rows, ignore_schedule=True)
    assert late.issued == 1
    closed = kind(
        "win_back",
        lapse_rhythm_factor=None,
        lapse_days=30,
        min_lapse_days=0,
        max_lapse_days=40,
        active_from="2025-02-15T00:00:00Z",
    )
    assert replay(closed, rows).eligible_occurrences == 0


def test_purchase_anniversary_opens_days_before_each_whole_year_once_per_year() -> None:
    rows = [
        order("a", pd.Timestamp("2023-03-10 15:00")),
        order("a", pd.Timestamp("2024-06-01 15:00")),  # later orders change nothing
        order("b", pd.Timestamp("2024-12-31 09:00")),  # first anniversary after the log
        view("z", pd.Timestamp("2025-03-20 10:00")),
    ]
    result = replay(kind("purchase_anniversary", days_before=3, days_after=7), rows)
    assert decided(result) == [
        ("a", "year:2024", "2024-03-07 00:00"),
        ("a", "year:2025", "2025-03-07 00:00"),
    ]
    # the window of 2024 held 11 sweeps; one decision: the occurrence is not decided again
    assert result.per_day["eligible"].sum() == 2


def test_birthday_needs_the_attribute_and_decides_once_a_year() -> None:
    rows = [view("a", pd.Timestamp("2025-03-01 10:00")), view("b", pd.Timestamp("2025-07-20"))]
    users = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "birthday": ["03-15", "1990-07-01", "not a date", None],
        }
    )
    result = replay(kind("birthday", days_before=0, days_after=2), rows, users)
    assert decided(result) == [
        ("a", "year:2025", "2025-03-15 00:00"),
        ("b", "year:2025", "2025-07-01 00:00"),
    ]
    with pytest.raises(DataError, match="no users file"):
        replay(kind("birthday"), rows)
    with pytest.raises(DataError, match="users file has no 'birthday' column"):
        replay(kind("birthday"), rows, pd.DataFrame({"user_id": ["a"], "city": ["x"]}))


def test_frequent_buyer_thanks_at_each_multiple_of_min_orders_within_the_window() -> None:
    rows = [
        order("a", T0),
        order("a", T0 + 5 * DAY),  # 2 orders within 30 days: orders:1 at the next sweep
        order("a", T0 + 8 * DAY),  # 3 orders: still orders:1, not decided again
        order("a", T0 + 9 * DAY),  # 4: orders:2
        order("slow", T0),
        order("slow", T0 + 40 * DAY),  # 2 orders, but not within 30 days
        view("z", T0 + 60 * DAY),
    ]
    result = replay(kind("frequent_buyer", min_orders=2, within_days=30), rows)
    assert decided(result) == [
        ("a", "orders:1", "2025-01-07 00:00"),
        ("a", "orders:2", "2025-01-11 00:00"),
    ]
    assert result.already_decided == 1  # the sweep after the third order


def test_abandoned_cart_hourly_after_cart_idle_hours_unless_bought() -> None:
    rows = [
        add("a", T0 + pd.Timedelta(hours=-2)),  # 10:00
        add("a", T0, "sku-2"),  # 12:00: idle 4 h at 16:00
        add("b", T0),
        order("b", T0 + pd.Timedelta(hours=2)),  # bought: no cart left
        add("c", T0),
        add("c", T0 + pd.Timedelta(hours=3)),  # 15:00: the cart grows, idle from 19:00
        view("z", T0 + 5 * DAY),
    ]
    result = replay(kind("abandoned_cart"), rows)
    assert decided(result) == [
        ("a", "cart:2025-01-01T10:00:00+00:00", "2025-01-01 16:00"),
        ("c", "cart:2025-01-01T12:00:00+00:00", "2025-01-01 19:00"),
    ]
    assert result.sweeps == 5 * 24 + 13  # hourly, from 1 Jan 00:00 to the end, 6 Jan 12:00
    with pytest.raises(DataError, match="needs add_to_cart events"):
        replay(kind("abandoned_cart"), [order("a", T0)])


def test_required_attributes_and_account_age_come_from_the_users_file() -> None:
    rows = [order("a", T0), order("a", T0 + 10 * DAY), order("b", T0), order("b", T0 + 10 * DAY)]
    rows.append(view("z", T0 + 40 * DAY))
    users = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "signed_up_at": ["2024-06-01T00:00:00Z", "2025-01-20T00:00:00Z"],
            "email_verified": ["true", "false"],
        }
    )
    verified = replay(kind("win_back", require_attributes=("email_verified",)), rows, users)
    assert [u for u, _, _ in decided(verified)] == ["a"]
    assert verified.refused_at_sweep == {"attribute_not_true:email_verified": 10}  # 1-10 Feb
    old = replay(kind("win_back", min_account_age_hours=24 * 14), rows, users)
    # b signed up on 20 Jan: 14 days old on 3 Feb, decided at that sweep
    assert decided(old) == [
        ("a", "lapse:2025-01-11", "2025-02-01 00:00"),
        ("b", "lapse:2025-01-11", "2025-02-03 00:00"),
    ]
    assert old.refused_at_sweep == {"account_too_new": 2}
    with pytest.raises(DataError, match="email_verified"):
        replay(kind("win_back", require_attributes=("email_verified",)), rows)
    # segments live in the service's database, not in a log: refused, not "nobody qualifies"
    with pytest.raises(DataError, match=r"targets segments \(mercenary\)"):
        replay(kind("win_back", exclude_segments=("mercenary",)), rows, users)


# --- the holdout and the caps --------------------------------------------------------------------


def _lapsing_crowd(n: int) -> list[dict[str, Any]]:
    """``n`` customers whose win-back opens on the sweep of 1 Feb, and stays open to the end."""
    rows = []
    for k in range(n):
        user = f"u{k:02d}"
        rows += [order(user, T0), order(user, T0 + 10 * DAY)]
    rows.append(view("z", T0 + 40 * DAY))  # the log ends 10 Feb 12:00
    return rows


def _reference_caps(
    users: list[str], days: int, campaign: Campaign
) -> tuple[list[tuple[str, int, bool]], int]:
    """The service's caps by hand: each day, the undecided in id order; a full cap refuses
    both sides, only issued coupons count. Returns (user, day, holdout) and the misses."""
    left_total = campaign.max_total
    waiting = sorted(users)
    out: list[tuple[str, int, bool]] = []
    misses = 0
    for day in range(days):
        used = 0
        still = []
        for user in waiting:
            held = in_holdout(campaign.campaign_id, user, campaign.holdout_percent)
            full = (left_total is not None and left_total <= 0) or (
                campaign.max_per_day is not None and used >= campaign.max_per_day
            )
            if full:
                still.append(user)
                continue
            out.append((user, day, held))
            if not held:
                used += 1
                left_total = None if left_total is None else left_total - 1
        misses += len(still)
        waiting = still
    return out, misses


@pytest.mark.parametrize(
    ("per_day", "total", "holdout"), [(3, None, 0), (3, 7, 0), (2, None, 40), (None, 5, 30)]
)
def test_caps_face_both_sides_count_coupons_and_a_miss_is_tried_the_next_day(
    per_day: int | None, total: int | None, holdout: float
) -> None:
    campaign = kind("win_back", max_per_day=per_day, max_total=total, holdout_percent=holdout)
    users = [f"u{k:02d}" for k in range(12)]
    result = replay(campaign, _lapsing_crowd(12))
    days = 10  # the sweeps of 1 Feb .. 10 Feb
    expected, misses = _reference_caps(users, days, campaign)
    got = [
        (u, (t - pd.Timestamp("2025-02-01")).days, h)
        for u, t, h in zip(
            result.decisions["user_id"],
            result.decisions["decided_at"],
            result.decisions["holdout"],
            strict=True,
        )
    ]
    assert sorted(got) == sorted(expected)
    assert result.per_day["budget_misses"].sum() == misses
    assert result.issued == sum(1 for _, _, h in expected if not h)
    assert result.holdout == sum(1 for _, _, h in expected if h)
    issued_per_day = result.per_day["issued"]
    if per_day is not None:
        assert issued_per_day.max() <= per_day
    if total is not None:
        assert result.issued <= total
    assert result.missed_never_decided == len(users) - len(expected)


def test_holdout_is_drawn_like_the_service() -> None:
    campaign = kind("win_back", holdout_percent=50)
    result = replay(campaign, _lapsing_crowd(12))
    for user, held in zip(result.decisions["user_id"], result.decisions["holdout"], strict=True):
        assert held == in_holdout(campaign.campaign_id, user, 50)
    assert 0 < result.holdout < 12


# --- money and bought anyway ---------------------------------------------------------------------


def test_money_and_bought_anyway_per_side() -> None:
    rows = [
        order("a", T0, 80.0),
        order("a", T0 + 10 * DAY, 120.0),  # typical value: median(80, 120) = 100
        order("a", pd.Timestamp("2025-02-03 10:00"), 250.0),  # bought 2 days after the coupon
        order("b", T0, 10.0),
        order("b", T0 + 10 * DAY, 30.0),  # typical 20, no order after
        view("z", T0 + 60 * DAY),
    ]
    campaign = kind("win_back", discount_percent=10, coupon_ttl_hours=7 * 24)
    result = replay(campaign, rows, currency="GBP")
    assert result.issued == 2
    money = result.money
    assert money.if_every_coupon_redeemed == Decimal("12.00")  # 10 % of 100 + 10 % of 20
    assert money.on_orders_placed_anyway == Decimal("25.00")  # 10 % of the 250 order
    assert money.orders_placed_anyway == 1
    assert result.bought_anyway is not None
    assert result.bought_anyway["treated"] == {
        "decided": 2,
        "bought": 1,
        "share": 0.5,
        "censored": 0,
    }
    assert result.bought_anyway["holdout"]["decided"] == 0
    doc = result.to_json()
    assert doc["money"]["currency"] == "GBP"
    assert doc["money"]["if_every_coupon_redeemed"] == "12.00"
    json.dumps(doc)


def test_a_percent_discount_is_exact_to_the_cent() -> None:
    campaign = kind("win_back", discount_percent=15)
    assert discount_on(campaign, Decimal("19.99")) == Decimal("3.00")
    assert discount_on(campaign, Decimal("0.10")) == Decimal("0.02")


def test_a_fixed_discount_is_never_more_than_the_order_and_needs_the_minimum() -> None:
    campaign = kind("win_back", fixed_discount="5.00", currency="GBP", min_order_amount="20.00")
    assert discount_on(campaign, Decimal("100.00")) == Decimal("5.00")
    assert discount_on(campaign, Decimal("19.99")) == Decimal(0)
    assert discount_on(kind("win_back", fixed_discount="50", currency="GBP"), Decimal("30")) == (
        Decimal("30")
    )


# --- the candidates against every user at every sweep --------------------------------------------


def _random_log(seed: int, users: int, days: int) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-11-20")
    rows: list[dict[str, Any]] = []
    for k in range(users):
        user = f"r{k:02d}"
        for _ in range(int(rng.integers(0, 7))):
            at = start + pd.Timedelta(minutes=int(rng.integers(0, days * 1440)))
            rows.append(order(user, at, float(rng.integers(5, 300))))
        for _ in range(int(rng.integers(0, 5))):
            at = start + pd.Timedelta(minutes=int(rng.integers(0, days * 1440)))
            rows.append(add(user, at, f"i{int(rng.integers(0, 4))}"))
    rows.append(view("end", start + days * DAY))
    birthdays = pd.DataFrame(
        {
            "user_id": [f"r{k:02d}" for k in range(users)],
            "birthday": [
                f"{int(rng.integers(11, 13)):02d}-{int(rng.integers(1, 29)):02d}"
                for _ in range(users)
            ],
        }
    )
    return rows, birthdays


@pytest.mark.parametrize(
    "campaign",
    [
        kind("win_back", min_lapse_days=2, lapse_days=10),
        kind(
            "win_back", lapse_rhythm_factor=None, lapse_days=5, min_lapse_days=0, max_lapse_days=9
        ),
        kind("purchase_anniversary", days_before=5, days_after=5),
        kind("frequent_buyer", min_orders=2, within_days=10),
        kind("birthday", days_before=1, days_after=1),
        kind("win_back", min_lapse_days=2, lapse_days=10, max_per_day=1, holdout_percent=30),
        kind("frequent_buyer", min_orders=2, within_days=10, max_per_day=1, max_total=4),
    ],
    ids=lambda c: f"{c.kind}-{c.max_per_day}",
)
def test_the_candidates_decide_as_every_user_at_every_sweep(campaign: Campaign) -> None:
    rows, birthdays = _random_log(7, users=25, days=60)
    rows.append(order("r00", pd.Timestamp("2025-11-21 08:00")))  # an anniversary inside
    fast = replay(campaign, rows, birthdays)
    slow = replay(campaign, rows, birthdays, exhaustive=True)
    columns = ["user_id", "occurrence", "decided_ns", "holdout"]
    assert fast.decisions[columns].equals(slow.decisions[columns])
    assert fast.per_day.equals(slow.per_day)
    assert fast.evaluated < slow.evaluated


@pytest.mark.parametrize(
    "campaign",
    [
        kind("abandoned_cart", cart_idle_hours=2, cart_max_age_hours=30),
        kind("abandoned_cart", max_per_day=1, holdout_percent=30),
    ],
    ids=["free", "capped"],
)
def test_cart_candidates_decide_as_every_user_at_every_hourly_sweep(campaign: Campaign) -> None:
    rows, _ = _random_log(11, users=12, days=8)
    fast = replay(campaign, rows)
    slow = replay(campaign, rows, exhaustive=True)
    columns = ["user_id", "occurrence", "decided_ns", "holdout"]
    assert len(fast.decisions) > 0
    assert fast.decisions[columns].equals(slow.decisions[columns])
    assert fast.per_day.equals(slow.per_day)


def test_the_new_user_kind_is_not_replayed_here() -> None:
    with pytest.raises(DataError, match="run_backtest"):
        replay(Campaign(), [order("a", T0)])


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, Path]:
    events = tmp_path / "events.csv"
    pd.DataFrame(_lapsing_crowd(4)).to_csv(events, index=False)
    campaigns = tmp_path / "campaigns.toml"
    campaigns.write_text(
        "[campaigns.come_back]\nkind = 'win_back'\nholdout_percent = 0\nmax_per_day = 3\n"
        "[campaigns.bday]\nkind = 'birthday'\n"
    )
    return {"events": events, "campaigns": campaigns}


def _backtest(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["backtest", *args])
    return result.exit_code, result.stdout, result.stderr


def test_backtest_command_replays_a_lifecycle_kind_and_writes_json(
    shop: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "report.json"
    base = ["--events", str(shop["events"]), "--campaigns-file", str(shop["campaigns"])]
    code, stdout, stderr = _backtest(
        *base, "--campaign", "come_back", "--json", "--output", str(target)
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc == json.loads(target.read_text())
    assert (doc["kind"], doc["issued"], doc["eligible"]["occurrences"]) == ("win_back", 4, 4)
    assert doc["per_day"]["2025-02-01"] == {
        "eligible": 4,
        "issued": 3,
        "holdout": 0,
        "budget_misses": 1,
    }
    assert doc["per_day_summary"]["budget_misses"]["max"] == 1
    code, stdout, _ = _backtest(*base, "--campaign", "come_back")
    assert code == 0
    assert "reach per UTC day" in stdout
    assert "bought within" in stdout


def test_backtest_command_reads_the_online_retail_layout(
    shop: dict[str, Path], tmp_path: Path
) -> None:
    lines = [
        # (invoice, customer, date, quantity, unit price): C-invoices are cancellations
        ("536365", "17850", "2025-01-01 12:00:00", 6, 2.55),
        ("536366", "17850", "2025-01-11 12:00:00", 2, 10.00),
        ("C536367", "17850", "2025-01-12 12:00:00", -1, 10.00),
        ("536368", "13047", "2025-01-01 09:00:00", 1, 5.00),
        ("536369", "12583", "2025-02-10 12:00:00", 1, 5.00),
    ]
    retail = tmp_path / "online_retail.csv"
    pd.DataFrame(
        {
            "InvoiceNo": [x[0] for x in lines],
            "StockCode": "85123A",
            "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "Quantity": [x[3] for x in lines],
            "InvoiceDate": [x[2] for x in lines],
            "UnitPrice": [x[4] for x in lines],
            "CustomerID": [x[1] for x in lines],
            "Country": "United Kingdom",
        }
    ).to_csv(retail, index=False)
    code, stdout, stderr = _backtest(
        "--events", str(retail), "--format", "online-retail",
        "--campaigns-file", str(shop["campaigns"]), "--campaign", "come_back", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["events"]["orders"] == 4  # the cancellation is no order
    assert doc["issued"] == 1  # 17850, lapsed on 1 Feb; 13047 has one order
    assert doc["per_day"]["2025-02-01"]["issued"] == 1
    # typical order 15.30 (6 x 2.55) and 20.00: median 17.65, 10 % of it
    assert doc["money"]["if_every_coupon_redeemed"] == "1.76"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--campaign", "bday"], "birthday"),
        (["--campaign", "come_back", "--format", "xml"], "--format"),
        (["--campaign", "come_back", "--every-hours", "0"], "--every-hours"),
    ],
)
def test_backtest_command_bad_input_is_one_line_and_exit_2(
    shop: dict[str, Path], extra: list[str], message: str
) -> None:
    base = ["--events", str(shop["events"]), "--campaigns-file", str(shop["campaigns"])]
    code, _, stderr = _backtest(*base, *extra)
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


# --- Online Retail -------------------------------------------------------------------------------


def test_online_retail_backtests_win_back_anniversary_and_frequent_buyer_in_seconds(
    online_retail_path: Path,
) -> None:
    activity = activity_from(online_retail_events(online_retail_path), source="online-retail")
    assert len(activity.orders) > 15_000
    for campaign in (
        kind("win_back", coupon_ttl_hours=14 * 24),
        kind("purchase_anniversary"),
        kind("frequent_buyer", min_orders=3, within_days=60, max_per_day=20),
    ):
        result = run_lifecycle_backtest(campaign, activity, every=timedelta(days=1))
        assert result.eligible_occurrences > 100, campaign.kind
        assert result.issued + result.holdout == len(result.decisions)
        assert result.decisions.duplicated(["user_id", "occurrence"]).sum() == 0
        if campaign.max_per_day is not None:
            assert result.per_day["issued"].max() <= campaign.max_per_day
    with pytest.raises(DataError, match="add_to_cart"):
        run_lifecycle_backtest(kind("abandoned_cart"), activity)
    with pytest.raises(DataError, match="birthday"):
        run_lifecycle_backtest(kind("birthday"), activity)
