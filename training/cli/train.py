"""``recoffer train`` and ``recoffer evaluate``: train and publish a version; show or re-score one.

The trainer's defaults and the checks of its parameters belong to ``training.models.ModelParams``:
the options take their defaults from it, and a value it refuses ends the command with its message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.artifact import KEEP_VERSIONS, ModelStore, load_artifact
from service.errors import DataError, UsageProblem
from service.scoring import PROTOCOLS
from training import exit_codes
from training.cli.common import (
    DEFAULT_MODEL_DIR,
    DateFormat,
    DayFirst,
    Delimiter,
    JsonOutput,
    ModelDir,
    Verbose,
    parse_columns,
    read_options,
    setup_logging,
)
from training.cli.models import KeepVersions
from training.cli.render import err, errors, fail, metrics_tables, out, progress
from training.data.formats import FORMATS
from training.evaluate import DEFAULT_EVAL_USERS, TEST_DAYS, describe_evaluation
from training.models import ModelParams
from training.tune import TRIALS, TUNE_SECONDS_CAP

EvalUsers = Annotated[
    int | None,
    typer.Option(
        help="Test users the figures rest on: a seeded sample of this many, all when fewer "
        f"(default {DEFAULT_EVAL_USERS:,}); scored in chunks, so memory stays bounded.",
        show_default=False,
    ),
]

if TYPE_CHECKING:
    from training.pipeline import TrainConfig

DEFAULTS = ModelParams()
# The option of `recoffer train` that sets each parameter of ModelParams it exposes.
_OPTIONS = {
    "factors": "--factors",
    "iterations": "--iterations",
    "regularization": "--regularization",
    "threads": "--threads",
    "view_weight": "--view-weight",
    "add_to_cart_weight": "--add-to-cart-weight",
    "ann_min_items": "--ann-min-items",
}


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
    ] = DEFAULTS.view_weight,
    add_to_cart_weight: Annotated[
        float,
        typer.Option(
            help="With --database-url: one add-to-cart next to one purchase, 0 to 1 (0 ignores "
            "them).",
        ),
    ] = DEFAULTS.add_to_cart_weight,
    every_visitor: Annotated[
        bool,
        typer.Option(
            "--every-visitor/--purchasers-only",
            help="With --database-url: also learn from the views and add-to-carts of visitors "
            "who never bought and of products not sold yet (served too), or only from those of "
            "users and items with purchases.",
        ),
    ] = DEFAULTS.every_visitor,
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
    delimiter: Delimiter = None,
    date_format: DateFormat = None,
    dayfirst: DayFirst = None,
    test_days: Annotated[
        float, typer.Option(help="Length of the test (and validation) window in days.")
    ] = TEST_DAYS,
    tune_seconds: Annotated[
        float,
        typer.Option(
            help="Time cap for tuning on the validation split (the search stops starting new "
            "work past it); 0 turns tuning off."
        ),
    ] = TUNE_SECONDS_CAP,
    tune_trials: Annotated[
        int,
        typer.Option(
            min=0,
            help="Hyper-parameter variants tuning tries, in a fixed order (its budget, the same "
            "on a busy machine as on a quiet one); 0 tunes the blend's weights only.",
        ),
    ] = TRIALS,
    factors: Annotated[int, typer.Option(help="ALS latent factors.")] = DEFAULTS.factors,
    iterations: Annotated[
        int,
        typer.Option(
            help="ALS iterations of the first (cold) fit; later stages add "
            f"{DEFAULTS.warm_iterations}."
        ),
    ] = DEFAULTS.iterations,
    regularization: Annotated[
        float, typer.Option(help="ALS L2 regularisation.")
    ] = DEFAULTS.regularization,
    threads: Annotated[
        int, typer.Option(help="Training threads (0: all cores).")
    ] = DEFAULTS.threads,
    eval_users: EvalUsers = None,
    ann_min_items: Annotated[
        int,
        typer.Option(
            help="Build an ANN index over the item factors (the ann extra) from this many "
            "items on; the service then re-ranks a few hundred candidates instead of scoring "
            "the whole catalogue. 0: always."
        ),
    ] = DEFAULTS.ann_min_items,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even when the quality gate refuses.")
    ] = False,
    keep_versions: KeepVersions = KEEP_VERSIONS,
    engine: Annotated[
        str,
        typer.Option(
            help="pandas (one process, the default) or spark (pyspark and Java: "
            "pip install 'recoffer[spark]'; see docs/spark.md)."
        ),
    ] = "pandas",
    spark_master: Annotated[
        str, typer.Option(help="--engine spark: the Spark master URL.")
    ] = "local[*]",
    spark_fit: Annotated[
        str,
        typer.Option(
            help="--engine spark: mllib (Spark MLlib ALS), implicit (on the driver) or auto "
            "(implicit while the pairs fit --spark-auto-max-pairs)."
        ),
    ] = "auto",
    spark_auto_max_pairs: Annotated[
        int, typer.Option(min=0, help="--spark-fit auto: the most user x item pairs for implicit.")
    ] = 100_000_000,
    spark_driver_memory: Annotated[
        str | None,
        typer.Option(help="--engine spark, local master: the driver JVM's heap, e.g. 4g."),
    ] = None,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Train on a purchase history, evaluate every candidate, gate and publish a new version.

    Examples:

      recoffer train --data purchases.csv --model-dir var/models

      recoffer train --data ../shared/data/online-retail/online_retail.csv.gz \\
          --format online-retail --tune-seconds 120 --json

      recoffer train --database-url sqlite:///var/recoffer.db --view-weight 0.05

      recoffer train --data orders.csv --delimiter ';' --dayfirst

      recoffer train --engine spark --data purchases.parquet --spark-master local[4]
    """
    from training.pipeline import TrainConfig

    setup_logging(verbose)
    if engine not in ("pandas", "spark"):
        raise fail(f"--engine must be pandas or spark, not {engine!r}", 2)
    spark = None
    with errors():
        if engine == "spark":
            from training.spark.engine import SparkOptions
            from training.spark.session import check_engine

            check_engine()  # pyspark and Java, before anything is read
            try:
                spark = SparkOptions(
                    master=spark_master,
                    fit=spark_fit,
                    auto_max_pairs=spark_auto_max_pairs,
                    driver_memory=spark_driver_memory,
                )
            except DataError as exc:
                raise UsageProblem(str(exc)) from None
        options = read_options(delimiter, date_format, dayfirst)
        try:
            params = ModelParams(
                factors=factors,
                iterations=iterations,
                regularization=regularization,
                threads=threads,
                view_weight=view_weight,
                add_to_cart_weight=add_to_cart_weight,
                every_visitor=every_visitor,
                ann_min_items=ann_min_items,
            )
        except ValueError as exc:  # NaN and inf weights too
            raise UsageProblem(_naming_the_option(str(exc))) from None
    if database_url is None and params.signal_weights != DEFAULTS.signal_weights:
        err.print(
            "recoffer: warning: --view-weight and --add-to-cart-weight apply to the events of "
            "--database-url; without it they change nothing",
            markup=False,
        )
    if tune_seconds < 0:
        raise fail("--tune-seconds must be >= 0", 2)
    _check_eval_users(eval_users)
    if data is None and database_url is None:
        raise fail("give --data (a purchase file), --database-url, or both", 2)
    config = TrainConfig(
        model_dir=model_dir,
        data=data,
        database_url=database_url,
        fmt=fmt,
        columns=None,
        test_days=test_days,
        tune_seconds=tune_seconds,
        tune_trials=tune_trials,
        force=force,
        params=params,
        eval_users=eval_users,
        read_options=options,
        keep_versions=keep_versions,
        engine=engine,
        spark=spark,
    )
    run_training(config, columns, as_json)


