"""``recoffer backtest``: a campaign's rule replayed over a historical event log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.errors import UsageProblem
from service.offers.campaigns import BUILT_IN
from training.cli.common import setup_logging
from training.cli.render import backtest_tables, err, errors, out


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
            "sign_up event."
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
) -> None:
    """Replay a historical event log through a campaign's rule: reach, coupons, bought anyway.

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

    Examples:

      recoffer backtest --events events.csv.gz --users users.csv

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
        campaign = campaigns[campaign_id]
        mapping = EventColumns.parse(columns) if columns else EventColumns()
        frame = read_events(events, mapping, need_item=campaign.count == "distinct_items")
        people = read_users(users, mapping) if users is not None else None
        result = run_backtest(
            campaign, frame, people, source=str(events), ignore_schedule=ignore_schedule
        )
    document = result.to_json()
    if as_json:
        out.print(json.dumps(document), markup=False)
    else:
        out.print(*backtest_tables(document))
    if result.ignored_rows:
        err.print(
            f"warning: {result.ignored_rows:,} of {result.rows:,} rows ignored (no user, no "
            "timestamp, or an unknown type)",
            markup=False,
        )
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
