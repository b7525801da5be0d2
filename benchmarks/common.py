"""Shared helpers: run a child process and measure it, store results, describe the machine.

Servers, the fault proxy, fresh databases and session users: ``benchmarks.harness``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "var" / "bench"
PYTHON = sys.executable
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"


def train_online_retail(root: Path, *options: str) -> None:
    """``recoffer train`` on Online Retail into the model root ``root`` (``options``: more
    of its options, such as ``--tune-seconds 60``); raises when it fails."""
    command = [PYTHON, "-m", "training.cli", "train", "--data", str(ONLINE_RETAIL)]
    command += ["--format", "online-retail", "--model-dir", str(root), *options]
    subprocess.run(command, cwd=ROOT, check=True)


@dataclass
class Measurement:
    seconds: float
    peak_rss_mib: float
    stdout: str
    stderr: str
    returncode: int


def measure(command: list[str], *, env: dict[str, str] | None = None) -> Measurement:
    """Run ``command`` to completion; wall time and the child's own peak resident memory."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    # measured children call report_peak() last; their own getrusage is exact per child
    return Measurement(seconds, _peak_from_stderr(err), out, err, proc.returncode)


PEAK_MARK = "PEAK_RSS_MIB="


def peak_rss_mib() -> float:
    """This process image's peak RSS in MiB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries into it the peak of the image an ``exec`` replaced, so a
    child started by a large parent reported the parent's size (489 MiB for a 120 MiB run).
    ``ru_maxrss`` stays the answer where /proc is not there.
    """
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_peak() -> None:
    """Called at the end of a measured child: prints its peak RSS for ``measure`` to read."""
    print(f"{PEAK_MARK}{peak_rss_mib():.1f}", file=sys.stderr)


def _peak_from_stderr(stderr: str) -> float:
    for line in reversed(stderr.splitlines()):
        if line.startswith(PEAK_MARK):
            return float(line[len(PEAK_MARK) :])
    return float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    return info


def save(name: str, command: str, data: dict[str, Any], directory: Path = RESULTS) -> Path:
    """Write one benchmark's result (with date, machine and the command that produced it).

    ``directory``: ``RESULTS`` (tracked, rendered into docs/benchmarks.md) by default; a check
    run such as CI's writes under ``WORK`` so it leaves the tracked files as they were.
    """
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        **data,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def this_command() -> str:
    return "python -m " + " ".join(
        [Path(sys.argv[0]).with_suffix("").relative_to(ROOT).as_posix().replace("/", ".")]
        + [shlex.quote(a) for a in sys.argv[1:]]
    )
