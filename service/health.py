"""Liveness, readiness and the Prometheus exposition (of this worker, or of all the server's)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from service.errors import RecofferError
from service.metrics import Metrics
from service.recommend.holder import ModelHolder


@dataclass(frozen=True)
class Readiness:
    ready: bool
    model_version: str | None
    database: bool
    detail: str | None


class Health:
    """Whether this worker can serve, and its metrics."""

    def __init__(self, models: ModelHolder, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics
        self.database_ready = False

    def database(self, up: bool) -> None:
        """Record whether the database answered (the tail and start-up call this)."""
        self.database_ready = up
        self.metrics.database_up.set(1 if up else 0)

    def readiness(self) -> Readiness:
        """Ready when a model is served, or when no model exists yet and events can be stored.

        An unreadable registry is not ready (the detail says why).
        """
        version = self.models.version
        try:
            no_model_yet = version is None and self.models.store.current() is None
        except RecofferError:
            no_model_yet = False
        return Readiness(
            ready=version is not None or (no_model_yet and self.database_ready),
            model_version=version,
            database=self.database_ready,
            detail=None if self.models.last_error is None else self.public(self.models.last_error),
        )

    def public(self, text: str) -> str:
        """``text`` without this machine's layout (see :func:`without_paths`)."""
        return without_paths(text, self.models.store.root)

    def exposition(self) -> bytes:
        """The Prometheus text, with this worker's model age brought up to now."""
        recommender = self.models.current
        if recommender is not None:
            trained = recommender.model.artifact.manifest.trained_at
            self.metrics.model_age.set(time.time() - trained.timestamp())
        return self.metrics.render()


# a slash-separated absolute path, not preceded by a word (so RECOFFER_MODEL_DIR/v2 stays)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s'\"(),;:]+")


def without_paths(text: str, model_root: Path) -> str:
    """``text`` without this machine's layout, for an answer: the model root named by its
    setting, any other absolute path (a database file, a registry file) cut to its last part."""
    for path in sorted({str(model_root.resolve()), str(model_root)}, key=len, reverse=True):
        if Path(path).is_absolute():
            text = text.replace(path, "RECOFFER_MODEL_DIR")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
