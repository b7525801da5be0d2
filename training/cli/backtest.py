"""``recoffer backtest``: a campaign's rule replayed over a historical event log."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.errors import UsageProblem
from service.offers.campaigns import BUILT_IN
from training.cli.common import setup_logging
from training.cli.render import backtest_tables, err, errors, lifecycle_backtest_tables, out

if TYPE_CHECKING:
    import pandas as pd

    from service.offers.campaigns import Campaign
    from training.event_log import EventColumns


def backtest(
    events: Annotated[
        Path,
        typer.Option(
            "--events",
            help="Behaviour events (user_id, type, timestamp[, item_id]): "
            ".csv, .csv.gz or .parquet.",
        ),
    ],
    campaign_id: Annotated[str, typer.Option("--campaign", help="Campaign to replay.")] = BUILT_IN,
    campaigns_file: Annotated[
        Path | None,
        typer.Option(
            "--campaigns-file",
            envvar="RECOFFER_CAMPAIGNS_FILE",
            help="TOML file of campaigns, on top of the built-in one.",
            dir_okay=False,
        ),
    ] = None,
    users: Annotated[
        Path | None,
        typer.Option(
            help="Users file (user_id, signed_up_at): the sign-up time of users without a "
            "sign_up event; for the lifecycle kinds every other column is a user attribute "
            "(birthday as MM-DD or YYYY-MM-DD, email_verified as true/false...)."
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping, e.g. 'user=visitor,type=event,timestamp=ts,item=sku,"
            "signed_up_at=created' (signed_up_at: in --users)."
        ),
    ] = None,
    ignore_schedule: Annotated[
        bool,
        typer.Option(
            "--ignore-schedule",
            help="Treat the campaign as enabled and active over the whole log "
            "(for one not launched yet).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Layout of --events: 'events' (the columns above, with order_id, quantity and "
            "price of purchases when present) or 'online-retail' (the UCI Online Retail file, "
            "cleaned as `recoffer train` does; every line a purchase).",
        ),
    ] = "events",
    every_hours: Annotated[
        float | None,
        typer.Option(
            "--every-hours",
            help="Lifecycle kinds: hours between two sweeps (default 24; 1 for abandoned_cart).",
        ),
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="Currency of the log's prices, for the money figures (e.g. GBP)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Also write the JSON report to this file.", dir_okay=False),
    ] = None,
) -> None:
    """Replay a historical event log through a campaign's rule: reach, coupons, bought anyway.

    Every kind. win_back, purchase_anniversary, birthday, frequent_buyer and abandoned_cart
    are replayed as the scheduler sweeps them (daily; abandoned_cart hourly; --every-hours):
    at each sweep the service's rule on the facts the log gives as of then, once per user
    per occurrence, the same holdout, both sides of it facing max_per_day and max_total, a
    budget miss tried again at the next sweep. Their report: reach per day (eligible, issued,
    held out, budget misses; median and max), the discount cost if every coupon were redeemed
    at the customer's typical order value and on the orders placed anyway, and how many of
    the treated and of the held-out customers bought in the conversion window without a
    coupon. birthday needs --users with the birthday attribute's column, abandoned_cart
    add_to_cart events; a log without them is refused in one line.

    new_user_high_intent:

    Same rule as the service: views counted inside the window after sign-up (sign_up event,
    else --users, else the first event), the same holdout draw, no purchase before
    qualifying. Coupons go out in order of qualification under max_per_day (UTC days) and
    max_total; holdout users get none.

    JSON keys: campaign, rule, schedule_ignored, events {source, rows, ignored_rows, start,
    end}, users, new_users, start_from {sign_up_event, users_file, first_event}, qualifying,
    qualifying_per_day {date: n}, not_qualifying {too_few_views, campaign_inactive, not_new,
    already_purchased}, holdout, treated, expected_coupons, coupons_per_day {date: n}, capped
    {per_day, total}, purchases_in_log, bought_anyway {users, share, would_get_coupon,
    censored} and non_qualifying_new_users {users, bought, share} (both null without
    purchases in the log).

    JSON keys of the lifecycle kinds: campaign, kind, rule, schedule_ignored, events, sweeps,
    eligible {occurrences, users}, issued, holdout, budget_misses_never_decided,
    already_decided, refused_at_sweep, per_day_summary {eligible, issued, holdout,
    budget_misses: {median, max, total}}, per_day {date: {...}}, money, bought_anyway
    {conversion_window_hours, treated, holdout: {decided, bought, share, censored}}.

    Examples:

      recoffer backtest --events events.csv.gz --users users.csv

      recoffer backtest --events ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --campaign come_back --campaigns-file campaigns.toml \\
          --currency GBP --output win_back.json

      recoffer backtest --events events.parquet --campaign big_spenders_welcome \\
          --campaigns-file campaigns.toml --json
    """
    from service.offers.campaigns import load_campaigns
    from training.backtest import run_backtest
    from training.event_log import EventColumns, read_events, read_users

    setup_logging(False)
    with errors():
        campaigns = load_campaigns(campaigns_file)  # CampaignConfigError: exit 2
        if campaign_id not in campaigns:
            raise UsageProblem(
                f"unknown campaign {campaign_id!r}; known: {', '.join(campaigns)}"
                + ("" if campaigns_file else " (pass --campaigns-file for others)")
            )
        if fmt not in EVENT_FORMATS:
            raise UsageProblem(
                f"--format: unknown layout {fmt!r}; expected one of {', '.join(EVENT_FORMATS)}"
            )
        if fmt == "online-retail" and columns:
            raise UsageProblem("--columns: the online-retail layout has fixed columns")
        if every_hours is not None and not 0 < every_hours <= 24 * 31:
            raise UsageProblem("--every-hours: must be more than 0 and at most 744 (31 days)")
        campaign = campaigns[campaign_id]
        mapping = EventColumns.parse(columns) if columns else EventColumns()
        if campaign.time_driven:
            _lifecycle(
                campaign,
                events,
                fmt,
                mapping,
                users,
                every_hours,
                ignore_schedule,
                currency,
                as_json,
                output,
            )
            return
        if fmt == "online-retail":
            frame = online_retail_events(events)
        else:
            frame = read_events(events, mapping, need_item=campaign.count == "distinct_items")
        people = read_users(users, mapping) if users is not None else None
        result = run_backtest(
            campaign, frame, people, source=str(events), ignore_schedule=ignore_schedule
        )
    _report(result.to_json(), output, as_json, backtest_tables, result.ignored_rows, result.rows)
    inactive = result.not_qualifying["campaign_inactive"]
    if inactive:
        err.print(
            f"warning: {inactive:,} users reached the views while the campaign was inactive "
            "(--ignore-schedule replays it as if always active)",
            markup=False,
        )
    if result.bought_anyway is not None and result.bought_anyway.censored:
        err.print(
            f"note: the log ends inside the conversion window of "
            f"{result.bought_anyway.censored:,} qualifying users; 'bought anyway' may be low",
            markup=False,
        )


EVENT_FORMATS = ("events", "online-retail")


def online_retail_events(path: Path) -> pd.DataFrame:
    """The UCI Online Retail file as purchase events (cleaned as ``recoffer train`` does)."""
    import pandas as pd

    from training.data.formats import load_purchases

    lines = load_purchases(path, "online-retail").frame
    return pd.DataFrame(
        {
            "user_id": lines["user_id"],
            "type": "purchase",
            "timestamp": lines["timestamp"],
            "item_id": lines["item_id"],
            "order_id": lines["order_id"],
            "quantity": lines["quantity"],
            "price": lines["price"],
        }
    )


def _lifecycle(
    campaign: Campaign,
    events: Path,
    fmt: str,
    mapping: EventColumns,
    users: Path | None,
    every_hours: float | None,
    ignore_schedule: bool,
    currency: str | None,
    as_json: bool,
    output: Path | None,
) -> None:
    """A time-driven kind: the sweeps replayed (training.backtest_kinds)."""
    from training.backtest_kinds import activity_from, run_lifecycle_backtest
    from training.event_log import read_events, read_user_attributes

    with errors():
        frame = (
            online_retail_events(events)
            if fmt == "online-retail"
            else read_events(events, mapping, need_item=False)
        )
        people = read_user_attributes(users, mapping) if users is not None else None
        activity = activity_from(frame, people, source=str(events))
        result = run_lifecycle_backtest(
            campaign,
            activity,
            users_given=users is not None,
            every=None if every_hours is None else timedelta(hours=every_hours),
            ignore_schedule=ignore_schedule,
            currency=currency,
        )
    _report(
        result.to_json(),
        output,
        as_json,
        lifecycle_backtest_tables,
        activity.ignored_rows,
        activity.rows,
    )
    if not result.sweeps:
        err.print(
            "warning: the campaign is not active at any moment of the log (--ignore-schedule "
            "replays it as if always active)",
            markup=False,
        )
    refused = result.refused_at_sweep
    if refused:
        err.print(
            "note: candidates refused at a sweep by the rules every kind shares: "
            + ", ".join(f"{k} {v:,}" for k, v in refused.items()),
            markup=False,
        )


def _report(
    document: dict[str, Any],
    output: Path | None,
    as_json: bool,
    tables: Callable[[dict[str, Any]], Sequence[Any]],
    ignored_rows: int,
    rows: int,
) -> None:
    """Write the report to ``--output``, print it (JSON or tables), warn of ignored rows."""
    _write(document, output)
    if as_json:
        out.print(json.dumps(document), markup=False)
    else:
        out.print(*tables(document))
    if ignored_rows:
        err.print(
            f"warning: {ignored_rows:,} of {rows:,} rows ignored (no user, no timestamp, or an "
            "unknown type)",
            markup=False,
        )


def _write(document: dict[str, Any], output: Path | None) -> None:
    if output is None:
        return
    with errors():
        try:
            output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageProblem(f"--output: cannot write {output} ({exc.strerror})") from None
