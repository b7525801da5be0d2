"""``recoffer``: the command line. Parses, calls the pipeline or the registry, prints.

Exit codes: 0 success, 2 bad input (file, column, value, option), 1 any other failure.
Results go to stdout (a table, or one JSON object with ``--json``); progress goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from service.artifact import ModelStore, load_artifact
from service.errors import RecofferError, UsageProblem, kind_of, public_detail
from service.scoring import PROTOCOLS
from training.data.formats import FORMATS, ColumnMapping
from training.evaluate import METRICS
from training.models import ModelParams

log = logging.getLogger("recoffer")

app = typer.Typer(
    name="recoffer",
    help="Train, evaluate and publish recommendation models for recoffer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# rich falls back to 80 columns when not writing to a terminal; tables need a little more
_WIDTH = None if sys.stdout.isatty() else 120
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)
CANDIDATE_ORDER = ("popularity", "repeat", "als", "als_signals", "ease", "blend", "served")


ModelDir = Annotated[
    Path,
    typer.Option(
        "--model-dir",
        envvar="RECOFFER_MODEL_DIR",
        help="Model root: versions/ and registry.json live here.",
        file_okay=False,
    ),
]
DEFAULT_MODEL_DIR = Path("var/models")
DEFAULT_SIGNAL_WEIGHTS = ModelParams().signal_weights


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"recoffer: error: {message}", markup=False)
    return typer.Exit(code)


def _progress(message: str) -> None:
    err.print(f"[dim]·[/dim] {message}")


def metrics_tables(
    metrics: dict[str, dict[str, dict[str, float]]], served: dict[str, str]
) -> list[Table]:
    """One table per protocol, one row per candidate; the served candidate marked with *."""
    tables = []
    for protocol in PROTOCOLS:
        rows = metrics.get(protocol, {})
        table = Table(title=f"protocol {protocol}: test split, k = 10", title_justify="left")
        table.add_column("candidate")
        for name in METRICS:
            table.add_column(name.replace("_", " "), justify="right")
        table.add_column("users", justify="right")
        order = sorted(rows, key=lambda n: (*CANDIDATE_ORDER, n).index(n))
        for name in order:
            row = rows[name]
            if name == "served" and name not in served.values():
                continue
            label = f"{name} *" if served.get(protocol) == name else name
            table.add_row(
                label,
                *(f"{row[f'{m}@10']:.4f}" for m in METRICS),
                f"{int(row.get('users', 0)):,}",
            )
        tables.append(table)
    if tables:
        tables[-1].caption = "* served (chosen on the validation split, before the test window)"
    return tables


def _parse_columns(text: str | None) -> ColumnMapping | None:
    return ColumnMapping.parse(text) if text else None


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Purchase history: .csv, .csv.gz or .parquet."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Also train on the purchase events the service ingested (sqlite:///... or "
            "postgresql://...), alone or with --data; its views and add-to-carts count as "
            "weaker signals.",
        ),
    ] = None,
    view_weight: Annotated[
        float,
        typer.Option(
            help="With --database-url: one view next to one purchase, 0 to 1 (0 ignores views).",
        ),
    ] = DEFAULT_SIGNAL_WEIGHTS[0],
    add_to_cart_weight: Annotated[
        float,
        typer.Option(
            help="With --database-url: one add-to-cart next to one purchase, 0 to 1 (0 ignores "
            "them).",
        ),
    ] = DEFAULT_SIGNAL_WEIGHTS[1],
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    fmt: Annotated[
        str, typer.Option("--format", help=f"Input layout: {', '.join(FORMATS)}.")
    ] = "generic",
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping for --format generic, e.g. "
            "'user=customer,item=sku,timestamp=ts,price=unit_price,order=invoice'."
        ),
    ] = None,
    test_days: Annotated[
        float, typer.Option(help="Length of the test (and validation) window in days.")
    ] = 30.0,
    tune_seconds: Annotated[
        float, typer.Option(help="Time budget for tuning on the validation split; 0 turns it off.")
    ] = 60.0,
    factors: Annotated[int, typer.Option(help="ALS latent factors.")] = 64,
    iterations: Annotated[
        int, typer.Option(help="ALS iterations of the first (cold) fit; later stages add 2.")
    ] = 8,
    regularization: Annotated[float, typer.Option(help="ALS L2 regularisation.")] = 0.05,
    threads: Annotated[int, typer.Option(help="Training threads (0: all cores).")] = 0,
    eval_users: Annotated[
        int | None, typer.Option(help="Score at most this many test users (default: automatic).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when the quality gate refuses.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Train on a purchase history, evaluate every candidate, gate and publish a new version.

    Examples:

      recoffer train --data purchases.csv --model-dir var/models

      recoffer train --data ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --tune-seconds 120 --json

      recoffer train --database-url sqlite:///var/recoffer.db --view-weight 0.05
    """
    from training.pipeline import TrainConfig

    _setup_logging(verbose)
    for option, value in (
        ("--view-weight", view_weight),
        ("--add-to-cart-weight", add_to_cart_weight),
    ):
        if not 0.0 <= value <= 1.0:  # NaN too
            raise _fail(f"{option} must be between 0 and 1 (a purchase is 1), not {value}", 2)
    if database_url is None and (view_weight, add_to_cart_weight) != DEFAULT_SIGNAL_WEIGHTS:
        err.print(
            "recoffer: warning: --view-weight and --add-to-cart-weight apply to the events of "
            "--database-url; without it they change nothing",
            markup=False,
        )
    try:
        params = ModelParams(
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            threads=threads,
            view_weight=view_weight,
            add_to_cart_weight=add_to_cart_weight,
        )
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    if tune_seconds < 0:
        raise _fail("--tune-seconds must be >= 0", 2)
    if data is None and database_url is None:
        raise _fail("give --data (a purchase file), --database-url, or both", 2)
    config = TrainConfig(
        model_dir=model_dir,
        data=data,
        database_url=database_url,
        fmt=fmt,
        columns=None,
        test_days=test_days,
        tune_seconds=tune_seconds,
        force=force,
        params=params,
        eval_users=eval_users,
    )
    _run_training(config, columns, as_json)


