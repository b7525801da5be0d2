"""Shared helpers: run a child process and measure it, store results, describe the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "var" / "bench"
PYTHON = sys.executable
PG_ADMIN = os.environ.get(
    "RECOFFER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


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


def report_peak() -> None:
    """Called at the end of a measured child: prints its peak RSS for ``measure`` to read."""
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{PEAK_MARK}{peak_kib / 1024:.1f}", file=sys.stderr)


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


def save(name: str, command: str, data: dict[str, Any]) -> Path:
    """Write one benchmark's result (with date, machine and the command that produced it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def this_command() -> str:
    return "python -m " + " ".join(
        [Path(sys.argv[0]).with_suffix("").relative_to(ROOT).as_posix().replace("/", ".")]
        + [shlex.quote(a) for a in sys.argv[1:]]
    )


@contextlib.contextmanager
def fresh_postgres(prefix: str) -> Iterator[str | None]:
    """A new empty database named ``prefix_<random>``, dropped afterwards.

    None when PostgreSQL is unreachable (that part is skipped and said so), unless
    RECOFFER_REQUIRE_POSTGRES=1 (CI), where a skip would hide a fault: then it exits.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = create_engine(
            PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure to connect means "not available here"
        reason = f"PostgreSQL unavailable: {str(exc).splitlines()[0]}"
        if os.environ.get("RECOFFER_REQUIRE_POSTGRES") == "1":
            raise SystemExit(f"{reason} (and RECOFFER_REQUIRE_POSTGRES=1)") from None
        print(f"{reason}; skipping", flush=True)
        yield None
        return
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
