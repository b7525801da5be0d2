"""The API's own entry point: ``python -m service [--host H] [--port P] [--workers N] ...``.

Settings come from the ``RECOFFER_*`` variables (``service.settings``); the options override
the few a person types. Nothing of ``training/`` is imported here, so pandas, implicit and the
trainer stay out of every API worker (the Docker image, Kubernetes and ``recoffer serve`` all
start the API this way). Exit codes: 0 stopped, 2 a bad setting or a taken address.

Before anything imports prometheus_client, each start makes a fresh, private directory and
names it in ``PROMETHEUS_MULTIPROC_DIR``: every worker keeps its metrics there, any worker's
``/metrics`` sums them (``service.metrics``), and the directory goes when the server stops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

APP_FACTORY = "service.app:create_app_from_env"
METRICS_DIR_PREFIX = "recoffer-metrics-"  # under TMPDIR (Kubernetes: the writable /tmp volume)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the recoffer HTTP API (settings from RECOFFER_* variables).",
    )
    parser.add_argument("--host", help="bind address (RECOFFER_HOST)")
    parser.add_argument("--port", type=int, help="bind port (RECOFFER_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1..64)")
    parser.add_argument("--model-dir", type=Path, help="model root (RECOFFER_MODEL_DIR)")
    parser.add_argument("--database-url", help="sqlite:///path or postgresql://... ")
    parser.add_argument(
        "--development",
        action="store_true",
        help="no API keys, loopback only (RECOFFER_AUTH_DISABLED=true)",
    )
    return parser.parse_args(list(argv))


def _fail(message: str) -> int:
    print(f"recoffer: error: {message}", file=sys.stderr)  # noqa: T201 - an entry point
    return 2


def address_problem(host: str, port: int) -> str | None:
    """None when ``host:port`` can be bound, else why not (checked before a long start-up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the settings, then run uvicorn with the app factory."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # a fresh directory per start: counts of an earlier run never leak into this one's sums
    shared = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
    previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared  # before prometheus_client is imported
    # uvicorn raises the signal it stopped on again once it has stopped: with these handlers
    # that ends in SystemExit (status 0, "stopped"), so the directory is removed
    previous_handlers = {sig: signal.signal(sig, _stopped) for sig in STOP_SIGNALS}
    try:
        return _serve(args)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        shutil.rmtree(shared, ignore_errors=True)
        if previous is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= 64:
        return _fail(f"--workers {args.workers}: between 1 and 64")
    overrides = {
        "RECOFFER_HOST": args.host,
        "RECOFFER_PORT": None if args.port is None else str(args.port),
        "RECOFFER_MODEL_DIR": None if args.model_dir is None else str(args.model_dir),
        "RECOFFER_DATABASE_URL": args.database_url,
        "RECOFFER_AUTH_DISABLED": "true" if args.development else None,
    }
    # the workers read the settings from the environment again (several processes)
    os.environ.update({k: v for k, v in overrides.items() if v is not None})

    import uvicorn
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        return _fail(f"bad setting RECOFFER_{where.upper()}: {first.get('msg')}")
    taken = address_problem(settings.host, settings.port)
    if taken:
        return _fail(taken)
    say = sys.stderr.write
    if settings.auth_disabled:
        say("development mode: API keys are NOT checked (RECOFFER_AUTH_DISABLED); loopback only\n")
    where = f"http://{settings.host}:{settings.port}"
    say(f"serving on {where} (docs: {where}/docs, console: {where}/console)\n")
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