def _run_training(config: Any, columns: str | None, as_json: bool) -> None:
    from training.pipeline import run

    with _errors():
        config.columns = _parse_columns(columns)
        result = run(config, progress=_progress)
    err.print(result.report.render(), markup=False)
    tables = metrics_tables(result.metrics, result.served)
    if as_json:
        err.print(*tables)
        out.print(json.dumps(result.to_json(), default=str), markup=False)
    else:
        out.print(*tables)
    verdict = "promoted to current" if result.promoted else "NOT promoted"
    err.print(f"version {result.version}: {verdict}", markup=False)
    for reason in result.gate.reasons:
        err.print(f"  gate: {reason}", markup=False)
    if not result.promoted:
        err.print("  (use --force to promote anyway)", markup=False)


class _errors:
    """Map recoffer's exceptions to one line on stderr and an exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, typer.Exit | KeyboardInterrupt):
            return False
        if isinstance(exc, RecofferError):
            raise _fail(public_detail(exc), kind_of(exc).exit_code) from None
        log.debug("unexpected failure", exc_info=exc)
        raise _fail(f"{type(exc).__name__}: {exc}", 1) from None


@app.command()
def evaluate(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    version: Annotated[str | None, typer.Option(help="Version to show (default: current).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Re-score the version on this purchase history's temporal split."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Input layout of --data.")] = "generic",
    columns: Annotated[str | None, typer.Option(help="Column mapping for --data.")] = None,
    test_days: Annotated[float, typer.Option(help="Test window of the re-scoring split.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a version's recorded metrics, or re-score it on a (newer) purchase history.

    Examples:

      recoffer evaluate --model-dir var/models

      recoffer evaluate --data new_purchases.csv --test-days 14
    """
    _setup_logging(False)
    with _errors():
        store = ModelStore(model_dir)
        chosen = version or store.current()
        if chosen is None:
            raise UsageProblem(f"no current model in {model_dir}; train one first")
        artifact = load_artifact(store.version_path(chosen))
        if data is None:
            metrics = artifact.manifest.metrics.test
            served = artifact.manifest.served
            document: dict[str, Any] = {"version": chosen, "metrics": metrics, "served": served}
        else:
            from training.gate import rescore_on_file

            document = rescore_on_file(artifact, data, fmt, _parse_columns(columns), test_days)
            metrics, served = document["metrics"], dict.fromkeys(PROTOCOLS, "served")
    if as_json:
        out.print(json.dumps(document, default=str), markup=False)
    else:
        out.print(*metrics_tables(metrics, served))
        if "warning" in document:
            err.print(f"warning: {document['warning']}", markup=False)


