"""Which model is served, and switching to a new one without failing a request.

A new version is loaded and prepared completely (checksums, candidates) before the reference
is swapped; requests in flight keep the object they started with. A version that fails to load
is logged and counted, and the old one keeps serving.

Versions are loaded into memory this process owns (``load_artifact(mmap=False)``): each file is
read once and checked against its size and sha256 before anything is served, and never read
again, so a file truncated or overwritten in place later (a ``cp`` of a backup over the live
directory) cannot crash the process with SIGBUS the way a memory-mapped one would. Two
exceptions, both checked the same way first (issue 15): files of at least
``RECOFFER_MMAP_MIN_BYTES`` (unset: none) are memory-mapped, one copy in the page cache for
every worker (ten million users' factors), and an ANN index is always a memory-mapped view.
Published files are read-only; a version directory is never written again.

During an experiment (issue 14, item 3) the holder also holds the experiment's arms
(``ExperimentArms``): the candidate's ``Recommender`` (a second version, or a candidate recipe
of the current one), and the control's when the control serves a named recipe. They are loaded
and prepared completely in the caller's thread (the background loop's, never the event loop),
then swapped in with one assignment; ending the experiment drops the reference, and the
candidate's memory goes with the last request that used it. The running row is read under the
holder's lock, right before the swap, so a refresh that read it earlier never brings back the
arms of an experiment stopped meanwhile. A candidate that fails to load is tried again with a
back-off (``RETRY_FIRST_SECONDS`` doubling to ``RETRY_MAX_SECONDS``); ``experiment_error``
says why until it loads. A promoted candidate served with its version's recipe becomes the
current model as it is (``adopt_candidate`` on the worker that promotes, ``refresh`` on the
others, while they still hold the arms): no second copy is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from service.artifact import Artifact, Manifest, ModelStore, load_artifact
from service.errors import RecofferError
from service.experiments.arms import arm_of
from service.recommend.recommender import Recommender
from service.recommend.serving import ServingOptions, prepare
from service.scoring import PROTOCOLS, Recipe

if TYPE_CHECKING:
    from service.experiments.repository import Experiment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOutcome:
    changed: bool
    version: str | None
    error: str | None = None
    attempted: bool = False  # a load was tried now (not skipped: same or known-bad version)


class ModelHolder:
    """Holds the current Recommender (or None) for one process."""

    def __init__(
        self,
        model_dir: Path,
        *,
        candidates_per_user: int = 200,
        precompute_max_cells: int = 400_000_000,
        event_weights: dict[str, float] | None = None,
        options: ServingOptions | None = None,
    ) -> None:
        self.store = ModelStore(model_dir)
        self.options = options or ServingOptions(
            candidates_per_user=candidates_per_user, precompute_max_cells=precompute_max_cells
        )
        self.candidates_per_user = self.options.candidates_per_user
        self.precompute_max_cells = self.options.precompute_max_cells
        self.event_weights = event_weights
        self.current: Recommender | None = None
        self.last_error: str | None = None
        self._failed_version: str | None = None
        self._lock = threading.Lock()
        self._seen_signature: tuple[int, int] | None = None
        # the running experiment's arms (None: no experiment, or it could not be loaded here)
        self.experiment: ExperimentArms | None = None
        self.experiment_error: str | None = None
        self._experiment_key: tuple[str, int] | None = None  # (id, row version) served
        # a candidate that failed to load here: its key, failures so far, when to try again
        self._experiment_failed: tuple[str, int] | None = None
        self._experiment_failures = 0
        self._experiment_retry_at = 0.0
        self.monotonic: Callable[[], float] = time.monotonic  # tests move it

    def registry_changed(self) -> bool:
        """Whether the registry file changed since the last refresh (a stat, no thread hop)."""
        return self.store.registry_signature() != self._seen_signature

    @property
    def version(self) -> str | None:
        return self.current.model.version if self.current else None

    def refresh(self, *, force: bool = False) -> LoadOutcome:
        """Load the registry's current version when it differs from the one served.

        A version that failed before is retried only with ``force``.
        """
        with self._lock:
            self._seen_signature = self.store.registry_signature()
            try:
                wanted = self.store.current()
            except RecofferError as exc:
                self.last_error = str(exc)
                return LoadOutcome(False, self.version, str(exc))
            if wanted is None or wanted == self.version:
                return LoadOutcome(False, self.version)
            if wanted == self._failed_version and not force:
                return LoadOutcome(False, self.version, self.last_error)
            try:
                recommender = self._promoted_candidate(wanted) or self._load(wanted)
            except Exception as exc:  # whatever breaks a load, the old model keeps serving
                self._failed_version = wanted
                self.last_error = f"cannot load model {wanted}: {exc}"
                log.error("model_load_failed", extra={"version": wanted, "error": str(exc)})
                return LoadOutcome(False, self.version, self.last_error, attempted=True)
            previous = self.version
            self.current = recommender
            self._failed_version, self.last_error = None, None
            log.info("model_loaded", extra={"version": wanted, "previous": previous})
            return LoadOutcome(True, wanted, attempted=True)

    def _load(self, version: str) -> Recommender:
        artifact = self.load_version(version)
        model = prepare(artifact, options=self.options)
        return Recommender(model, event_weights=self.event_weights)

    def load_version(self, version: str) -> Artifact:
        """``version`` loaded and checked, owned (its large files mapped: ``options``)."""
        return load_artifact(
            self.store.version_path(version),
            mmap=False,
            mmap_min_bytes=self.options.mmap_min_bytes,
        )

    def _promoted_candidate(self, version: str) -> Recommender | None:
        """The running experiment's candidate when it is ``version`` with its served recipe
        (promoted elsewhere): served as it is, not loaded a second time."""
        arms = self.experiment
        if arms is None or arms.candidate_recipe is not None or arms.candidate_version != version:
            return None
        return arms.candidate

    def prepare_experiment(self, experiment: Experiment) -> ExperimentArms:
        """``experiment``'s arms, loaded fully but not served yet (``install_experiment``);
        raises what the load raises. Blocking: call it off the loop."""
        return build_arms(self, experiment)

    def install_experiment(
        self, arms: ExperimentArms, running: Callable[[], Experiment | None]
    ) -> bool:
        """Serve arms ``prepare_experiment`` built (one assignment), if ``running()``, read
        under the lock, is still their experiment's row; otherwise serve what it says (an
        experiment stopped meanwhile: nothing). True when these arms were installed."""
        with self._lock:
            row = running()
            if row is not None and (row.id, row.version) == (arms.experiment_id, arms.row_version):
                _install(self, arms)
                installed = True
            else:
                _load_experiment(self, row)
                installed = False
        release_freed_memory()
        return installed

    def refresh_experiment(self, running: Callable[[], Experiment | None]) -> bool:
        """Serve the arms of the experiment ``running()`` returns, read under the lock and
        loaded fully before the swap (None: release them); True when what this worker serves
        changed. Blocking: call it off the loop."""
        with self._lock:
            return _load_experiment(self, running())

    def adopt_candidate(self, experiment_id: str, version: str) -> LoadOutcome | None:
        """After ``version`` was promoted by experiment ``experiment_id``: serve its candidate
        arm as the current model and release the arms, without loading it again; None (nothing
        changed) unless the arm is that version with its served recipe."""
        with self._lock:
            arms = self.experiment
            if (
                arms is None
                or arms.experiment_id != experiment_id
                or arms.candidate_recipe is not None
                or arms.candidate_version != version
            ):
                return None
            previous = self.version
            self.current = arms.candidate
            self._seen_signature = self.store.registry_signature()
            self._failed_version, self.last_error = None, None
            _release(self)
            log.info(
                "model_loaded", extra={"version": version, "previous": previous, "adopted": True}
            )
        release_freed_memory()
        return LoadOutcome(True, version, attempted=True)


# --- an experiment's second model (issue 14, item 3) --------------------------------------


def candidate_recipes(manifest: Manifest, name: str) -> tuple[dict[str, Recipe], frozenset[str]]:
    """The recipes serving candidate ``name`` of a version, per protocol, and the protocols it
    covers; a protocol the candidate has no recipe for (``repeat`` under ``novel``) keeps the
    version's served recipe. KeyError when the manifest has no such candidate."""
    own = manifest.candidates[name]
    recipes = {p: own.get(p, manifest.recipes[p]) for p in PROTOCOLS}
    return recipes, frozenset(p for p in PROTOCOLS if p in own)


