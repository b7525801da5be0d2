"""One set of metrics for a server of several workers (``python -m service --workers N``).

The server is started as the image starts it; its metric files go to a fresh directory under
the ``TMPDIR`` the test gives it, so the test can also read each worker's own counts there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import Server
from service.artifact import ModelStore, load_artifact

ROOT = Path(__file__).resolve().parents[2]
KEY = "frontend-key-0123456789"
ROUTE = "/v1/users/{user_id}/recommendations"
ROUND = 12  # requests sent at once, each on its own connection


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str
) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with httpx.Client() as fresh:  # a new connection: any worker may answer
        response = fresh.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return _families(response.text)


def _answering_pid(samples: dict[str, list[tuple[dict[str, str], float]]]) -> str:
    pids = {labels["pid"] for labels, _ in samples["python_gc_collections_total"]}
    assert len(pids) == 1, pids  # the interpreter figures are the answering worker's own
    return pids.pop()


def _requests_per_worker(shared: Path) -> dict[int, float]:
    """Recommendations counted in each worker's own file (``counter_<pid>.db``)."""
    counts = {}
    for file in shared.glob("counter_*.db"):
        pid = int(file.stem.split("_")[-1])
        merged = MultiProcessCollector.merge([str(file)])  # type: ignore[no-untyped-call]
        counts[pid] = sum(
            s.value for m in merged for s in m.samples if s.name == "recoffer_recommendations_total"
        )
    return counts


@pytest.fixture
def user(small_model_root: Path) -> str:
    return str(load_artifact(ModelStore(small_model_root).current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]


@pytest.fixture
def tmpdir_of_server(tmp_path: Path) -> Path:
    where = tmp_path / "tmp"
    where.mkdir()
    return where


def _server(workers: int, small_model_root: Path, tmp_path: Path, tmpdir: Path) -> Server:
    env = {
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmpdir),
        "RECOFFER_MODEL_DIR": str(small_model_root),
        "RECOFFER_DATABASE_URL": f"sqlite:///{tmp_path / 'recoffer.db'}",
        "RECOFFER_FRONTEND_KEYS": KEY,
        "RECOFFER_HOST": "127.0.0.1",
        "RECOFFER_ACCESS_LOG": "false",
    }
    command = [sys.executable, "-m", "service", "--workers", str(workers)]
    return Server(env, command=lambda port: [*command, "--port", str(port)])


def _recommend(url: str, user: str, times: int) -> None:
    def one(_: int) -> int:
        with httpx.Client() as fresh:
            r = fresh.get(f"{url}/v1/users/{user}/recommendations", headers={"X-API-Key": KEY})
        return r.status_code

    with ThreadPoolExecutor(ROUND) as pool:
        assert set(pool.map(one, range(times))) == {200}


def _shared_dir(tmpdir: Path) -> Path:
    (shared,) = tmpdir.glob("recoffer-metrics-*")
    return shared


def _spread_over(workers: int, url: str, user: str, shared: Path) -> int:
    """Send rounds of requests until every worker has served some; how many were sent."""
    sent = 0
    for _ in range(30):
        _recommend(url, user, ROUND)
        sent += ROUND
        counts = _requests_per_worker(shared)
        if len([c for c in counts.values() if c > 0]) >= workers:
            assert sum(counts.values()) == sent
            return sent
    pytest.fail(f"{sent} requests did not reach all {workers} workers: {counts}")


def _every_scrape_counts(url: str, sent: int, workers: int) -> set[str]:
    """Scrape until each worker has answered at least once; every scrape must count ``sent``."""
    answered: set[str] = set()
    for _ in range(40):
        samples = _scrape(url)
        assert _total(samples, "recoffer_recommendations_total") == sent
        count = _total(samples, "recoffer_http_request_duration_seconds_count", route=ROUTE)
        assert count == sent
        answered.add(_answering_pid(samples))
        if len(answered) == workers:
            return answered
    pytest.fail(f"only workers {answered} answered 40 scrapes")


@pytest.mark.parametrize("workers", [1, 2])
def test_every_scrape_counts_every_request_of_every_worker(
    workers: int, small_model_root: Path, tmp_path: Path, tmpdir_of_server: Path, user: str
) -> None:
    with _server(workers, small_model_root, tmp_path, tmpdir_of_server) as server:
        shared = _shared_dir(tmpdir_of_server)
        sent = _spread_over(workers, server.url, user, shared)
        answered = _every_scrape_counts(server.url, sent, workers)
        samples = _scrape(server.url)
        # process figures of each live worker, labelled by its pid
        pids = {labels["pid"] for labels, _ in samples["process_resident_memory_bytes"]}
        assert pids == answered
        assert all(v > 0 for _, v in samples["process_cpu_seconds_total"])
        assert samples["python_info"]
        (served,) = [labels["version"] for labels, v in samples["recoffer_model_info"] if v == 1]
        assert served == ModelStore(small_model_root).current()
    assert not shared.exists()  # a fresh directory per start, gone when the server stops


def test_a_worker_that_died_keeps_its_counts_and_leaves_the_live_figures(
    small_model_root: Path, tmp_path: Path, tmpdir_of_server: Path, user: str
) -> None:
    with _server(2, small_model_root, tmp_path, tmpdir_of_server) as server:
        shared = _shared_dir(tmpdir_of_server)
        sent = _spread_over(2, server.url, user, shared)
        first = _every_scrape_counts(server.url, sent, 2)
        victim = int(sorted(first)[0])
        os.kill(victim, signal.SIGKILL)  # uvicorn starts a new worker in its place
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):  # the new worker starting
                samples = _scrape(server.url)
                pids = {labels["pid"] for labels, _ in samples["process_resident_memory_bytes"]}
                if len(pids) == 2 and str(victim) not in pids:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("no new worker replaced the killed one")
        for _ in range(10):  # whichever worker answers, the dead one's requests still count
            samples = _scrape(server.url)
            assert _total(samples, "recoffer_recommendations_total") == sent
            assert str(victim) not in {labels["pid"] for labels, _ in samples["process_open_fds"]}
        assert list(shared.glob(f"counter_{victim}.db"))  # its counts stay
        assert not list(shared.glob(f"gauge_live*_{victim}.db"))  # its live gauges went


def test_a_start_that_fails_leaves_no_metrics_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.__main__ import main

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = dict(os.environ)
    try:
        assert main(["--workers", "0"]) == 2
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = str(taken.getsockname()[1])
            assert main(["--port", port, "--host", "127.0.0.1", "--development"]) == 2
        assert list(tmp_path.iterdir()) == []
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    finally:  # main() hands its options to the workers as RECOFFER_* variables of this process
        os.environ.clear()
        os.environ.update(before)
