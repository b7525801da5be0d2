"""The built-in scheduler: run ``recoffer train`` every interval or on a cron expression.

For the embedded setup (one machine, no cron, no Kubernetes). Each run is a child process, so a
crash, an out-of-memory kill or a ``kill -9`` of the training leaves the scheduler (and, through
the atomic publish and the trainer lock, the served model) untouched; the next slot simply runs
again. A run still going when the next slot comes is not doubled: the slot is skipped.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from croniter import croniter

from service.artifact.runs import TrainingRun, read_runs, record_run
from service.clock import SECONDS_PER_DAY
from service.errors import ScheduleError
from training.exit_codes import FAILED, OK, OUTCOMES, REFUSED

log = logging.getLogger(__name__)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": SECONDS_PER_DAY}


def parse_every(text: str) -> timedelta:
    """``"24h"``, ``"30m"``, ``"90s"``, ``"1d"`` or ``"1h30m"`` as a duration (at least 1 s)."""
    parts = re.findall(r"(\d+)\s*([smhd])", text.strip().lower())
    if not parts or re.sub(r"\s|\d+[smhd]", "", text.strip().lower()):
        raise ScheduleError(f"--every {text!r}: use a duration such as 24h, 30m, 90s or 1h30m")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds < 1:
        raise ScheduleError(f"--every {text!r}: the interval must be at least one second")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Schedule:
    """When to run: a fixed interval from the previous start, or a cron expression (UTC)."""

    every: timedelta | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ScheduleError("give exactly one of --every and --cron")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ScheduleError(f"--cron {self.cron!r} is not a valid cron expression")

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment``."""
        if self.every is not None:
            return moment + self.every
        assert self.cron is not None
        following: datetime = croniter(self.cron, moment.astimezone(UTC)).get_next(datetime)
        return following

    def describe(self) -> str:
        return f"every {self.every}" if self.every is not None else f"cron '{self.cron}' (UTC)"


@dataclass(frozen=True)
class RunOutcome:
    started_at: datetime
    seconds: float
    exit_code: int

    @property
    def outcome(self) -> str:
        return OUTCOMES.get(self.exit_code, "killed" if self.exit_code < 0 else "failed")

    @property
    def failed(self) -> bool:
        """A run that did not finish its job (a refused model is a finished job)."""
        return self.exit_code not in (OK, REFUSED)


def train_command(train_args: Sequence[str]) -> list[str]:
    """The child process of one run: this interpreter's ``recoffer train``."""
    return [sys.executable, "-m", "training.cli", "train", *train_args]


class Scheduler:
    """Runs ``command`` on ``schedule`` until stopped or ``max_runs`` runs have started."""

    def __init__(
        self,
        schedule: Schedule,
        command: Sequence[str],
        *,
        run_now: bool = False,
        max_runs: int | None = None,
        timeout: timedelta | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        model_dir: Path | None = None,
    ) -> None:
        self.schedule = schedule
        self.command = list(command)
        self.run_now = run_now
        self.max_runs = max_runs
        self.timeout = timeout
        self.clock = clock
        # the runs' record (``service.artifact.runs``): what a run could not write itself
        self.model_dir = model_dir
        self.history: list[RunOutcome] = []
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self, *_: object) -> None:
        """Finish after the run under way (if any); a second call stops that run too."""
        if self._stop.is_set() and self._child is not None and self._child.poll() is None:
            self._child.terminate()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("schedule_stopping", extra={"signal": signal.Signals(signum).name})
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> list[RunOutcome]:
        """Loop until stopped; returns every run's outcome."""
        slot = self.clock() if self.run_now else self.schedule.next_after(self.clock())
        while not self._stop.is_set():
            if self.max_runs is not None and len(self.history) >= self.max_runs:
                break
            wait = (slot - self.clock()).total_seconds()
            if wait > 0:
                log.info("schedule_waiting", extra={"next_run": slot.isoformat()})
                if self._stop.wait(wait):
                    break
            started = self.clock()
            self.history.append(self._run_once(started))
            slot = self.schedule.next_after(slot)
            now = self.clock()
            skipped = 0
            while slot <= now:  # the run outlasted slots: skip them, never run twice at once
                slot = self.schedule.next_after(slot)
                skipped += 1
            if skipped:
                log.warning("schedule_slots_skipped", extra={"skipped": skipped})
                self._record_skipped(skipped, now)
        return self.history

    def _run_once(self, started: datetime) -> RunOutcome:
        log.info("training_started", extra={"command": " ".join(self.command[2:])})
        t0 = time.monotonic()
        timed_out = False
        self._child = subprocess.Popen(self.command)
        try:
            timeout = self.timeout.total_seconds() if self.timeout is not None else None
            code = self._child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("training_timed_out", extra={"seconds": round(time.monotonic() - t0, 1)})
            self._child.kill()
            code = self._child.wait()
            timed_out = True
        finally:
            self._child = None
        outcome = RunOutcome(started, time.monotonic() - t0, code)
        self._record_unrecorded(outcome, timed_out)
        level = logging.ERROR if outcome.failed else logging.INFO
        log.log(
            level,
            "training_finished",
            extra={
                "outcome": outcome.outcome,
                "exit_code": code,
                "seconds": round(outcome.seconds, 2),
            },
        )
        return outcome

    def _record(self, run: TrainingRun) -> None:
        if self.model_dir is None:
            return
        try:
            record_run(self.model_dir, run)
        except OSError as exc:
            log.warning("training_run_not_recorded", extra={"error": str(exc)})

    def _record_unrecorded(self, outcome: RunOutcome, timed_out: bool) -> None:
        """Record a run that ended without recording itself: killed (out of memory, kill -9,
        the time limit) or stopped before the pipeline started."""
        if self.model_dir is None:
            return
        since = outcome.started_at - timedelta(seconds=1)  # the child's clock read it later
        try:
            recorded = any(r.started_at >= since for r in read_runs(self.model_dir, 5).runs)
        except OSError:
            recorded = False
        if recorded:
            return
        code = outcome.exit_code
        if timed_out:
            why = f"timed out after {outcome.seconds:.0f} s (--timeout) and was killed"
        elif code < 0:
            why = f"killed by signal {signal.Signals(-code).name}"
        else:
            why = f"recoffer train exited with code {code} before training started"
        finished = outcome.started_at + timedelta(seconds=outcome.seconds)
        self._record(
            TrainingRun(
                started_at=outcome.started_at,
                finished_at=finished,
                seconds=round(outcome.seconds, 3),
                outcome="refused" if code == REFUSED else "failed",
                exit_code=code if code >= 0 else FAILED,
                by="schedule",
                error=None if code == REFUSED else why,
            )
        )

    def _record_skipped(self, skipped: int, now: datetime) -> None:
        self._record(
            TrainingRun(
                started_at=now,
                finished_at=now,
                seconds=0.0,
                outcome="skipped",
                exit_code=OK,
                by="schedule",
                error=f"{skipped} scheduled slot(s) skipped: the previous run outlasted them",
            )
        )