RETRY_FIRST_SECONDS = 5.0  # a candidate that failed to load here is tried again after this,
RETRY_MAX_SECONDS = 300.0  # doubling up to this
ARMS_REMEMBERED = 50_000  # users whose arm each worker keeps (about 8 MB; then it starts again)


@dataclass(frozen=True)
class ExperimentArms:
    """The running experiment as this worker serves it.

    ``control`` is None when the control arm is the current model as it is; the arm of a user
    is ``service.experiments.arms.arm_of`` of the experiment's id and the user's, remembered
    for the users seen lately (a dict lookup instead of a SHA-256 on every request).
    """

    experiment_id: str
    row_version: int
    share: float
    control_version: str
    candidate: Recommender
    control: Recommender | None = None
    candidate_recipe: str | None = None
    candidate_covers: frozenset[str] = frozenset()
    control_recipe: str | None = None
    control_covers: frozenset[str] = frozenset()
    _labels: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _arms: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for arm, name, covers in (
            ("candidate", self.candidate_recipe, self.candidate_covers),
            ("control", self.control_recipe, self.control_covers),
        ):
            for protocol in PROTOCOLS:
                label = name if name is not None and protocol in covers else protocol
                self._labels[(arm, protocol)] = label

    @property
    def candidate_version(self) -> str:
        return self.candidate.model.version

    def arm_of(self, user_id: str) -> str:
        """The user's arm (``service.experiments.arms.arm_of``), remembered."""
        arm = self._arms.get(user_id)
        if arm is None:
            if len(self._arms) >= ARMS_REMEMBERED:
                self._arms.clear()  # a dict's clear and set are atomic under the GIL
            arm = self._arms[user_id] = arm_of(self.experiment_id, user_id, self.share)
        return arm

    def forget(self, erased: Callable[[str], bool]) -> int:
        """Drop the remembered arms of the users ``erased`` says (erasure, issue 11): an arm
        is only a hash of the id, but the id itself must not stay in memory."""
        gone = [u for u in list(self._arms) if erased(u)]
        for user_id in gone:
            self._arms.pop(user_id, None)
        return len(gone)

    def recipe_label(self, arm: str, protocol: str) -> str:
        """What ``Served.recipe`` says: the named recipe where it covers the protocol."""
        return self._labels.get((arm, protocol), protocol)


