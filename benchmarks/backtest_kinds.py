"""``recoffer backtest`` of every lifecycle kind on Online Retail (issue 12, item 8).

The campaigns of ``benchmarks/backtest_kinds.toml``: ``win_back``, ``purchase_anniversary``
and ``frequent_buyer`` are replayed over the whole log (every line a purchase, cleaned as
``recoffer train`` cleans it), each ``--repeats`` times in a fresh process, timed by the
process's wall clock (imports and reading the file included); the report of the last run is
kept (the replay is deterministic: every run gives the same figures). ``birthday`` and
``abandoned_cart`` are run once each to record the line with which the command refuses them:
Online Retail has neither a birthday attribute nor add-to-cart events.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

from benchmarks.common import PYTHON, ROOT, median, save, this_command

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
REPLAYED = ("come_back", "first_order_anniversary", "thank_you")
REFUSED = ("birthday", "cart_reminder")


def backtest_command(campaign: str) -> list[str]:
    """The command line of one backtest (as the docs quote it, ``recoffer`` for the module)."""
    return [
        "recoffer", "backtest", "--events", "../shared/data/online-retail/online_retail.csv.gz",
        "--format", "online-retail", "--campaigns-file", "benchmarks/backtest_kinds.toml",
        "--campaign", campaign, "--currency", "GBP", "--json",
    ]  # fmt: skip


def run(campaign: str) -> tuple[int, str, str, float]:
    # the quoted command itself, from the repository root (its paths are relative to it)
    command = [PYTHON, "-m", "training.cli", *backtest_command(campaign)[1:]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"Online Retail not found at {DATA}")
    kinds: dict[str, Any] = {}
    for campaign in REPLAYED:
        seconds: list[float] = []
        report: dict[str, Any] = {}
        for _ in range(args.repeats):
            code, stdout, stderr, wall = run(campaign)
            if code != 0:
                raise SystemExit(f"backtest of {campaign} failed: {stderr[-2000:]}")
            seconds.append(wall)
            report = json.loads(stdout)
        report.pop("per_day")  # a year of days: the summary and the busiest days are kept
        kinds[campaign] = {
            "command": " ".join(backtest_command(campaign)),
            "wall_seconds_median": median(seconds),
            "wall_seconds": seconds,
            "report": report,
        }
        print(f"{campaign}: {median(seconds):.1f} s", flush=True)
    refused: dict[str, Any] = {}
    for campaign in REFUSED:
        code, _, stderr, _ = run(campaign)
        refused[campaign] = {
            "command": " ".join(backtest_command(campaign)),
            "exit_code": code,
            "message": stderr.strip(),
        }
    save(
        "backtest_kinds",
        this_command(),
        {"repeats": args.repeats, "kinds": kinds, "refused": refused},
    )


def render(doc: dict[str, Any]) -> list[str]:
    """The markdown section of docs/benchmarks.md."""
    m = doc["machine"]
    out = [
        "## Online Retail: the backtest of each kind",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, a machine shared "
        "with other agents at the time (times are medians of "
        f"{doc['repeats']} runs, each a fresh process reading the file). Command: "
        f"`{doc['command']}`; each campaign is the command quoted under it, with the campaigns "
        "of `benchmarks/backtest_kinds.toml`.",
        "",
        "`recoffer backtest` replays the log as the scheduler sweeps a campaign (daily, "
        "00:00 UTC), with the service's rule on the facts as of each sweep, one decision per "
        "customer per occurrence, the same holdout draw, and the caps facing both sides of the "
        'holdout (README, "Backtesting each kind"). Online Retail starts on 2010-12-01: a '
        "customer's orders before it are unknown, so early in the log rhythms are short, and "
        "the anniversary of a first order seen in the log is only reached by the customers "
        'first seen in its first weeks. No coupon was used in this history: "bought anyway" '
        "is what the treated and the held-out customers did without one, the baseline an "
        'uplift has to beat. "replay": the sweeps, the rule and the outcomes, timed inside '
        'the last run; "whole command": the process, reading and cleaning the file included '
        f"({_first(doc)['events']['rows']:,} purchase lines kept, "
        f"{_first(doc)['events']['users']:,} customers, {_first(doc)['events']['orders']:,} "
        "orders).",
        "",
    ]
    header = (
        "| campaign (kind) | eligible occurrences (customers) | issued | held out | "
        "per day: median / max eligible | max issued | budget misses | deduplicated | "
        "replay | whole command |"
    )
    out += [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for campaign, run in doc["kinds"].items():
        r = run["report"]
        day = r["per_day_summary"]
        out.append(
            f"| `{campaign}` ({r['kind']}) | {r['eligible']['occurrences']:,} "
            f"({r['eligible']['users']:,}) | {r['issued']:,} | {r['holdout']:,} | "
            f"{day['eligible']['median']:g} / {day['eligible']['max']:,} | "
            f"{day['issued']['max']:,} | {day['budget_misses']['total']:,} | "
            f"{r['already_decided']:,} | {r['sweeps']['seconds']:.2f} s | "
            f"{run['wall_seconds_median']:.1f} s |"
        )
    out += [
        "",
        f"Money (estimates from the log's prices, {_first(doc)['money']['currency']}) and the "
        "customers who bought in the "
        "conversion window (the coupon's two weeks) without a coupon:",
        "",
        "| campaign | discount | cost if every coupon were redeemed at the customer's typical "
        "order | on the orders placed anyway | treated who bought | held out who bought |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for campaign, run in doc["kinds"].items():
        r = run["report"]
        money, bought = r["money"], r["bought_anyway"]
        t, h = bought["treated"], bought["holdout"]
        out.append(
            f"| `{campaign}` | {money['discount']} | {money['if_every_coupon_redeemed']} | "
            f"{money['on_orders_placed_anyway']} ({money['orders_placed_anyway']:,} orders) | "
            f"{t['bought']:,} of {t['decided']:,} ({_percent(t['share'])}) | "
            f"{h['bought']:,} of {h['decided']:,} ({_percent(h['share'])}) |"
        )
    out += ["", "Commands:", ""]
    for campaign, run in doc["kinds"].items():
        out.append(f"- `{campaign}`: `{run['command']}`")
    out += [
        "",
        "Not replayable on Online Retail, refused in one line (exit code 2):",
        "",
    ]
    for campaign, refusal in doc["refused"].items():
        out.append(f"- `{campaign}` (exit {refusal['exit_code']}): `{refusal['message']}`")
    out.append("")
    return out


def _first(doc: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = next(iter(doc["kinds"].values()))["report"]
    return report


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f} %"


if __name__ == "__main__":
    main()
