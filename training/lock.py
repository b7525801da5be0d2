"""The trainer lock: one trainer at a time per model root (``service.artifact.lock`` owns it, as
the API's rollback takes it too)."""

from __future__ import annotations

from service.artifact.lock import LOCK_FILE, trainer_lock

__all__ = ["LOCK_FILE", "trainer_lock"]
