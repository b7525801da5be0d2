"""``recoffer experiment start|status|stop|promote``: A/B tests of recommenders (issue 14).

The same domain object as ``/v1/experiments`` (``service.experiments.service.Experiments``),
on the service's database and model root; the command serves nothing itself: every worker
of the service picks a change up within ``RECOFFER_EXPERIMENT_POLL_SECONDS``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.errors import InvalidInput, UsageProblem
from training.cli.common import DEFAULT_MODEL_DIR, JsonOutput, ModelDir, Verbose, setup_logging
from training.cli.render import errors, out

if TYPE_CHECKING:
    from service.experiments.repository import Experiment
    from service.experiments.results import Results
    from service.experiments.service import Experiments, GuardSettings

app = typer.Typer(
    name="experiment",
    help="A/B tests of recommenders: start one, read its results, stop it or promote it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatabaseUrl = Annotated[
    str,
    typer.Option(envvar="RECOFFER_DATABASE_URL", help="sqlite:///path or postgresql://..."),
]
DEFAULT_DATABASE = "sqlite:///var/recoffer.db"
ExperimentArg = Annotated[str, typer.Argument(help="The experiment's id (exp_...).")]


@contextmanager
def _experiments(database_url: str, model_dir: Path) -> Iterator[Experiments]:
    """The domain object on the database and model root; a field refused is named as its
    option (one line, exit 2)."""
    from service.activity.repository import Repository
    from service.activity.store import ActivityStore
    from service.clock import utc_now
    from service.db import make_engine, migrate
    from service.experiments.repository import ExperimentRepository
    from service.experiments.service import Experiments
    from service.metrics import Metrics
    from service.recommend.holder import ModelHolder
    from service.recommend.service import Recommendations

    if not model_dir.is_dir():
        raise UsageProblem(f"--model-dir: no such directory: {model_dir}")
    try:
        engine = make_engine(database_url, timeout_seconds=30)
    except Exception as exc:  # an unparsable URL, an unknown driver
        raise UsageProblem(f"--database-url: {exc}") from None
    try:
        migrate(engine)
        guard = _guard_settings()
        recommendations = Recommendations(
            ModelHolder(model_dir), ActivityStore(), utc_now, Metrics(shared=None)
        )
        experiments = Experiments(
            ExperimentRepository(Repository(engine)),
            recommendations,
            utc_now,
            guard,
            serve_here=False,
        )
        try:
            yield experiments
        except InvalidInput as exc:
            raise UsageProblem(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    finally:
        engine.dispose()


GUARD_FIELDS = ("experiment_guard_min_impressions", "experiment_guard_z", "experiment_srm_p")


def _guard_settings() -> GuardSettings:
    """The guard's thresholds from ``RECOFFER_EXPERIMENT_GUARD_MIN_IMPRESSIONS``, ``_GUARD_Z``
    and ``RECOFFER_EXPERIMENT_SRM_P``, validated as the service's settings validate them (the
    service's other settings, its keys among them, are not needed here)."""
    from pydantic import ValidationError, create_model
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from service.experiments.service import GuardSettings
    from service.settings import Settings

    class Environment(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="RECOFFER_", env_file=None, extra="ignore")

    fields: dict[str, Any] = {
        name: (Settings.model_fields[name].annotation, Settings.model_fields[name])
        for name in GUARD_FIELDS
    }
    try:
        found = create_model("GuardEnvironment", __base__=Environment, **fields)().model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "RECOFFER_" + "_".join(str(part) for part in first["loc"]).upper()
        raise UsageProblem(f"{name}: {first['msg']}") from None
    return GuardSettings(
        min_impressions=int(found["experiment_guard_min_impressions"]),
        z=float(found["experiment_guard_z"]),
        srm_p=float(found["experiment_srm_p"]),
    )


def _summary(experiment: Experiment) -> str:
    candidate = experiment.candidate_version + (
        f" ({experiment.candidate_recipe})" if experiment.candidate_recipe else ""
    )
    control = experiment.control_version + (
        f" ({experiment.control_recipe})" if experiment.control_recipe else ""
    )
    return (
        f"{experiment.id} {experiment.status}: {experiment.name!r}, candidate {candidate} for "
        f"{experiment.share:.0%} of users, control {control}, since "
        f"{experiment.started_at.isoformat(timespec='seconds')}"
    )


def _document(experiment: Experiment, results: Results | None = None) -> dict[str, Any]:
    doc = dataclasses.asdict(experiment)
    if results is not None:
        doc["results"] = results.to_dict()
    return doc


