"""``Experiments``: start, read, stop and promote A/B tests of recommenders, and the guard.

What the API, the console and ``recoffer experiment`` call. One experiment runs at a time
(``repository``); its arms are served by every worker's ``ModelHolder`` (``refresh``, from
``background.experiment_loop`` within ``RECOFFER_EXPERIMENT_POLL_SECONDS``, and at once on the
worker that made the change).

A promotion switches the registry's ``current`` to the candidate version exactly as a
rollback does: under the trainer lock (no training run can promote in between), once the
candidate has loaded with its checksums, and only while ``current`` is still the experiment's
control. The registry is switched first, then the row is ended as promoted (the conditional
UPDATE); a switch that fails changes nothing (the row keeps running), and a row a stop or the
guard ended meanwhile rolls the switch back, so the row and ``current`` always agree. This
worker then serves the candidate arm it holds as the current model, without loading it a
second time (three models in memory at the peak otherwise). It is appended to ``runs.jsonl``
as a run ``by: "experiment"`` naming the experiment and its figures, so the next training
run's gate compares against the promoted version (it is ``current``) and says why it is
current (``training.gate.why_current``). A candidate that is a recipe of the current version
is refused: the registry points at versions, and a version's
served recipe is the trainer's choice on the validation split (retrain, or change the
candidates); the experiment keeps running until it is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.artifact import (
    Manifest,
    ModelStore,
    TrainingRun,
    load_artifact,
    read_manifest,
    record_run,
)
from service.artifact.lock import no_writer, trainer_lock
from service.errors import (
    ArtifactError,
    ExperimentEnded,
    ExperimentRefused,
    ExperimentRunning,
    InvalidInput,
    RecofferError,
    RegistryError,
    TrainerBusyError,
    UnknownExperiment,
)
from service.experiments.repository import Experiment, ExperimentRepository, Status
from service.experiments.results import MIN_IMPRESSIONS, SRM_P, Z_GUARD, Results, results
from service.recommend.holder import ExperimentArms
from service.recommend.service import Recommendations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardSettings:
    """The guard's and the analysis' thresholds, stored with each experiment at its start."""

    min_impressions: int = MIN_IMPRESSIONS
    z: float = Z_GUARD
    srm_p: float = SRM_P

    def to_dict(self) -> dict[str, Any]:
        return {"min_impressions": self.min_impressions, "z": self.z, "srm_p": self.srm_p}


@dataclass(frozen=True)
class Promotion:
    experiment: Experiment
    before: str
    current: str
    serving: str | None  # this worker's version after the reload
    error: str | None  # the reload's error, if this worker could not load it


def new_experiment_id() -> str:
    return f"exp_{secrets.token_hex(6)}"


class Experiments:
    """Experiments of one worker: their rows, their results, and this worker's arms."""

    def __init__(
        self,
        repository: ExperimentRepository,
        recommendations: Recommendations,
        clock: Callable[[], datetime],
        guard: GuardSettings | None = None,
        *,
        serve_here: bool = True,
    ) -> None:
        self.repository = repository
        self.recommendations = recommendations
        self.models = recommendations.models
        self.store: ModelStore = self.models.store
        self.clock = clock
        self.guard = guard or GuardSettings()
        # False for ``recoffer experiment``: a command serves nothing, the workers pick it up
        self.serve_here = serve_here

    # --- reads ----------------------------------------------------------------------------

    def get(self, experiment_id: str) -> Experiment:
        found = self.repository.get(experiment_id)
        if found is None:
            raise UnknownExperiment(f"no experiment {experiment_id!r}")
        return found

    def listing(self, limit: int = 100) -> list[Experiment]:
        """The newest experiments first."""
        return self.repository.all(limit)

    def serving_here(self, experiment: Experiment) -> bool:
        """Whether this worker serves the experiment's arms now."""
        arms = self.models.experiment
        return arms is not None and arms.experiment_id == experiment.id

    def serving_error(self) -> str | None:
        """Why this worker could not load the running experiment's arms (no paths), if so."""
        error = self.models.experiment_error
        return None if error is None else self.recommendations.public(error)

    def results(self, experiment: Experiment) -> Results:
        """Its figures per arm, the sample-ratio check and the guard, with its own thresholds."""
        kept = experiment.settings
        return results(
            self.repository.tallies(experiment.id),
            experiment.share,
            min_impressions=int(kept.get("min_impressions", self.guard.min_impressions)),
            z=float(kept.get("z", self.guard.z)),
            srm_p=float(kept.get("srm_p", self.guard.srm_p)),
        )

    # --- start ----------------------------------------------------------------------------

    def start(
        self,
        *,
        name: str,
        candidate_version: str,
        candidate_recipe: str | None = None,
        control_recipe: str | None = None,
        share: float = 0.5,
        actor: str = "admin",
    ) -> Experiment:
        """Start an experiment against the current version and serve it on this worker now.

        InvalidInput names the field (a version that does not exist or load, a recipe its
        manifest does not name, a share outside (0, 1), a candidate equal to the control);
        ExperimentRefused without a current model; ExperimentRunning while one runs.
        """
        if not 0.0 < share < 1.0:
            raise InvalidInput("share", f"must be between 0 and 1 (exclusive), not {share}")
        if not name.strip():
            raise InvalidInput("name", "must not be blank")
        control_version = self.store.current()
        if control_version is None:
            raise ExperimentRefused("no model is current yet: train one first (`recoffer train`)")
        running = self.repository.running()
        if running is not None:
            raise ExperimentRunning(f"experiment {running.id} is running; stop or promote it first")
        candidate = self._manifest("candidate_version", candidate_version)
        control = self._manifest("control_version", control_version)
        for field, recipe, version, manifest in (
            ("candidate_recipe", candidate_recipe, candidate_version, candidate),
            ("control_recipe", control_recipe, control_version, control),
        ):
            if recipe is not None and recipe not in manifest.candidates:
                known = ", ".join(sorted(manifest.candidates)) or "none"
                raise InvalidInput(
                    field,
                    f"version {version} has no candidate recipe {recipe!r} (its candidates: "
                    f"{known})",
                )
        if candidate_version == control_version and candidate_recipe == control_recipe:
            raise InvalidInput(
                "candidate_version",
                f"{candidate_version} is the current version: the candidate would be the "
                "control; name another version, or a candidate_recipe",
            )
        row: dict[str, Any] = {
            "id": new_experiment_id(),
            "name": name.strip(),
            "control_version": control_version,
            "control_recipe": control_recipe,
            "candidate_version": candidate_version,
            "candidate_recipe": candidate_recipe,
            "share": float(share),
            "settings": self.guard.to_dict(),
            "created_by": actor,
            "started_at": self.clock(),
        }
        planned = Experiment(**row, status="running", ended_at=None, outcome=None, version=1)
        # the whole candidate, checksums included, as every worker will load it: here it is
        # loaded once and served as it is; a command (serve_here False) only verifies it
        arms: ExperimentArms | None = None
        try:
            if self.serve_here:
                arms = self.models.prepare_experiment(planned)
            else:
                load_artifact(self.store.version_path(candidate_version), mmap=True)
        except Exception as exc:
            raise InvalidInput(
                "candidate_version",
                self.recommendations.public(f"version {candidate_version} does not load ({exc})"),
            ) from None
        if not self.repository.create(row):
            running = self.repository.running()
            which = f"experiment {running.id}" if running is not None else "another experiment"
            raise ExperimentRunning(f"{which} is running; stop or promote it first")
        started = self.get(str(row["id"]))
        log.info("experiment_started", extra={"experiment": started.id, "by": actor})
        if arms is not None:  # only if the row still runs as created (not stopped meanwhile)
            self.models.install_experiment(arms, self.repository.running)
        return started

    def _manifest(self, field: str, version: str) -> Manifest:
        """The manifest of a published version; InvalidInput naming ``field`` otherwise."""
        try:
            path = self.store.version_path(version)
            exists = path.is_dir()
        except RegistryError as exc:
            raise InvalidInput(field, str(exc)) from None
        except (OSError, ValueError):  # a name no file system takes (a NUL byte, too long)
            raise InvalidInput(field, f"invalid version name {version!r}") from None
        if not exists:
            known = ", ".join(self.store.versions()) or "none"
            raise InvalidInput(field, f"no such version {version!r} (published: {known})")
        try:
            return read_manifest(path)
        except ArtifactError as exc:
            raise InvalidInput(
                field, self.recommendations.public(f"version {version} does not load ({exc})")
            ) from None

    # --- ends -----------------------------------------------------------------------------

    def _outcome(
        self, experiment: Experiment, reason: str, detail: str, actor: str
    ) -> dict[str, Any]:
        return {
            "reason": reason,
            "detail": detail,
            "by": actor,
            "at": self.clock().isoformat(),
            "results": self.results(experiment).to_dict(),
        }

    def _end(
        self, experiment: Experiment, status: Status, outcome: dict[str, Any]
    ) -> Experiment | None:
        """End it if it still runs (the conditional UPDATE); None when another did first."""
        if not self.repository.end(experiment.id, status, outcome, self.clock()):
            return None
        log.info(
            "experiment_ended",
            extra={"experiment": experiment.id, "status": status, "reason": outcome["reason"]},
        )
        ended = self.get(experiment.id)
        self.refresh()
        return ended

    def stop(self, experiment_id: str, actor: str = "admin") -> Experiment:
        """Stop it: every user gets the current model again. ExperimentEnded if it had ended."""
        experiment = self.get(experiment_id)
        if experiment.running:
            outcome = self._outcome(experiment, "stopped", f"stopped by {actor}", actor)
            ended = self._end(experiment, "stopped", outcome)
            if ended is not None:
                return ended
            experiment = self.get(experiment_id)
        raise ExperimentEnded(f"experiment {experiment_id} has ended already ({experiment.status})")

    def promote(self, experiment_id: str, actor: str = "admin") -> Promotion:
        """Make the candidate version ``current`` (see the module's docstring) and end the
        experiment as promoted; this worker serves it at once, the others within their
        reload interval.

        ExperimentEnded when it is not running; ExperimentRefused for a recipe of the
        current version, or when ``current`` is no longer the control; TrainerBusyError while
        a trainer holds the lock; RegistryError when the candidate does not load.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(trainer_lock(self.store.root))
            except TrainerBusyError as exc:  # its text names the lock file: no paths to callers
                raise TrainerBusyError(self.recommendations.public(str(exc))) from None
            experiment = self.get(experiment_id)
            if not experiment.running:
                raise ExperimentEnded(
                    f"experiment {experiment_id} has ended already ({experiment.status})"
                )
            if experiment.candidate_version == experiment.control_version:
                raise ExperimentRefused(
                    f"the candidate is recipe {experiment.candidate_recipe or 'served'} of "
                    f"version {experiment.candidate_version}, which is current already: the "
                    "registry switches versions, and a version's served recipe is the trainer's "
                    "choice; nothing was changed (stop the experiment, then retrain)"
                )
            before = self.store.current()
            if before != experiment.control_version:
                raise ExperimentRefused(
                    f"the current version is {before} now, not the experiment's control "
                    f"{experiment.control_version}: nothing was changed; stop the experiment"
                )
            target = experiment.candidate_version
            try:
                load_artifact(self.store.version_path(target), mmap=True)
            except ArtifactError as exc:
                raise RegistryError(
                    self.recommendations.public(
                        f"version {target} does not load ({exc}); {before} stays current"
                    )
                ) from None
            outcome = self._outcome(
                experiment, "promoted", f"{target} promoted by {actor} over {before}", actor
            )
            # the registry first: a switch that fails leaves the row running, nothing changed
            try:
                self.store.promote(target)
            except (OSError, RegistryError) as exc:
                log.error(
                    "experiment_promotion_failed",
                    extra={"experiment": experiment.id, "error": str(exc)},
                )
                with contextlib.suppress(RecofferError, OSError):
                    if self.store.current() == target:  # replaced, then its fsync failed
                        self._undo_promotion(experiment, before)
                raise RegistryError(
                    self.recommendations.public(
                        f"cannot make {target} current ({exc}); {before} stays current and "
                        f"experiment {experiment.id} keeps running"
                    )
                ) from None
            try:
                ended_here = self.repository.end(experiment.id, "promoted", outcome, self.clock())
            except BaseException:
                self._undo_promotion(experiment, before)
                raise
            if not ended_here:  # stopped meanwhile (a stop or the guard do not take the lock)
                self._undo_promotion(experiment, before)
                raise ExperimentEnded(f"experiment {experiment_id} has ended meanwhile")
            self._record_promotion(experiment, before, outcome)
            # this worker serves the candidate it holds as the current model: no second load
            adopted = None
            if self.serve_here:
                adopted = self.models.adopt_candidate(experiment.id, target)
        log.info("experiment_promoted", extra={"experiment": experiment.id, "version": target})
        ended = self.get(experiment.id)
        if not self.serve_here:
            return Promotion(ended, before, target, None, None)
        if adopted is not None:
            self.recommendations.loaded(adopted)  # counted; the new products' vectors rebuilt
            reloaded = adopted
        else:
            reloaded = self.recommendations.reload()
        self.refresh()
        error = None if reloaded.error is None else self.recommendations.public(reloaded.error)
        return Promotion(ended, before, target, reloaded.version, error)

    def _undo_promotion(self, experiment: Experiment, before: str) -> None:
        """Switch ``current`` back to ``before`` after the row could not be ended as promoted."""
        try:
            self.store.rollback(to=before)
        except (OSError, RegistryError) as exc:  # nothing more to do than to say so
            log.error(
                "experiment_promotion_undo_failed",
                extra={"experiment": experiment.id, "error": str(exc), "current": before},
            )

    def _record_promotion(
        self, experiment: Experiment, before: str, outcome: dict[str, Any]
    ) -> None:
        """The promotion in ``runs.jsonl``, so the next trainer's gate knows why it is current."""
        now = self.clock()
        figures = outcome["results"]
        ctr = figures["ctr"]["difference"]
        why = f"promoted by experiment {experiment.id} ({experiment.name}) over {before}" + (
            ""
            if ctr is None
            else f": CTR difference {ctr['estimate']:+.4f} [{ctr['low']:+.4f}, {ctr['high']:+.4f}]"
        )
        run = TrainingRun(
            started_at=now,
            finished_at=now,
            seconds=0.0,
            outcome="promoted",
            exit_code=0,
            by="experiment",
            version=experiment.candidate_version,
            current_before=before,
            reasons=[why],
            experiment_id=experiment.id,  # extra fields are allowed (``TrainingRun``)
            experiment_name=experiment.name,
            experiment_results={k: figures[k] for k in ("arms", "ctr", "conversion", "srm")},
        )
        try:
            record_run(self.store.root, run)
        except OSError as exc:  # the promotion stands; only its record is missing
            log.error("experiment_run_record_failed", extra={"error": str(exc)})

    # --- every worker ---------------------------------------------------------------------

    def refresh(self) -> bool:
        """Serve the running experiment's arms on this worker; the row is read under the
        holder's lock, so a refresh that waited there never serves an ended experiment."""
        if not self.serve_here:
            return False
        return self.models.refresh_experiment(self.repository.running)

    def _control_changed(self) -> Experiment | None:
        """Stop the running experiment if ``current`` is no longer its control, looked at
        while no writer holds the trainer lock: a promotion switches the registry, then ends
        the row, under that lock, and must not be taken for an orphan in between."""
        with no_writer(self.store.root) as settled:
            if not settled:
                return None  # a promotion, rollback or training run: the next look decides
            experiment = self.repository.running()
            if experiment is None:
                return None
            current = self.store.current()
            if current == experiment.control_version:
                return None
            detail = (
                f"the current version became {current}, no longer the control "
                f"{experiment.control_version}"
            )
            return self._end(
                experiment, "stopped", self._outcome(experiment, "control_changed", detail, "guard")
            )

    def check(self, *, guard: bool = True) -> Experiment | None:
        """Stop the running experiment when ``current`` is no longer its control (a trainer or
        a rollback switched it: the experiment would serve nobody and block new ones), and,
        with ``guard``, when the candidate is clearly worse. Every worker looks (the first
        every poll, the guard every ``experiment_guard_seconds``); the conditional UPDATE lets
        one act. Returns what it ended."""
        experiment = self.repository.running()
        if experiment is None:
            return None
        if self.store.current() != experiment.control_version:
            return self._control_changed()
        if not guard:
            return None
        found = self.results(experiment)
        if found.guard.tripped:
            outcome = {
                "reason": "guard",
                "detail": found.guard.reason,
                "by": "guard",
                "at": self.clock().isoformat(),
                "results": found.to_dict(),
            }
            return self._end(experiment, "stopped", outcome)
        return None