def _check_eval_users(eval_users: int | None) -> None:
    if eval_users is not None and eval_users < 1:
        raise fail(f"--eval-users must be >= 1, got {eval_users}", 2)


def _naming_the_option(message: str) -> str:
    """ModelParams' refusal of one parameter's value, naming the option that set it instead."""
    about = re.match(r"(\w+) must be ", message)
    if about is None or about.group(1) not in _OPTIONS:
        return message
    return _OPTIONS[about.group(1)] + message[about.end(1) :]


def run_training(config: TrainConfig, columns: str | None, as_json: bool) -> None:
    """Run the pipeline and print its cleaning report, metric tables and verdict."""
    from training.pipeline import run

    with errors():
        config.columns = parse_columns(columns)
        result = run(config, progress=progress)
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
    for note in result.gate.notes:
        err.print(f"  gate: {note}", markup=False)
    if result.pruned:
        err.print(f"pruned {len(result.pruned)} old version(s)", markup=False)
    if not result.promoted:
        err.print("  (use --force to promote anyway)", markup=False)
        raise typer.Exit(exit_codes.REFUSED)


def evaluate(
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    version: Annotated[str | None, typer.Option(help="Version to show (default: current).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Re-score the version on this purchase history's temporal split."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Input layout of --data.")] = "generic",
    columns: Annotated[str | None, typer.Option(help="Column mapping for --data.")] = None,
    delimiter: Delimiter = None,
    date_format: DateFormat = None,
    dayfirst: DayFirst = None,
    test_days: Annotated[
        float, typer.Option(help="Test window of the re-scoring split.")
    ] = TEST_DAYS,
    eval_users: EvalUsers = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a version's recorded metrics, or re-score it on a (newer) purchase history.

    Examples:

      recoffer evaluate --model-dir var/models

      recoffer evaluate --data new_purchases.csv --test-days 14
    """
    setup_logging(False)
    _check_eval_users(eval_users)
    with errors():
        store = ModelStore(model_dir)
        chosen = version or store.current()
        if chosen is None:
            raise UsageProblem(f"no current model in {model_dir}; train one first")
        artifact = load_artifact(store.version_path(chosen))
        if data is None:
            metrics = artifact.manifest.metrics.test
            served = artifact.manifest.served
            document: dict[str, Any] = {"version": chosen, "metrics": metrics, "served": served}
            recorded = artifact.manifest.evaluation
            if recorded is not None:
                document["evaluation"] = recorded.model_dump()
        else:
            from training.gate import rescore_on_file

            options = read_options(delimiter, date_format, dayfirst)
            document = rescore_on_file(
                artifact,
                data,
                fmt,
                parse_columns(columns),
                test_days,
                options,
                max_users=eval_users,
            )
            metrics, served = document["metrics"], dict.fromkeys(PROTOCOLS, "served")
    if as_json:
        out.print(json.dumps(document, default=str), markup=False)
    else:
        out.print(*metrics_tables(metrics, served))
        if "evaluation" in document:
            err.print(describe_evaluation(document["evaluation"]), markup=False)
        if "warning" in document:
            err.print(f"warning: {document['warning']}", markup=False)