def _print_results(results: Results) -> None:
    def rate(interval: Any) -> str:
        if interval is None:
            return "-"
        return f"{interval.estimate:.4f} [{interval.low:.4f}, {interval.high:.4f}]"

    out.print(f"{'arm':<10} {'impressions':>11} {'users':>7} {'CTR':>26} {'conversion':>26}")
    for arm in results.arms.values():
        out.print(
            f"{arm.arm:<10} {arm.impressions:>11,} {arm.users:>7,} {rate(arm.ctr):>26} "
            f"{rate(arm.conversion):>26}",
            markup=False,
        )
    for name, diff in (("CTR", results.ctr), ("conversion", results.conversion)):
        lift = "" if diff.relative_lift is None else f", lift {diff.relative_lift:+.1%}"
        out.print(f"{name} difference {rate(diff.difference)}{lift}", markup=False)
    srm = results.srm
    if srm.p_value is not None:
        verdict = "MISMATCH" if srm.mismatch else "ok"
        out.print(
            f"sample ratio: {srm.observed_share:.3f} of users in the candidate arm, expected "
            f"{srm.expected_share:.3f}, p {srm.p_value:.3g} ({verdict})",
            markup=False,
        )
    guard = results.guard
    state = (
        "would stop: " + (guard.reason or "")
        if guard.tripped
        else ("watching" if guard.ready else f"waiting for {guard.min_impressions:,} impressions")
    )
    out.print(f"guard: {state}", markup=False)


@app.command()
def start(
    name: Annotated[str, typer.Option(help="What the experiment tests.")],
    candidate_version: Annotated[str, typer.Option(help="The version the candidate serves.")],
    candidate_recipe: Annotated[
        str | None, typer.Option(help="A candidate recipe of that version's manifest.")
    ] = None,
    control_recipe: Annotated[
        str | None, typer.Option(help="A candidate recipe of the current version for control.")
    ] = None,
    share: Annotated[float, typer.Option(help="Share of users in the candidate arm.")] = 0.5,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """Start an experiment against the current version.

    Example:

      recoffer experiment start --name "new blend" --candidate-version 20261201T120000-ab12
    """
    setup_logging(verbose)
    with errors(), _experiments(database_url, model_dir) as experiments:
        started = experiments.start(
            name=name,
            candidate_version=candidate_version,
            candidate_recipe=candidate_recipe,
            control_recipe=control_recipe,
            share=share,
            actor="cli",
        )
    if as_json:
        out.print(json.dumps(_document(started), default=str), markup=False)
    else:
        out.print(_summary(started), markup=False)


@app.command()
def status(
    experiment_id: Annotated[
        str | None, typer.Argument(help="The experiment (default: the running one).")
    ] = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    as_json: JsonOutput = False,
    verbose: Verbose = False,
) -> None:
    """An experiment's results per arm, the sample-ratio check and the guard (without an id:
    the running one, or the list when none runs)."""
    setup_logging(verbose)
    with errors(), _experiments(database_url, model_dir) as experiments:
        found = (
            experiments.get(experiment_id)
            if experiment_id is not None
            else experiments.repository.running()
        )
        if found is None:
            listing = experiments.listing(20)
            if as_json:
                out.print(json.dumps([_document(e) for e in listing], default=str), markup=False)
            elif not listing:
                out.print("no experiment yet", markup=False)
            else:
                out.print("no experiment is running; the latest:", markup=False)
                for experiment in listing:
                    out.print(_summary(experiment), markup=False)
            return
        results = experiments.results(found)
    if as_json:
        out.print(json.dumps(_document(found, results), default=str), markup=False)
        return
    out.print(_summary(found), markup=False)
    if found.outcome is not None:
        out.print(f"ended: {found.outcome.get('detail')}", markup=False)
    _print_results(results)


@app.command()
def stop(
    experiment_id: ExperimentArg,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    verbose: Verbose = False,
) -> None:
    """Stop an experiment: everyone gets the current version again."""
    setup_logging(verbose)
    with errors(), _experiments(database_url, model_dir) as experiments:
        stopped = experiments.stop(experiment_id, actor="cli")
    out.print(_summary(stopped), markup=False)


@app.command()
def promote(
    experiment_id: ExperimentArg,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    verbose: Verbose = False,
) -> None:
    """Make the candidate version current (under the trainer lock) and end the experiment."""
    setup_logging(verbose)
    with errors(), _experiments(database_url, model_dir) as experiments:
        done = experiments.promote(experiment_id, actor="cli")
    out.print(
        f"{done.current} is current (was {done.before}); {done.experiment.id} promoted",
        markup=False,
    )
