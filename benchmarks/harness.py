"""What the benchmarks and the tests share: the API as a child process, a TCP fault proxy,
fresh databases and seeded session users.

Tests import it as ``benchmarks.harness`` (the repository root is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np

from benchmarks.common import PYTHON, ROOT, WORK

HOST = "127.0.0.1"
FRONTEND_KEY = "bench-frontend-key-0123456789"  # what the benchmarks' servers accept
SERVICE_APP = "service.app:create_app_from_env"
READY_SECONDS = 120.0  # a server not ready by then has failed to start

Backend = Literal["sqlite", "postgresql"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgresql")
POSTGRES_ADMIN_URL = os.environ.get(
    "RECOFFER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --- servers ------------------------------------------------------------------------------


def uvicorn_command(app: str, port: int, *, keep_alive_seconds: int | None = None) -> list[str]:
    """One quiet uvicorn worker (warnings only, no access log) of the factory ``app``."""
    command = [PYTHON, "-m", "uvicorn", app, "--factory", "--host", HOST, "--port", str(port)]
    command.append("--no-access-log")
    if keep_alive_seconds is not None:
        command += ["--timeout-keep-alive", str(keep_alive_seconds)]
    return [*command, "--log-level", "warning"]


def server_command(port: int, *, keep_alive_seconds: int | None = None) -> list[str]:
    """THE command line that starts the service's API on ``HOST:port``.

    The one place that says how the API is started, for every benchmark (settings come from
    the ``RECOFFER_*`` variables of the child's environment).
    """
    return uvicorn_command(SERVICE_APP, port, keep_alive_seconds=keep_alive_seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# straight to the server, whatever http_proxy says
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerNotReady(RuntimeError):
    """The child exited, or did not answer as ready within ``READY_SECONDS``."""


class Server:
    """The API (or another app) as a child process on a loopback port; a context manager.

    Started and waited for in the constructor: ready when ``GET /readyz`` says
    ``{"ready": true}``, or, for an app without it, when ``probe`` answers 200. Its stderr goes
    to ``log`` (by default ``var/bench/server-<port>.log``), whose tail a failed start shows.
    Stopped with SIGTERM, then SIGKILL after ``stop_seconds``.

    ``command`` builds the command line from the port (default: ``server_command``); ``cpus``
    pins the child with ``taskset -c`` (``taskset`` execs it: ``pid`` is the server's own).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        command: Callable[[int], list[str]] = server_command,
        probe: str | None = None,
        cpus: str | None = None,
        log: Path | None = None,
        stop_seconds: float = 30.0,
    ) -> None:
        self.port = free_port() if port is None else port
        self.stop_seconds = stop_seconds
        WORK.mkdir(parents=True, exist_ok=True)
        self.log = log or WORK / f"server-{self.port}.log"
        self._log_file = self.log.open("wb")
        argv = command(self.port)
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=self._log_file,
            )
        except BaseException:
            self._log_file.close()
            raise
        try:
            ready = self._wait_until_ready(probe)
        except BaseException:  # interrupted (Ctrl+C, SIGTERM): no server left behind
            self.stop()
            raise
        if not ready:
            code = self.proc.poll()
            self.stop()
            why = "did not become ready" if code is None else f"exited with {code}"
            raise ServerNotReady(f"{shlex.join(argv)} {why}; see {self.log}:\n{self.log_tail()}")

    def _wait_until_ready(self, probe: str | None) -> bool:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._answers_ready(probe):
                return True
            time.sleep(0.3)
        return False

    def _answers_ready(self, probe: str | None) -> bool:
        try:
            with _LOOPBACK.open(f"{self.url}{probe or '/readyz'}", timeout=2) as r:
                if r.status != 200:
                    return False
                return probe is not None or bool(json.loads(r.read()).get("ready"))
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            # refused while starting, 503 until ready (HTTPError is an OSError), half an answer
            return False

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


# --- a database that goes away ------------------------------------------------------------