@app.command()
def models(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List model versions, oldest first, with their quality and which one is current."""
    _setup_logging(False)
    with _errors():
        store = ModelStore(model_dir)
        current = store.current()
        rows = []
        for name, manifest in store.iter_manifests():
            row: dict[str, Any] = {"version": name, "current": name == current}
            if manifest is None:
                row["error"] = "unreadable manifest"
            else:
                test, served = manifest.metrics.test, manifest.served
                row.update(
                    created_at=manifest.created_at.isoformat(),
                    served=served,
                    promoted_by_gate=None if manifest.gate is None else manifest.gate.passed,
                    **{
                        f"{p}_ndcg@10": test.get(p, {}).get(served.get(p, ""), {}).get("ndcg@10")
                        for p in PROTOCOLS
                    },
                )
            rows.append(row)
    if as_json:
        out.print(json.dumps({"current": current, "versions": rows}, default=str), markup=False)
        return
    if not rows:
        err.print(f"no model versions in {model_dir}", markup=False)
        return
    table = Table(title=f"Models in {model_dir}")
    for col in ("", "version", "created", "served", "all ndcg@10", "novel ndcg@10", "gate"):
        table.add_column(col)
    for row in rows:
        served = row.get("served") or {}
        table.add_row(
            "*" if row["current"] else "",
            row["version"],
            str(row.get("created_at", ""))[:19],
            ",".join(sorted(set(served.values()))) if served else row.get("error", ""),
            _fmt(row.get("all_ndcg@10")),
            _fmt(row.get("novel_ndcg@10")),
            {True: "passed", False: "refused", None: ""}[row.get("promoted_by_gate")],
        )
    out.print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


@app.command()
def rollback(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    to: Annotated[
        str | None, typer.Option(help="Version to switch to (default: the previous one).")
    ] = None,
) -> None:
    """Switch the current model back to the previously promoted version (or to --to)."""
    from training.lock import trainer_lock

    _setup_logging(False)
    with _errors():
        store = ModelStore(model_dir)
        if not store.versions():
            raise UsageProblem(f"no model versions in {model_dir}")
        before = store.current()
        with trainer_lock(store.root):
            target = store.rollback(to)
            if to is not None:
                load_artifact(store.version_path(target))
    out.print(f"current: {before} -> {target}", markup=False)


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo shop, its database and its models live.")
    ] = Path("var/demo"),
    preset: Annotated[str, typer.Option(help="Synthetic shop size: tiny, small, demo.")] = "demo",
    tune_seconds: Annotated[float, typer.Option(help="Tuning budget in seconds.")] = 20.0,
    serve_api: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the API after training.")
    ] = True,
    host: Annotated[str, typer.Option(help="Address to serve on (loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The whole product on embedded defaults: demo shop -> model -> API on SQLite.

    Generates the seeded demo shop (once), trains when no model exists yet, loads the shop's
    new-user events and catalogue into the database (once), then serves the API in development
    mode (no API keys, loopback only) at http://127.0.0.1:8000 (docs at /docs).
    """
    from training.demo import prepare_demo

    _setup_logging(False)
    if serve_api:
        _check_port(host, port)  # before minutes of generating and training
    with _errors():
        try:
            plan = prepare_demo(workdir, preset, progress=_progress)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    if plan.train_config is not None:
        _run_training(plan.train_config, None, as_json)
    else:
        err.print(f"model {plan.current} already trained in {plan.models}", markup=False)
    with _errors():
        plan.seed_database()
    if serve_api:
        _serve(
            model_dir=plan.models,
            database_url=plan.database_url,
            host=host,
            port=port,
            workers=1,
            development=True,
        )


@app.command()
def serve(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = None,
    host: Annotated[str, typer.Option(envvar="RECOFFER_HOST", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="RECOFFER_PORT", help="Bind port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
) -> None:
    """Serve the HTTP API (settings from RECOFFER_* variables; options override them).

    Examples:

      RECOFFER_FRONTEND_KEYS=... RECOFFER_ADMIN_KEYS=... recoffer serve --model-dir var/models

      recoffer serve --database-url postgresql://recoffer@db/recoffer --workers 4
    """
    _serve(
        model_dir=model_dir,
        database_url=database_url,
        host=host,
        port=port,
        workers=workers,
        development=False,
    )


def _check_port(host: str, port: int) -> None:
    """Fail now, with one line, when the address is taken (not after a long start-up)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}", 2) from None


def _serve(
    *,
    model_dir: Path,
    database_url: str | None,
    host: str,
    port: int,
    workers: int,
    development: bool,
) -> None:
    """Replace this process with the API's own entry point, ``python -m service``.

    The API worker then has nothing of the trainer (pandas, implicit) loaded, whichever way it
    was started; the process id stays, so a supervisor's signals still reach the server.
    """
    import os

    argv = [sys.executable, "-m", "service", "--host", host, "--port", str(port)]
    argv += ["--workers", str(workers), "--model-dir", str(model_dir)]
    if database_url:
        argv += ["--database-url", database_url]
    if development:
        argv.append("--development")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@app.command()
def backtest(
    events: Annotated[
        Path,
        typer.Option(
            "--events",
            help="Behaviour events (user_id, type, timestamp[, item_id]): "
            ".csv, .csv.gz or .parquet.",
        ),
    ],
    campaign_id: Annotated[
        str, typer.Option("--campaign", help="Campaign to replay.")
    ] = "new_user_high_intent",
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

    _setup_logging(False)
    with _errors():
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


def backtest_tables(document: dict[str, Any]) -> list[Table]:
    """The backtest report for people: a summary table and a per-day table."""
    span = document["events"]
    summary = Table(
        title=f"backtest of {document['campaign']} on {span['source']} "
        f"({span['start'][:10]} .. {span['end'][:10]})",
        title_justify="left",
        show_header=False,
    )
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    rows: list[tuple[str, str]] = [
        ("users in the log", f"{document['users']:,}"),
        ("new users (sign-up inside the log)", f"{document['new_users']:,}"),
        ("qualifying", f"{document['qualifying']:,}"),
        ("  held out", f"{document['holdout']:,}"),
        ("  would be treated", f"{document['treated']:,}"),
        ("expected coupons (under the caps)", f"{document['expected_coupons']:,}"),
        ("  cut by the daily cap", f"{document['capped']['per_day']:,}"),
        ("  cut by the total cap", f"{document['capped']['total']:,}"),
    ]
    starts = document["start_from"]
    rows.insert(
        2,
        (
            "  sign-up from: event / users file / first event",
            f"{starts['sign_up_event']:,} / {starts['users_file']:,} / {starts['first_event']:,}",
        ),
    )
    for reason, n in document["not_qualifying"].items():
        if n or reason == "too_few_views":
            rows.append((f"not qualifying: {reason.replace('_', ' ')}", f"{n:,}"))
    bought = document["bought_anyway"]
    others = document["non_qualifying_new_users"]
    if bought is None or others is None:
        rows.append(("bought anyway", "no purchases in the log"))
    else:
        rows.append(
            (
                "qualifying users who bought anyway (no coupon)",
                f"{bought['users']:,} ({_percent(bought['share'])})",
            )
        )
        rows.append(("  of them, would have got a coupon", f"{bought['would_get_coupon']:,}"))
        rows.append(
            (
                "non-qualifying new users who bought",
                f"{others['bought']:,} of {others['users']:,} ({_percent(others['share'])})",
            )
        )
    for label, value in rows:
        summary.add_row(label, value)
    per_day = Table(title="per UTC day", title_justify="left")
    per_day.add_column("day")
    per_day.add_column("qualifying", justify="right")
    per_day.add_column("coupons", justify="right")
    for day, n in document["qualifying_per_day"].items():
        per_day.add_row(day, f"{n:,}", f"{document['coupons_per_day'].get(day, 0):,}")
    return [summary, per_day]


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f} %"


@app.command()
def migrate(
    database_url: Annotated[
        str,
        typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
    ] = "sqlite:///var/recoffer.db",
) -> None:
    """Apply the database migrations (the service also does this at start by default)."""
    from service.db import make_engine
    from service.db import migrate as apply_migrations

    _setup_logging(False)
    with _errors():
        try:
            engine = make_engine(database_url)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        try:
            apply_migrations(engine)
        finally:
            engine.dispose()
    out.print(
        f"database at {engine.url.render_as_string(hide_password=True)} is up to date", markup=False
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def schedule(
    ctx: typer.Context,
    every: Annotated[
        str | None, typer.Option(help="Interval between runs: 24h, 6h, 30m, 1h30m ...")
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression in UTC instead, e.g. '0 3 * * *'.")
    ] = None,
    run_now: Annotated[
        bool, typer.Option("--run-now", help="Run once at start, then on the schedule.")
    ] = False,
    max_runs: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many runs (default: never).")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Kill a run that takes longer than this (e.g. 2h).")
    ] = None,
) -> None:
    """Retrain on a schedule: every option after the schedule's is passed to `recoffer train`.

    Each run is a `recoffer train` child process: a crash or a kill leaves the served model
    as it was (atomic publish) and the next slot runs again; the trainer lock keeps two runs
    from overlapping. SIGTERM finishes the run under way, a second one stops it.

    Examples:

      recoffer schedule --every 24h --run-now --data purchases.csv --model-dir var/models

      recoffer schedule --cron '0 3 * * *' --database-url sqlite:///var/recoffer.db \\
          --model-dir var/models --tune-seconds 120
    """
    from service.logs import configure_logging
    from training.schedule import Schedule, Scheduler, parse_every, train_command

    train_args = list(ctx.args)
    with _errors():
        plan = Schedule(every=parse_every(every) if every else None, cron=cron)
        limit = parse_every(timeout) if timeout else None
    if not train_args:
        raise _fail("give the options of `recoffer train` after the schedule's", 2)
    try:  # refuse bad training options now, not at the first run hours later
        typer.main.get_command(app).commands["train"].make_context(  # type: ignore[attr-defined]
            "train", list(train_args)
        )
    except typer.Exit:
        return
    except typer.TyperException as exc:  # typer's own usage errors (unknown option, bad value)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise _fail(f"training options: {message}", 2) from None
    configure_logging("INFO")
    scheduler = Scheduler(
        plan, train_command(train_args), run_now=run_now, max_runs=max_runs, timeout=limit
    )
    scheduler.install_signal_handlers()
    err.print(f"retraining {plan.describe()}: recoffer train {' '.join(train_args)}", markup=False)
    history = scheduler.run()
    failed = [r for r in history if r.exit_code != 0]
    err.print(f"{len(history)} run(s), {len(failed)} failed", markup=False)
    if history and failed and failed[-1] is history[-1]:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
