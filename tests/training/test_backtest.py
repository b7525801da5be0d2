"""``recoffer backtest``: replaying an event log through a campaign's rule, offline."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from service.errors import DataError
from service.offers.campaigns import Campaign
from service.offers.rules import in_holdout
from training.backtest import Backtest, run_backtest
from training.cli import app
from training.event_log import EventColumns
from training.synthetic.shop import SyntheticShop

runner = CliRunner()
T0 = pd.Timestamp("2025-03-03 09:00:00")
FIRST_VIEW = T0 + pd.Timedelta(minutes=30)
EVERY = pd.Timedelta(minutes=10)
NO_HOLDOUT = Campaign(holdout_percent=0)
JSON_KEYS = {
    "campaign",
    "rule",
    "schedule_ignored",
    "events",
    "users",
    "new_users",
    "start_from",
    "qualifying",
    "qualifying_per_day",
    "not_qualifying",
    "holdout",
    "treated",
    "expected_coupons",
    "coupons_per_day",
    "capped",
    "purchases_in_log",
    "bought_anyway",
    "non_qualifying_new_users",
}


def hours(h: float) -> pd.Timedelta:
    return pd.Timedelta(hours=h)


def event(user: str, kind: str, at: pd.Timestamp, item: str | None = None) -> dict[str, Any]:
    return {"user_id": user, "type": kind, "timestamp": at, "item_id": item}


def signs_up(user: str, at: pd.Timestamp = T0) -> list[dict[str, Any]]:
    return [event(user, "sign_up", at)]


def views(
    user: str,
    n: int,
    first: pd.Timestamp = FIRST_VIEW,
    every: pd.Timedelta = EVERY,
    items: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """``n`` views, ``every`` apart from ``first``; a different product each unless ``items``."""
    names = list(items) if items is not None else [f"{user}-i{k}" for k in range(n)]
    return [event(user, "view", first + k * every, names[k]) for k in range(n)]


def buys(user: str, at: pd.Timestamp) -> list[dict[str, Any]]:
    return [event(user, "purchase", at, "sku-1")]


def log(*parts: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([row for part in parts for row in part])


def replay(campaign: Campaign, *parts: list[dict[str, Any]], **options: Any) -> Backtest:
    return run_backtest(campaign, log(*parts), **options)


# --- the rule ------------------------------------------------------------------------------


def test_eleven_views_within_a_day_of_sign_up_qualify_at_the_eleventh() -> None:
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 11))
    assert result.qualifying == 1
    assert result.decisions.loc["u1", "qualified_at"] == T0 + hours(0.5) + 10 * pd.Timedelta(
        minutes=10
    )
    assert result.expected_coupons == 1


def test_ten_views_do_not_qualify() -> None:
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 10))
    assert result.qualifying == 0
    assert result.not_qualifying["too_few_views"] == 1


def test_the_eleventh_view_at_25_hours_after_sign_up_does_not_count() -> None:
    late = [event("u1", "view", T0 + hours(25), "late")]
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 10), late)
    assert result.qualifying == 0
    # ... but one at exactly 24 h does: the window is closed at both ends
    on_time = [event("u1", "view", T0 + hours(24), "late")]
    assert replay(NO_HOLDOUT, signs_up("u1"), views("u1", 10), on_time).qualifying == 1


def test_views_before_sign_up_do_not_count() -> None:
    early = views("u1", 5, first=T0 - hours(2))
    result = replay(NO_HOLDOUT, signs_up("u1"), early, views("u1", 10))
    assert result.qualifying == 0


def test_a_purchase_before_qualifying_disqualifies() -> None:
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 11), buys("u1", T0 + hours(1)))
    assert result.qualifying == 0
    assert result.not_qualifying["already_purchased"] == 1
    assert result.decisions.loc["u1", "reason"] == "already_purchased"


def test_a_purchase_at_the_qualifying_moment_counts_as_before() -> None:
    eleventh = T0 + hours(0.5) + 10 * pd.Timedelta(minutes=10)
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 11), buys("u1", eleventh))
    assert result.qualifying == 0


def test_a_purchase_does_not_disqualify_when_the_campaign_allows_buyers() -> None:
    campaign = Campaign(holdout_percent=0, require_no_purchase=False)
    result = replay(campaign, signs_up("u1"), views("u1", 11), buys("u1", T0 + hours(1)))
    assert result.qualifying == 1
    assert result.bought_anyway is not None
    assert result.bought_anyway.users == 0  # that purchase came before qualifying


def test_a_purchase_after_qualifying_counts_as_bought_anyway() -> None:
    result = replay(
        NO_HOLDOUT,
        signs_up("u1"),
        views("u1", 11),
        buys("u1", T0 + hours(5)),
        signs_up("u2"),
        views("u2", 11),
        buys("u2", T0 + hours(40)),  # outside the 24 h conversion window
        signs_up("u3"),
        views("u3", 11),
        views("u4", 11, first=T0 + hours(30)),  # the log goes on for another 30 h
    )
    assert result.qualifying == 4
    assert result.bought_anyway is not None
    assert result.bought_anyway.users == 1
    assert result.bought_anyway.share == 0.25
    assert result.bought_anyway.would_get_coupon == 1  # no holdout, no caps
    assert result.bought_anyway.censored == 1  # u4's window runs past the end of the log
    assert result.decisions["bought_after"].to_dict() == {
        "u1": True,
        "u2": False,
        "u3": False,
        "u4": False,
    }


def test_non_qualifying_new_users_purchase_share_is_reported_for_comparison() -> None:
    result = replay(
        NO_HOLDOUT,
        signs_up("q"),
        views("q", 11),
        signs_up("a"),
        views("a", 3),
        buys("a", T0 + hours(10)),
        signs_up("b"),
        views("b", 3),
        buys("b", T0 + hours(60)),  # after window + conversion window (48 h)
        signs_up("c"),
        views("c", 2),
        views("z", 1, first=T0 + hours(70)),
    )
    others = result.non_qualifying_new_users
    assert others is not None
    assert (others.users, others.bought, others.share) == (4, 1, 0.25)  # a, b, c, z


def test_without_purchases_in_the_log_the_purchase_fields_are_null() -> None:
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 11))
    assert result.purchases_in_log is False
    doc = result.to_json()
    assert doc["bought_anyway"] is None
    assert doc["non_qualifying_new_users"] is None


def test_distinct_items_counts_products_not_view_events() -> None:
    distinct = Campaign(holdout_percent=0, count="distinct_items")
    repeated = views("u1", 11, items=[f"i{k % 10}" for k in range(11)])  # 10 products
    assert replay(NO_HOLDOUT, signs_up("u1"), repeated).qualifying == 1
    assert replay(distinct, signs_up("u1"), repeated).qualifying == 0
    # the 11th distinct product arrives with the 13th view: that is the moment
    more = views("u1", 13, items=[*(f"i{k % 10}" for k in range(12)), "i10"])
    result = replay(distinct, signs_up("u1"), more)
    assert result.qualifying == 1
    assert result.decisions.loc["u1", "qualified_at"] == T0 + hours(0.5) + 12 * pd.Timedelta(
        minutes=10
    )


def test_min_views_comes_from_the_campaign() -> None:
    result = replay(Campaign(holdout_percent=0, min_views=3), signs_up("u1"), views("u1", 3))
    assert result.qualifying == 1


# --- where the window starts ---------------------------------------------------------------


def test_sign_up_comes_from_the_event_then_the_users_file_then_the_first_event() -> None:
    users = pd.DataFrame({"user_id": ["a", "b"], "signed_up_at": [T0 - hours(30), T0 - hours(30)]})
    result = run_backtest(
        NO_HOLDOUT,
        log(signs_up("a"), views("a", 11), views("b", 11), views("c", 11)),
        users,
    )
    sources = result.decisions["start_from"].to_dict()
    assert sources == {"a": "sign_up_event", "b": "users_file", "c": "first_event"}
    # b signed up 30 h before its views: no longer new, and not a new user of the log
    assert result.decisions["reason"].to_dict() == {"a": "", "b": "too_few_views", "c": ""}
    assert result.new_users == 2
    assert result.start_from == {"sign_up_event": 1, "users_file": 1, "first_event": 1}


# --- schedule, holdout, caps ---------------------------------------------------------------


def test_a_campaign_not_active_yet_is_replayed_with_ignore_schedule() -> None:
    later = Campaign(holdout_percent=0, active_from=datetime(2030, 1, 1, tzinfo=UTC))
    result = replay(later, signs_up("u1"), views("u1", 11))
    assert result.qualifying == 0
    assert result.not_qualifying["campaign_inactive"] == 1
    replayed = replay(later, signs_up("u1"), views("u1", 11), ignore_schedule=True)
    assert replayed.qualifying == 1
    assert replayed.schedule_ignored is True


def test_a_campaign_starting_mid_window_qualifies_at_the_first_view_once_active() -> None:
    starts = (T0 + hours(3)).tz_localize(UTC).to_pydatetime()
    campaign = Campaign(holdout_percent=0, active_from=starts)
    result = replay(campaign, signs_up("u1"), views("u1", 11), views("u1", 1, first=T0 + hours(4)))
    assert result.decisions.loc["u1", "qualified_at"] == T0 + hours(4)


def test_holdout_users_are_drawn_like_the_service_and_get_no_coupon() -> None:
    campaign = Campaign(holdout_percent=50, max_total=5)
    parts = [signs_up(f"u{k}") + views(f"u{k}", 11) for k in range(40)]
    result = replay(campaign, *parts)
    held = {u for u in result.decisions.index if in_holdout(campaign.campaign_id, u, 50)}
    assert set(result.decisions.index[result.decisions["holdout"]]) == held
    assert not (result.decisions["holdout"] & result.decisions["coupon"]).any()
    # the total cap counts coupons only: holdout users use no budget, but once it is full a
    # held-out user is turned away too, as the service does (a budget miss on both sides)
    assert result.expected_coupons == 5
    order = sorted(result.decisions.index)  # qualified at one moment: in order of user id
    fifth = [u for u in order if u not in held][4]
    before = order[: order.index(fifth) + 1]
    assert result.holdout == len([u for u in before if u in held])
    assert 0 < result.holdout < len(held)
    assert result.treated == 40 - len(held)
    assert result.capped_by_total == 40 - 5 - result.holdout
    assert set(result.decisions.index[result.decisions["capped"]]) == set(order) - set(before)


def test_daily_and_total_caps_cut_expected_coupons_in_order_of_qualification() -> None:
    day_one = [
        signs_up(f"a{k}", T0 + hours(k)) + views(f"a{k}", 11, T0 + hours(k)) for k in range(5)
    ]
    day_two = [
        signs_up(f"b{k}", T0 + hours(24 + k)) + views(f"b{k}", 11, T0 + hours(24 + k))
        for k in range(3)
    ]
    daily = replay(Campaign(holdout_percent=0, max_per_day=2), *day_one, *day_two)
    assert daily.qualifying == 8
    assert daily.qualifying_per_day == {"2025-03-03": 5, "2025-03-04": 3}
    assert daily.coupons_per_day == {"2025-03-03": 2, "2025-03-04": 2}
    assert daily.expected_coupons == 4
    assert daily.capped_by_day == 4
    coupons = daily.decisions.index[daily.decisions["coupon"]]
    assert sorted(coupons) == ["a0", "a1", "b0", "b1"]  # the earliest of each day

    both = replay(Campaign(holdout_percent=0, max_per_day=2, max_total=3), *day_one, *day_two)
    assert both.expected_coupons == 3
    # in order, as the service decides: a2-a4 meet the full day, then b1 and b2 the full total
    # (their day has room: b0 is its only coupon)
    assert (both.capped_by_day, both.capped_by_total) == (3, 2)
    assert sorted(both.decisions.index[both.decisions["coupon"]]) == ["a0", "a1", "b0"]


def test_days_are_utc_days_and_every_day_of_the_log_is_listed() -> None:
    berlin = pd.Timestamp("2025-03-04 00:30:00", tz="Europe/Berlin")  # 2025-03-03 23:30 UTC
    frame = log(
        [event("u1", "sign_up", berlin)],
        [event("u1", "view", berlin + pd.Timedelta(minutes=k), f"i{k}") for k in range(11)],
        [event("z", "view", berlin + hours(60), "i0")],
    )
    result = run_backtest(NO_HOLDOUT, frame)
    assert result.qualifying_per_day == {
        "2025-03-03": 1,
        "2025-03-04": 0,
        "2025-03-05": 0,
        "2025-03-06": 0,
    }
    assert result.log_start == pd.Timestamp("2025-03-03 23:30:00")


# --- input ---------------------------------------------------------------------------------


def test_rows_without_user_timestamp_or_known_type_are_ignored_and_counted() -> None:
    junk = [
        event("u1", "click", T0 + hours(1), "i1"),
        {"user_id": None, "type": "view", "timestamp": T0, "item_id": "i1"},
        {"user_id": "u1", "type": "view", "timestamp": None, "item_id": "i1"},
    ]
    result = replay(NO_HOLDOUT, signs_up("u1"), views("u1", 11), junk)
    assert (result.rows, result.ignored_rows) == (15, 3)
    assert result.qualifying == 1


def test_types_are_read_case_insensitively_and_ids_as_text() -> None:
    frame = log(signs_up("7"), views("7", 11))
    frame["type"] = frame["type"].str.upper()
    frame["user_id"] = 7
    result = run_backtest(NO_HOLDOUT, frame)
    assert list(result.decisions.index) == ["7"]
    assert result.qualifying == 1


def test_a_missing_column_and_an_empty_log_are_data_errors() -> None:
    with pytest.raises(DataError, match="'item_id' not found"):
        run_backtest(Campaign(count="distinct_items"), log(views("u1", 3)).drop(columns="item_id"))
    with pytest.raises(DataError, match="no usable events"):
        run_backtest(NO_HOLDOUT, log([event("u1", "click", T0)]))


def test_column_mapping_parses_roles_and_refuses_unknown_ones() -> None:
    mapping = EventColumns.parse("user=visitor, type=event,timestamp=ts")
    assert (mapping.user, mapping.type, mapping.timestamp, mapping.item) == (
        "visitor",
        "event",
        "ts",
        "item_id",
    )
    with pytest.raises(DataError, match="unknown role 'colour'"):
        EventColumns.parse("colour=red")
    with pytest.raises(DataError, match="different columns"):
        EventColumns.parse("type=ts,timestamp=ts")


# --- the synthetic shop --------------------------------------------------------------------


def _reference_qualifiers(events: pd.DataFrame, users: pd.DataFrame) -> set[str]:
    """The rule, one user at a time, in plain Python (no schedule, default campaign)."""
    signed = dict(zip(users["user_id"], users["signed_up_at"], strict=True))
    chosen = set()
    for user, rows in events.sort_values("timestamp", kind="stable").groupby("user_id"):
        start = signed[str(user)]
        seen = 0
        for kind, at in zip(rows["type"], rows["timestamp"], strict=True):
            if kind == "purchase":
                break
            if kind == "view" and start <= at <= start + hours(24):
                seen += 1
                if seen == 11:
                    chosen.add(str(user))
                    break
    return chosen


def test_the_tiny_synthetic_shop_matches_a_plain_replay_of_the_rule(
    tiny_shop: SyntheticShop,
) -> None:
    events, users = tiny_shop.events, tiny_shop.users
    assert {"user_id", "item_id", "type", "timestamp"} <= set(events.columns)
    assert {"user_id", "signed_up_at"} <= set(users.columns)
    result = run_backtest(Campaign(), events, users, source="tiny")

    qualified = set(result.decisions.index[result.decisions["reason"] == ""])
    assert qualified == _reference_qualifiers(events, users)
    assert result.qualifying > 0
    assert result.users == events["user_id"].nunique()
    assert result.qualifying + sum(result.not_qualifying.values()) == result.users
    assert sum(result.qualifying_per_day.values()) == result.qualifying
    assert result.holdout + result.treated == result.qualifying
    assert result.expected_coupons == result.treated  # no caps by default
    assert result.start_from["users_file"] == result.users
    assert result.purchases_in_log
    assert set(result.to_json()) == JSON_KEYS


# --- the command ---------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    frame = log(
        signs_up("u1"),
        views("u1", 11),
        buys("u1", T0 + hours(6)),
        signs_up("u2"),
        views("u2", 4),
    )
    events = tmp_path / "events.csv"
    frame.to_csv(events, index=False)
    renamed = tmp_path / "events.parquet"
    frame.rename(columns={"user_id": "visitor", "type": "event", "timestamp": "ts"}).to_parquet(
        renamed
    )
    campaigns = tmp_path / "campaigns.toml"
    campaigns.write_text(
        '[campaigns.eager]\nmin_views = 3\nholdout_percent = 0\ncount = "distinct_items"\n'
    )
    return {"events": events, "parquet": renamed, "campaigns": campaigns}


def _backtest(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["backtest", *args])
    return result.exit_code, result.stdout, result.stderr


def test_backtest_json_prints_one_object_with_the_documented_keys(
    files: dict[str, Path],
) -> None:
    code, stdout, stderr = _backtest("--events", str(files["events"]), "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert set(doc) == JSON_KEYS
    assert doc["campaign"] == "new_user_high_intent"
    assert (doc["users"], doc["new_users"], doc["qualifying"]) == (2, 2, 1)
    assert doc["qualifying_per_day"] == {"2025-03-03": 1}
    assert doc["bought_anyway"]["users"] == 1
    assert doc["rule"]["min_views"] == 11


def test_backtest_prints_a_table_for_people(files: dict[str, Path]) -> None:
    code, stdout, _ = _backtest("--events", str(files["events"]))
    assert code == 0
    assert "qualifying" in stdout
    assert "expected coupons" in stdout
    assert "2025-03-03" in stdout


def test_backtest_reads_a_campaigns_file_and_a_column_mapping(files: dict[str, Path]) -> None:
    code, stdout, stderr = _backtest(
        "--events",
        str(files["parquet"]),
        "--columns",
        "user=visitor,type=event,timestamp=ts",
        "--campaign",
        "eager",
        "--campaigns-file",
        str(files["campaigns"]),
        "--json",
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["rule"]["count"] == "distinct_items"
    assert doc["qualifying"] == 2  # 3 distinct products are enough for both
    assert doc["expected_coupons"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--campaign", "nope"], "unknown campaign 'nope'"),
        (["--columns", "type=kind"], "'kind' not found"),
        (["--users", "{events}"], "'signed_up_at' not found"),
        (["--campaigns-file", "{missing}"], "cannot read"),
    ],
)
def test_backtest_bad_input_is_one_line_and_exit_2(
    files: dict[str, Path], args: list[str], message: str
) -> None:
    filled = [
        a.format(events=files["events"], missing=files["events"].parent / "x.toml") for a in args
    ]
    code, stdout, stderr = _backtest("--events", str(files["events"]), *filled)
    assert code == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert stdout == ""


def test_backtest_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, stderr = _backtest("--events", str(tmp_path / "nope.csv"))
    assert code == 2
    assert "file not found" in stderr


# --- the abuse rules (issue 12, item 7) ----------------------------------------------------


def test_a_minimum_account_age_counts_from_the_sign_up_the_service_would_know() -> None:
    aged = Campaign(holdout_percent=0, min_account_age_hours=1)
    # u1 signed up (the event sets signed_up_at); its 11th view comes 2 h 10 min after it
    told = replay(aged, signs_up("u1"), views("u1", 11))
    assert told.qualifying == 1
    # u2 never told the shop when it signed up: the service cannot check its age either
    untold = replay(aged, views("u2", 11))
    assert untold.qualifying == 0
    assert untold.not_qualifying["account_age_unknown"] == 1
    # u3's 11th view comes sooner than the minimum age
    early = replay(
        Campaign(holdout_percent=0, min_account_age_hours=3), signs_up("u3"), views("u3", 11)
    )
    assert early.not_qualifying["account_too_new"] == 1


def test_a_campaign_needing_attributes_cannot_be_backtested_and_says_why() -> None:
    verified = Campaign(holdout_percent=0, require_attributes=["email_verified"])
    with pytest.raises(DataError, match="email_verified"):
        replay(verified, signs_up("u1"), views("u1", 11))
