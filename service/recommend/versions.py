"""The model versions for ops: their figures and the gate's decision, the training runs, and
rolling back (issue 13, item 2). Shared by ``/v1/model/versions``, ``/runs``, ``/rollback`` and
the console's models page, so both show the same figures.

A rollback switches the registry's ``current`` under the trainer lock (a promotion cannot
interleave), once the version it goes back to has loaded and passed its checksums; then this
worker loads it at once, as ``POST /v1/model/reload`` does. Every other worker and replica
picks it up at its next registry poll (``RECOFFER_RELOAD_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.artifact import Manifest, ModelStore, RunLog, TrainingRun, load_artifact, read_runs
from service.artifact.lock import trainer_lock
from service.errors import ArtifactError, RegistryError, TrainerBusyError
from service.recommend.service import Recommendations
from service.scoring import PROTOCOLS


@dataclass(frozen=True)
class ProtocolFigures:
    """One protocol of a version: the candidate it serves and that candidate's figures."""

    protocol: str
    served: str
    test: dict[str, float]
    validation: dict[str, float]


@dataclass(frozen=True)
class GateView:
    passed: bool
    method: str
    forced: bool
    compared_with: str | None
    reasons: list[str]


@dataclass(frozen=True)
class VersionView:
    """One published version as ops sees it."""

    version: str
    current: bool  # the registry's pointer
    serving: bool  # what this worker serves now
    created_at: datetime | None
    data_until: datetime | None
    users: int | None
    items: int | None
    figures: list[ProtocolFigures] = field(default_factory=list)
    gate: GateView | None = None
    error: str | None = None  # an unreadable manifest


@dataclass(frozen=True)
class Versions:
    current: str | None
    serving: str | None
    previous: str | None  # what a rollback goes back to
    versions: list[VersionView]  # newest first


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback would do: from ``current`` to ``target``."""

    current: str | None
    serving: str | None
    target: VersionView
    current_view: VersionView | None


@dataclass(frozen=True)
class RollbackResult:
    before: str | None
    current: str
    serving: str | None  # this worker's version after the reload
    reloaded: bool
    error: str | None  # the reload's error, if this worker could not load it


def _figures(
    table: dict[str, dict[str, dict[str, Any]]], protocol: str, served: str
) -> dict[str, float]:
    row = table.get(protocol, {}).get(served, {})
    return {k: float(v) for k, v in row.items() if isinstance(v, int | float)}


def view_of(
    version: str, manifest: Manifest | None, current: str | None, serving: str | None
) -> VersionView:
    """A version's row from its manifest (None: unreadable)."""
    if manifest is None:
        return VersionView(
            version,
            version == current,
            version == serving,
            None,
            None,
            None,
            None,
            error="unreadable manifest",
        )
    gate = manifest.gate
    return VersionView(
        version=version,
        current=version == current,
        serving=version == serving,
        created_at=manifest.trained_at,
        data_until=manifest.data_until,
        users=manifest.counts.users,
        items=manifest.counts.items,
        figures=[
            ProtocolFigures(
                protocol=p,
                served=manifest.served.get(p, ""),
                test=_figures(manifest.metrics.test, p, manifest.served.get(p, "")),
                validation=_figures(manifest.metrics.validation, p, manifest.served.get(p, "")),
            )
            for p in PROTOCOLS
        ],
        gate=None
        if gate is None
        else GateView(
            gate.passed, gate.method, gate.forced, gate.current_version, list(gate.reasons)
        ),
    )


class ModelVersions:
    """The model root's versions and runs, and rollback, for one worker."""

    def __init__(self, recommendations: Recommendations) -> None:
        self.recommendations = recommendations
        self.store: ModelStore = recommendations.models.store

    def public(self, text: str) -> str:
        return self.recommendations.public(text)

    def listing(self) -> Versions:
        """Every version, newest first, with which is current, served here and previous."""
        current, previous = self.store.current(), self.store.previous()
        serving = self.recommendations.models.version
        views = [
            view_of(name, manifest, current, serving)
            for name, manifest in self.store.iter_manifests()
        ]
        views.reverse()
        return Versions(current, serving, previous, views)

    def runs(self, limit: int | None = None) -> RunLog:
        """The training runs recorded in the model root, newest first; errors without paths."""
        log = read_runs(self.store.root, limit)
        return RunLog([self._public_run(r) for r in log.runs], log.unreadable_lines)

    def _public_run(self, run: TrainingRun) -> TrainingRun:
        if run.error is None:
            return run
        return run.model_copy(update={"error": self.public(run.error)})

    def plan_rollback(self) -> RollbackPlan:
        """What ``rollback()`` would do; RegistryError when there is no earlier version."""
        current, target = self.store.current(), self.store.previous()
        if target is None:
            raise RegistryError(
                "nothing to roll back to: no earlier promoted version is kept"
                + (f" (current is {current})" if current else " (no model promoted yet)")
            )
        serving = self.recommendations.models.version
        manifests = dict(self.store.iter_manifests())
        target_view = view_of(target, manifests.get(target), current, serving)
        current_view = (
            None if current is None else view_of(current, manifests.get(current), current, serving)
        )
        return RollbackPlan(current, serving, target_view, current_view)

    def rollback(self, expected_current: str | None = None) -> RollbackResult:
        """Switch ``current`` back to the previously promoted version and serve it here now.

        ``expected_current``: refuse (RegistryError) when ``current`` is another version by
        now (a confirmation page shown before a training run promoted one).
        TrainerBusyError while a trainer holds the lock; RegistryError when there is nothing
        to go back to or the version it would go back to does not load.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(trainer_lock(self.store.root))
            except TrainerBusyError as exc:  # its text names the lock file: no paths to callers
                raise TrainerBusyError(self.public(str(exc))) from None
            before, target = self.store.current(), self.store.previous()
            if expected_current is not None and before != expected_current:
                raise RegistryError(
                    f"the current version is {before} now, not {expected_current}: "
                    "nothing was changed; look again before rolling back"
                )
            if target is None:
                raise RegistryError("nothing to roll back to: no earlier promoted version is kept")
            try:  # the whole version, checksums included, before anything is switched
                load_artifact(self.store.version_path(target), mmap=True)
            except ArtifactError as exc:
                raise RegistryError(
                    self.public(f"version {target} does not load ({exc}); {before} stays current")
                ) from None
            switched = self.store.rollback()
        outcome = self.recommendations.reload()
        error = None if outcome.error is None else self.public(outcome.error)
        return RollbackResult(before, switched, outcome.version, outcome.changed, error)
