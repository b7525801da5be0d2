#!/usr/bin/env python3
"""One place for the project's commands; needs only Python 3.11+ to start.

    python3 tasks.py run        # demo shop -> train -> API on 127.0.0.1:8000 (embedded defaults);
                                # the API itself is `python -m service`, as in the image
    python3 tasks.py test       # the whole test suite
    python3 tasks.py lint | fmt | typecheck | bench | reliability

The first call creates ``.venv`` and installs the project with its dev extras from
``pyproject.toml``; later calls reinstall only when ``pyproject.toml`` changed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("RECOFFER_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".recoffer-installed"


def ensure_venv() -> None:
    """Create the virtual environment and install the project when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - tasks.py runs on any system python
        sys.exit(f"recoffer needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text().strip() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print("installing recoffer and its dependencies (first run: about a minute)", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(*args: str) -> int:
    """Run a command; SIGTERM to this process is passed on (a supervisor stops the server too)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(list(args), cwd=ROOT, env=env)
    signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
    while True:
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl+C reaches the child through the process group too
            continue
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        # `recoffer demo` prepares the shop and the model, then execs `python -m service`
        "run": [str(BIN / "recoffer"), "demo", *rest],
        "test": [str(BIN / "python"), "-m", "pytest", *rest],
        "lint": [str(BIN / "ruff"), "check", ".", *rest],
        "fmt": [str(BIN / "ruff"), "format", ".", *rest],
        "typecheck": [str(BIN / "mypy"), *rest],
        "bench": [str(BIN / "python"), "-m", "benchmarks.run_all", *rest],
        "reliability": [str(BIN / "python"), "-m", "benchmarks.reliability", "--quick", *rest],
    }
    if command not in commands:
        print(f"unknown command {command!r}; one of: {', '.join(commands)}", file=sys.stderr)
        return 2
    ensure_venv()
    if command == "test":
        # pytest exits 5 when it collected nothing: that is a failure here, never a pass
        code = run(*commands[command])
        if code == 5:
            print("pytest collected no tests: failing", file=sys.stderr)
            return 1
        return code
    return run(*commands[command])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
