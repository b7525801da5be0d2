"""The training runs of a model root: ``<root>/runs.jsonl``, one JSON object a line, newest last.

Written by the trainer (``training.pipeline.run``: promoted, refused by the gate, failed,
skipped because another trainer held the lock) and by the scheduler for what a run could not
write itself (killed, timed out, skipped slots); read by the API and the console, which show
what happened and when without a database.

Safe to write from several processes: every record is appended with one ``write`` on a file
opened ``O_APPEND`` and fsynced, under a lock of its own (``.runs.lock``; the trainer lock is
held for minutes, this one for a write). A writer killed mid-line leaves a torn last line: the
reader skips any line that is not a whole record, and the next writer starts on a new line.
The file is bounded: past ``KEEP_RUNS`` and a margin it is rewritten with the newest
``KEEP_RUNS`` records (temporary file, fsync, rename, fsync of the directory), so a reader sees
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.artifact.store import TEMP_PREFIX, fsync_dir, write_bytes_durably

log = logging.getLogger(__name__)

RUNS = "runs.jsonl"
RUNS_LOCK = ".runs.lock"
KEEP_RUNS = 500  # records kept when the file is trimmed
_MARGIN = 100  # appended past KEEP_RUNS before a trim, so a trim is rare
ERROR_LENGTH = 500

Outcome = Literal["promoted", "refused", "failed", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("promoted", "refused", "failed", "skipped")


class TrainingRun(BaseModel):
    """One training run, or one slot the scheduler skipped."""

    model_config = ConfigDict(extra="allow", frozen=True)

    started_at: datetime  # UTC
    finished_at: datetime
    seconds: float = Field(ge=0)
    outcome: Outcome
    exit_code: int  # what ``recoffer train`` ended (or would end) with, README "Exit codes"
    by: str = "train"  # "train" (the trainer itself) or "schedule" (the scheduler for it)
    version: str | None = None  # the version it published (promoted or not)
    current_before: str | None = None  # the current version when it started
    forced: bool = False  # promoted with --force although the gate refused
    reasons: list[str] = Field(default_factory=list)  # the gate's reasons
    error: str | None = None  # why it failed or was skipped


@dataclass(frozen=True)
class RunLog:
    """The runs read back, newest first, and how many lines were not whole records."""

    runs: list[TrainingRun]
    unreadable_lines: int


@contextlib.contextmanager
def _runs_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / RUNS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: the holder only appends or trims
        yield
    finally:
        os.close(fd)


def _lines(file: Path) -> list[bytes]:
    try:
        return file.read_bytes().splitlines()
    except FileNotFoundError:
        return []


def _parse(line: bytes) -> TrainingRun | None:
    if not line.strip():
        return None
    try:
        return TrainingRun.model_validate_json(line)
    except ValidationError:
        return None


def record_run(root: Path, run: TrainingRun, *, keep: int = KEEP_RUNS) -> None:
    """Append ``run`` to ``root/runs.jsonl`` durably; trim the file to the newest ``keep``.

    Raises OSError when the model root cannot be written (the callers log it: a training
    run's result never depends on its record).
    """
    root.mkdir(parents=True, exist_ok=True)
    if run.error is not None and len(run.error) > ERROR_LENGTH:
        run = run.model_copy(update={"error": run.error[: ERROR_LENGTH - 1] + "…"})
    line = run.model_dump_json().encode() + b"\n"
    file = root / RUNS
    with _runs_lock(root):
        fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            # a writer killed mid-line left no newline: start on a line of our own
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        lines = _lines(file)
        if len(lines) > keep + _MARGIN:
            _trim(root, lines, keep)


def _trim(root: Path, lines: list[bytes], keep: int) -> None:
    """Rewrite the file with its newest ``keep`` whole records (atomically)."""
    whole = [line for line in lines if _parse(line) is not None][-keep:]
    tmp = root / f"{TEMP_PREFIX}{RUNS}-{secrets.token_hex(4)}"
    try:
        write_bytes_durably(tmp, b"".join(line + b"\n" for line in whole))
        os.replace(tmp, root / RUNS)
        fsync_dir(root)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_runs(root: Path, limit: int | None = None) -> RunLog:
    """The runs recorded under ``root``, newest first (at most ``limit``); lines that are not
    whole records (a torn last line) are skipped and counted."""
    runs: list[TrainingRun] = []
    unreadable = 0
    for line in reversed(_lines(root / RUNS)):
        if not line.strip():
            continue
        parsed = _parse(line)
        if parsed is None:
            unreadable += 1
            continue
        if limit is None or len(runs) < limit:
            runs.append(parsed)
    return RunLog(runs, unreadable)