def _experiment_recommender(
    holder: ModelHolder, artifact: Artifact, recipe: str | None
) -> tuple[Recommender, frozenset[str]]:
    recipes: Mapping[str, Recipe] | None = None
    covers: frozenset[str] = frozenset()
    if recipe is not None:
        recipes, covers = candidate_recipes(artifact.manifest, recipe)
    model = prepare(artifact, recipes=recipes, options=holder.options)
    return Recommender(model, event_weights=holder.event_weights), covers


def build_arms(holder: ModelHolder, experiment: Experiment) -> ExperimentArms:
    """``experiment``'s arms loaded and prepared completely (checksums, candidates); raises
    whatever a load raises. The served version's arrays are shared, not loaded twice."""
    current = holder.current
    shared: Artifact | None = None  # the served version's arrays, reused for its recipes
    if current is not None and current.model.version == experiment.control_version:
        shared = current.model.artifact

    def artifact_of(version: str) -> Artifact:
        if shared is not None and shared.version == version:
            return shared
        return holder.load_version(version)

    candidate, candidate_covers = _experiment_recommender(
        holder, artifact_of(experiment.candidate_version), experiment.candidate_recipe
    )
    control: Recommender | None = None
    control_covers: frozenset[str] = frozenset()
    if experiment.control_recipe is not None:
        control, control_covers = _experiment_recommender(
            holder, artifact_of(experiment.control_version), experiment.control_recipe
        )
    return ExperimentArms(
        experiment_id=experiment.id,
        row_version=experiment.version,
        share=experiment.share,
        control_version=experiment.control_version,
        candidate=candidate,
        control=control,
        candidate_recipe=experiment.candidate_recipe,
        candidate_covers=candidate_covers,
        control_recipe=experiment.control_recipe,
        control_covers=control_covers,
    )


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). A load in a worker thread leaves its temporary buffers in that thread's malloc
    arena, which glibc keeps: measured on the Online Retail model, 71 MiB more RSS per worker
    than the arms themselves take, until trimmed."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _install(holder: ModelHolder, arms: ExperimentArms) -> None:
    holder._experiment_key = (arms.experiment_id, arms.row_version)
    holder._experiment_failed, holder._experiment_failures = None, 0
    holder.experiment, holder.experiment_error = arms, None  # one assignment: the swap
    log.info(
        "experiment_loaded",
        extra={"experiment": arms.experiment_id, "candidate": arms.candidate_version},
    )


def _release(holder: ModelHolder) -> bool:
    holder._experiment_key = None
    holder._experiment_failed, holder._experiment_failures = None, 0
    changed = holder.experiment is not None
    holder.experiment, holder.experiment_error = None, None
    if changed:
        log.info("experiment_released")
    return changed


def _load_experiment(holder: ModelHolder, experiment: Experiment | None) -> bool:
    """Serve ``experiment``'s arms (None: no experiment; release them); True when they changed.

    Blocking (seconds on big models): call it off the event loop, with the holder's lock held.
    A candidate that fails to load is logged, ``experiment_error`` says why, and this worker
    serves everyone the current model without an arm (its lists count for neither arm) until
    a later try loads it: the first after ``RETRY_FIRST_SECONDS``, each next one after twice
    the wait, at most ``RETRY_MAX_SECONDS``.
    """
    if experiment is None or not experiment.running:
        if _release(holder):
            release_freed_memory()  # what the last request still using them kept is freed later
            return True
        return False
    key = (experiment.id, experiment.version)
    if key == holder._experiment_key:
        return False
    now = holder.monotonic()
    if key == holder._experiment_failed and now < holder._experiment_retry_at:
        return False
    try:
        arms = build_arms(holder, experiment)
    except Exception as exc:  # whatever breaks a load, the control keeps serving everyone
        failures = holder._experiment_failures + 1 if key == holder._experiment_failed else 1
        wait = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
        holder._experiment_key = None
        holder._experiment_failed, holder._experiment_failures = key, failures
        holder._experiment_retry_at = now + wait
        changed = holder.experiment is not None
        holder.experiment = None
        holder.experiment_error = f"cannot load experiment {experiment.id}: {exc}"
        log.error(
            "experiment_load_failed",
            extra={"experiment": experiment.id, "error": str(exc), "retry_in": wait},
        )
        return changed
    _install(holder, arms)
    release_freed_memory()
    return True
