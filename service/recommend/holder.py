"""Which model is served, and switching to a new one without failing a request.

A new version is loaded and prepared completely (checksums, candidates) before the reference
is swapped; requests in flight keep the object they started with. A version that fails to load
is logged and counted, and the old one keeps serving.

Versions are loaded into memory this process owns (``load_artifact(mmap=False)``): each file is
read once and checked against its size and sha256 before anything is served, and never read
again, so a file truncated or overwritten in place later (a ``cp`` of a backup over the live
directory) cannot crash the process with SIGBUS the way a memory-mapped one would.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from service.artifact import ModelStore, load_artifact
from service.errors import RecofferError
from service.recommend.recommender import Recommender
from service.recommend.serving import prepare

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
    ) -> None:
        self.store = ModelStore(model_dir)
        self.candidates_per_user = candidates_per_user
        self.precompute_max_cells = precompute_max_cells
        self.event_weights = event_weights
        self.current: Recommender | None = None
        self.last_error: str | None = None
        self._failed_version: str | None = None
        self._lock = threading.Lock()
        self._seen_signature: tuple[int, int] | None = None

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
                artifact = load_artifact(self.store.version_path(wanted), mmap=False)
                model = prepare(
                    artifact,
                    candidates_per_user=self.candidates_per_user,
                    precompute_max_cells=self.precompute_max_cells,
                )
            except Exception as exc:  # whatever breaks a load, the old model keeps serving
                self._failed_version = wanted
                self.last_error = f"cannot load model {wanted}: {exc}"
                log.error("model_load_failed", extra={"version": wanted, "error": str(exc)})
                return LoadOutcome(False, self.version, self.last_error, attempted=True)
            previous = self.version
            self.current = Recommender(model, event_weights=self.event_weights)
            self._failed_version, self.last_error = None, None
            log.info("model_loaded", extra={"version": wanted, "previous": previous})
            return LoadOutcome(True, wanted, attempted=True)
