"""The trainer lock: one writer of the registry at a time per model root, released when its
process dies. Held by ``recoffer train``, ``recoffer rollback`` and ``prune``, and by the API's
rollback (``POST /v1/model/rollback``), so a rollback never races a promotion."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from service.errors import TrainerBusyError

LOCK_FILE = ".trainer.lock"


@contextlib.contextmanager
def trainer_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on the model root; released when the process dies."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainerBusyError(
                f"another trainer is running on {root} (lock {root / LOCK_FILE})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def no_writer(root: Path) -> Iterator[bool]:
    """Hold a shared lock on the model root if no writer (``trainer_lock``) holds it: yields
    True then, False while a writer is switching the registry (a promotion, a rollback, a
    training run). What is read under it is the registry between two writers' steps; a writer
    that starts meanwhile is refused as busy, so hold it for milliseconds. A root where the
    lock file cannot be opened (read-only) yields True: nothing there can write either."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