class TcpProxy:
    """Forwards a loopback port to ``host:port``; two faults, each undone by its pair.

    ``stop()`` / ``start()``: a stopped server: the listener is closed (connections are
    refused) and every forwarded connection is reset; ``start()`` listens on the same port.
    ``cut()`` / ``restore()``: a broken path: connections are still accepted but dropped at
    once, and every forwarded one is reset.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.listener: socket.socket | None = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.down = False
        self.start()

    def start(self) -> None:
        self.listener = socket.create_server((HOST, self.port))
        self.down = False
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.down:  # cut: accepted, then dropped
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                if self.down:  # stopped while this connection was being set up
                    _close(client)
                    _close(upstream)
                    continue
                self.sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)
                with self.lock:
                    self.sockets.discard(s)

    def cut(self) -> None:
        """Accept and drop new connections, reset the live ones, until ``restore()``."""
        for s in self._drop_live():
            _close(s)

    def restore(self) -> None:
        self.down = False

    def _drop_live(self) -> list[socket.socket]:
        with self.lock:
            self.down = True
            live, self.sockets = list(self.sockets), set()
        return live

    def stop(self) -> None:
        live = self._drop_live()
        if self.listener is not None:
            # close() alone leaves a thread blocked in accept() listening; shutdown wakes it
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        for s in live:
            _close(s)


def _close(s: socket.socket) -> None:
    """Shut down, then close: close() alone leaves the connection open (no FIN sent) while
    another thread is blocked reading from it, and the peer then waits for ever."""
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


# --- fresh databases ----------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(prefix: str, admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A new empty database ``<prefix>_<random>`` next to ``admin_url``'s, dropped on exit.

    Raises what the driver raises when the server cannot be reached (3 s at most).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except BaseException:
        admin.dispose()
        raise
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_postgres(prefix: str) -> Iterator[str | None]:
    """``postgres_database(prefix)``, or None when PostgreSQL is unreachable (that part of a
    benchmark is skipped and said so), unless RECOFFER_REQUIRE_POSTGRES=1 (CI), where a skip
    would hide a fault: then it exits."""
    with contextlib.ExitStack() as stack:
        try:
            url: str | None = stack.enter_context(postgres_database(prefix))
            reason = ""
        except Exception as exc:  # any failure to connect means "not available here"
            url, reason = None, f"PostgreSQL unavailable: {str(exc).splitlines()[0]}"
        if url is None:
            if os.environ.get("RECOFFER_REQUIRE_POSTGRES") == "1":
                raise SystemExit(f"{reason} (and RECOFFER_REQUIRE_POSTGRES=1)")
            print(f"{reason}; skipping", flush=True)
        yield url


@contextlib.contextmanager
def fresh_sqlite(prefix: str) -> Iterator[str]:
    """A new SQLite database in a folder of its own under var/bench, removed afterwards."""
    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=WORK))
    try:
        yield f"sqlite:///{folder / 'recoffer.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(backend: Backend, prefix: str) -> contextlib.AbstractContextManager[str | None]:
    """``fresh_sqlite`` or ``fresh_postgres`` (None when PostgreSQL is unreachable)."""
    return fresh_sqlite(prefix) if backend == "sqlite" else fresh_postgres(prefix)


# --- session users ------------------------------------------------------------------------


def session_users(count: int) -> list[str]:
    """The ids of ``count`` users the model has never seen: ``session-0``, ``session-1``..."""
    return [f"session-{n}" for n in range(count)]


def seed_sessions(
    url: str,
    users: Sequence[str],
    items: Sequence[str],
    *,
    views: int,
    newest_ago: timedelta,
    seed: int,
    distinct_items: bool = False,
) -> int:
    """Store ``views`` views of ``items`` for each of ``users`` (migrating the database first),
    so that the service knows them from their recent events only.

    A user's views are a minute apart, oldest first, the newest ``newest_ago`` before now; the
    items are drawn with ``numpy.random.default_rng(seed)``, all different for one user when
    ``distinct_items``. Returns the number of events stored.
    """
    from service.activity.records import NewEvent
    from service.activity.repository import Repository
    from service.db import make_engine, migrate

    rng = np.random.default_rng(seed)
    newest = datetime.now(UTC) - newest_ago
    batch: list[NewEvent] = []
    for user in users:
        if distinct_items:
            picks = [int(i) for i in rng.choice(len(items), size=views, replace=False)]
        else:
            picks = [int(rng.integers(len(items))) for _ in range(views)]
        batch += [
            NewEvent(
                user_id=user,
                type="view",
                item_id=items[i],
                ts=newest - timedelta(minutes=views - 1 - k),
            )
            for k, i in enumerate(picks)
        ]
    engine = make_engine(url)
    try:
        migrate(engine)
        repository = Repository(engine)
        for first in range(0, len(batch), 1000):
            repository.add_events(batch[first : first + 1000])
    finally:
        engine.dispose()
    return len(batch)


# --- races, shared with the tests ---------------------------------------------------------

T = TypeVar("T")


def all_at_once(n: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``call(0..n-1)`` in n threads released together; results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def processes_at_once(
    script: str, argvs: Sequence[Sequence[str]], *, timeout: float = 120.0
) -> Counter[str]:
    """Run ``python -c script`` once per argument list, all at the same time, from the
    project's root; add up the JSON list of outcomes each prints (each must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [PYTHON, "-c", script, *argv],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
        )
        for argv in argvs
    ]
    outcomes: Counter[str] = Counter()
    for w in workers:
        out, _ = w.communicate(timeout=timeout)
        assert w.returncode == 0, f"a worker exited {w.returncode}"
        outcomes.update(json.loads(out))
    return outcomes


# --- a real browser (the offline-docs and console tests, the console benchmark) ------------

# Debian's chromium as root on a closed network: without the background-networking flags it
# tries Google's hosts at every start (machine notes of the `env` entry)
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_SCHEMES = ("data:", "blob:", "about:")  # no network


def requests_outside(requests: Iterable[Any], base_url: str) -> list[str]:
    """The URLs of Playwright requests that went anywhere but ``base_url`` (a request the
    page's CSP refused never left, and is not counted)."""
    return [
        r.url
        for r in requests
        if not r.url.startswith(f"{base_url}/")
        and not r.url.startswith(LOCAL_SCHEMES)
        and r.failure != "csp"
    ]


# --- bulk-loading the events table -------------------------------------------------------


@contextlib.contextmanager
def events_bulk_load(url: str) -> Iterator[Any]:
    """A migrated database's engine with the events table's indexes dropped, for a benchmark
    to fill with the driver's fastest path (executemany on SQLite, COPY on PostgreSQL); on
    leaving, the indexes are built again (ANALYZE on PostgreSQL) and the engine disposed."""
    from service.db import make_engine, migrate
    from service.tables import events

    engine = make_engine(url, timeout_seconds=600)
    try:
        migrate(engine)
        with engine.begin() as conn:
            for index in events.indexes:
                index.drop(conn)
        yield engine
        with engine.begin() as conn:
            for index in events.indexes:
                index.create(conn)
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


# --- a clock a test moves ------------------------------------------------------------------


class ManualClock:
    """The service's clock (``service.clock.Clock``), moved by the test: nothing sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
