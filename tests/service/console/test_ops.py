"""Ops' pages of the console: model versions and runs (the API's figures), rollback through a
confirmation, health, and sign-in throttling."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifact import RUNS, ModelStore
from service.console.status import safe_url
from service.tables import sweep_jobs
from training.data.formats import Purchases
from training.models import ModelParams
from training.pipeline import TrainConfig, run

from .pages import KEYS, console_settings, hidden, sign_in

FAST = ModelParams(factors=8, iterations=5, threads=1)
ADMIN = {"X-API-Key": KEYS["admin"]}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tiny_purchases: Purchases) -> Path:
    """A model root with two promoted versions (the second current) and their two runs."""
    root = tmp_path_factory.mktemp("ops-models")
    for _ in range(2):
        run(TrainConfig(model_dir=root, params=FAST, force=True), purchases=tiny_purchases)
    return root


@pytest.fixture
def ops(tmp_path: Path, two_versions: Path) -> Iterator[TestClient]:
    """The console on a copy of the two-version root (a test may roll it back)."""
    shutil.copytree(two_versions, tmp_path / "models")
    with TestClient(create_app(console_settings(tmp_path))) as client:
        yield client


def _text(html: str) -> str:
    """The page's words, without tags: what a reader sees."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_models_page_shows_the_figures_the_api_gives(ops: TestClient) -> None:
    api = ops.get("/v1/model/versions", headers=ADMIN).json()
    assert len(api["versions"]) == 2
    assert api["current"] == api["serving"] == api["versions"][0]["version"]
    assert api["previous"] == api["versions"][1]["version"]
    sign_in(ops, "admin")
    page = ops.get("/console/models")
    assert page.status_code == 200
    html = page.text
    assert f'id="current">{api["current"]}<' in html
    assert f'id="serving">{api["serving"]}<' in html
    assert f'id="previous">{api["previous"]}<' in html
    for version in api["versions"]:
        row = html.split(f'id="v-{version["version"]}"', 1)[1].split("</tr>", 1)[0]
        for figures in version["figures"]:
            cell = row.split(f'data-protocol="{figures["protocol"]}"', 1)[1].split("</td>", 1)[0]
            assert f"{figures['test']['ndcg@10']:.4f}" in cell
            assert f"{figures['validation']['ndcg@10']:.4f}" in cell
            assert figures["served"] in cell
        gate = version["gate"]
        assert gate is not None
        words = "forced past a refusal" if gate["forced"] else "passed" if gate["passed"] else ""
        assert words
        assert words in _text(row)


def test_the_runs_are_listed_as_the_api_gives_them(ops: TestClient) -> None:
    runs = ops.get("/v1/model/runs", headers=ADMIN).json()
    assert [r["outcome"] for r in runs["runs"]] == ["promoted", "promoted"]
    assert runs["unreadable_lines"] == 0
    sign_in(ops, "admin")
    table = ops.get("/console/models").text.split('id="runs"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tbody>", 1)[1].split("</tr>")[:-1]
    assert len(rows) == 2
    for row, recorded in zip(rows, runs["runs"], strict=True):
        assert recorded["version"] in row
        assert f"{recorded['seconds']:.1f} s" in row
        assert "promoted" in _text(row)


def test_a_torn_last_line_of_the_runs_is_skipped(ops: TestClient, tmp_path: Path) -> None:
    with open(tmp_path / "models" / RUNS, "ab") as fh:
        fh.write(b'{"started_at": "2026-12-01T10:00:00Z", "outc')  # a writer killed mid-line
    runs = ops.get("/v1/model/runs", headers=ADMIN).json()
    assert len(runs["runs"]) == 2
    assert runs["unreadable_lines"] == 1
    sign_in(ops, "admin")
    page = ops.get("/console/models")
    assert page.status_code == 200
    assert "1 line(s) of runs.jsonl are not whole records" in page.text


def test_rolling_back_through_the_confirm_page_changes_what_is_served(
    ops: TestClient, tmp_path: Path
) -> None:
    before = ops.get("/v1/model/versions", headers=ADMIN).json()
    current, previous = before["current"], before["previous"]
    csrf = sign_in(ops, "admin")
    confirm = ops.get("/console/models/rollback")
    assert confirm.status_code == 200
    assert f'id="target">{previous}<' in confirm.text
    assert "What changes" in confirm.text
    assert hidden(confirm.text, "expected_current") == current
    done = ops.post("/console/models/rollback", data={"csrf": csrf, "expected_current": current})
    assert done.status_code == 200, done.text
    assert f"rolled back from {current} to {previous}" in done.text
    assert ModelStore(tmp_path / "models").current() == previous
    assert ops.get("/v1/model", headers=ADMIN).json()["version"] == previous  # at once
    after = ops.get("/v1/model/versions", headers=ADMIN).json()
    assert after["current"] == after["serving"] == previous


def test_a_rollback_form_without_the_csrf_token_changes_nothing(
    ops: TestClient, tmp_path: Path
) -> None:
    sign_in(ops, "admin")
    current = ModelStore(tmp_path / "models").current()
    refused = ops.post("/console/models/rollback", data={"csrf": "forged"})
    assert refused.status_code == 403
    assert "expired" in refused.text
    assert ModelStore(tmp_path / "models").current() == current


def test_a_confirmation_made_stale_by_a_new_promotion_is_refused(
    ops: TestClient, tmp_path: Path
) -> None:
    csrf = sign_in(ops, "admin")
    store = ModelStore(tmp_path / "models")
    current = store.current()
    answer = ops.post(
        "/console/models/rollback", data={"csrf": csrf, "expected_current": "20200101T000000"}
    )
    assert answer.status_code == 409
    assert "nothing was changed" in answer.text
    assert store.current() == current


@pytest.mark.parametrize("path", ["/console/models", "/console/models/rollback", "/console/health"])
def test_a_marketing_key_cannot_open_the_ops_pages(ops: TestClient, path: str) -> None:
    sign_in(ops, "marketing")
    answer = ops.get(path)
    assert answer.status_code == 403
    assert "needs role admin" in answer.text


def test_a_marketing_session_cannot_roll_back(ops: TestClient, tmp_path: Path) -> None:
    csrf = sign_in(ops, "marketing")
    current = ModelStore(tmp_path / "models").current()
    assert ops.post("/console/models/rollback", data={"csrf": csrf}).status_code == 403
    marketing = {"X-API-Key": KEYS["marketing"]}
    assert ops.post("/v1/model/rollback", headers=marketing).status_code == 403
    assert ops.get("/v1/model/versions", headers=marketing).status_code == 403
    assert ops.get("/v1/model/runs", headers=marketing).status_code == 403
    assert ModelStore(tmp_path / "models").current() == current


def test_without_an_earlier_version_rollback_says_so(ops: TestClient, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    previous = store.previous()
    assert previous is not None
    shutil.rmtree(store.version_path(previous))
    csrf = sign_in(ops, "admin")
    assert "nothing to roll back to" in ops.get("/console/models").text
    confirm = ops.get("/console/models/rollback")
    assert confirm.status_code == 200  # a normal state of a young shop, not an error
    assert "nothing to roll back to: no earlier promoted version" in confirm.text
    assert 'class="problem"' not in confirm.text
    assert 'name="csrf"' not in confirm.text.split("</header>", 1)[1]  # no form to confirm
    posted = ops.post("/console/models/rollback", data={"csrf": csrf})
    assert posted.status_code == 409
    assert "nothing to roll back to" in posted.text
    api = ops.post("/v1/model/rollback", headers=ADMIN)
    assert api.status_code == 409
    assert api.json()["error"] == "registry_error"


def test_the_api_rolls_back_and_this_worker_serves_it_at_once(
    ops: TestClient, tmp_path: Path
) -> None:
    listing = ops.get("/v1/model/versions", headers=ADMIN).json()
    stale = ops.post(
        "/v1/model/rollback", headers=ADMIN, params={"expected_current": listing["previous"]}
    )
    assert stale.status_code == 409
    answer = ops.post(
        "/v1/model/rollback", headers=ADMIN, params={"expected_current": listing["current"]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "before": listing["current"],
        "current": listing["previous"],
        "serving": listing["previous"],
        "reloaded": True,
        "error": None,
    }
    assert ops.get("/v1/model", headers=ADMIN).json()["version"] == listing["previous"]


def test_a_rollback_while_a_trainer_runs_is_refused_without_naming_paths(
    ops: TestClient, tmp_path: Path
) -> None:
    from service.artifact.lock import trainer_lock

    before = ops.get("/v1/model/versions", headers=ADMIN).json()["current"]
    with trainer_lock(tmp_path / "models"):
        answer = ops.post("/v1/model/rollback", headers=ADMIN)
    assert answer.status_code == 409
    assert answer.json()["error"] == "trainer_busy"
    assert str(tmp_path) not in answer.text
    assert ops.get("/v1/model/versions", headers=ADMIN).json()["current"] == before


def test_the_health_page_says_ok_or_why_in_words(ops: TestClient) -> None:
    sign_in(ops, "admin")
    page = ops.get("/console/health")
    assert page.status_code == 200
    words = _text(page.text)
    assert "Nothing failing" in words
    assert "Database: OK" in words
    assert "reachable and migrated" in words
    version = ops.get("/v1/model", headers=ADMIN).json()["version"]
    assert f"Model: OK serving {version}" in words
    assert "Event tail OK running" in words
    # the test settings turn the model poll off: said so, not shown as a failure
    assert "Model reload poll off turned off by its setting" in words
    assert "Webhook outbox off" in words
    assert "Segment runs not yet never run" in words
    assert "admin-key" not in page.text


def test_the_health_page_names_a_model_that_failed_to_load(ops: TestClient, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    previous = store.previous()
    assert previous is not None
    broken = store.version_path(previous) / "popularity.npy"
    broken.chmod(0o644)
    broken.write_bytes(b"not an array")
    store.promote(previous)
    assert ops.post("/v1/model/reload", headers=ADMIN).status_code == 409
    sign_in(ops, "admin")
    words = _text(ops.get("/console/health").text)
    assert "1 failing: Model." in words
    assert "Model: failing" in words
    assert f"cannot load model {previous}" in words
    assert str(tmp_path) not in words  # no path of this machine


def test_the_database_url_is_shown_without_its_password() -> None:
    url = "postgresql+psycopg://shop:s3cret-pw@db.internal:5432/recoffer"
    assert "s3cret" not in safe_url(url)
    assert safe_url(url) == "postgresql+psycopg://shop@db.internal:5432/recoffer"
    assert safe_url("sqlite:////srv/data/recoffer.db") == "sqlite:///…/recoffer.db"


def _attempt(client: TestClient, key: str) -> tuple[int, str, str | None]:
    form = client.get("/console/sign-in")
    answer = client.post(
        "/console/sign-in",
        data={"key": key, "csrf": hidden(form.text, "csrf")},
        follow_redirects=False,
    )
    return answer.status_code, answer.text, answer.headers.get("retry-after")


def test_too_many_wrong_keys_from_one_address_are_refused_with_429(tmp_path: Path) -> None:
    app = create_app(console_settings(tmp_path, console_sign_in_failures=3))
    with TestClient(app, client=("203.0.113.7", 5000)) as client:
        for _ in range(3):
            assert _attempt(client, "wrong-key-0123456789")[0] == 401
        status, text, retry = _attempt(client, "wrong-key-0123456789")
        assert status == 429
        assert "Too many failed sign-ins from this address" in text
        assert retry is not None
        assert int(retry) > 0
        # the right key is refused too while the window lasts: a guess cannot be told apart
        status, text, _ = _attempt(client, KEYS["admin"])
        assert status == 429
        assert "recoffer_console=" not in text
        other = TestClient(app, client=("203.0.113.8", 5000))  # the same app and limiter
        assert _attempt(other, KEYS["admin"])[0] == 303  # another address is not affected


def test_the_ops_endpoints_document_the_errors_they_answer(ops: TestClient) -> None:
    spec = ops.get("/openapi.json").json()
    paths = spec["paths"]

    def errors(path: str, method: str) -> set[int]:
        return {int(c) for c in paths[path][method]["responses"] if c[0] in "45"}

    assert errors("/v1/model/versions", "get") == {401, 403}
    assert errors("/v1/model/runs", "get") == {401, 403, 422}
    assert errors("/v1/model/rollback", "post") == {401, 403, 409, 422}


def test_the_health_page_lists_sweeps_and_fails_a_silent_one(tmp_path: Path) -> None:
    settings = console_settings(
        tmp_path,
        webhook_url="http://127.0.0.1:9/hooks",
        webhook_secret="a-webhook-secret-0123456789",
        sweep_stale_seconds=60,
    )
    with TestClient(create_app(settings)) as client:
        state = client.app.state.recoffer  # type: ignore[attr-defined]
        now = state.clock()
        row = {
            "worker": "w1",
            "processed": 40,
            "counts": {},
            "requested_at": now - timedelta(minutes=30),
            "heartbeat_at": now - timedelta(minutes=29),
            "finished_at": None,
        }
        with state.repository.engine.begin() as conn:
            conn.execute(
                sweep_jobs.insert(),
                [
                    {
                        **row,
                        "job_id": "a" * 32,
                        "campaign_id": "win_back",
                        "state": "done",
                        "finished_at": now - timedelta(minutes=29),
                    },
                    {
                        **row,
                        "job_id": "b" * 32,
                        "campaign_id": "birthday",
                        "state": "running",
                        "requested_at": now - timedelta(minutes=10),
                        "heartbeat_at": now - timedelta(minutes=9),
                    },
                ],
            )
        sign_in(client, "admin")
        html = client.get("/console/health").text
        words = _text(html)
        assert "Campaign sweeps failing last sweep failed: birthday" in words
        sweeps = html.split('id="sweeps"', 1)[1].split("</table>", 1)[0]
        assert "its worker stopped (no heartbeat)" in sweeps
        assert _text(sweeps).count("done") == 1
        assert "Webhook outbox OK 0 pending" in words
        assert "Last delivery none yet" in words


def test_with_redis_every_worker_counts_the_same_failed_sign_ins(
    tmp_path: Path, redis_server: str
) -> None:
    settings = console_settings(
        tmp_path,
        console_sign_in_failures=2,
        redis_url=redis_server,
        redis_prefix=f"recoffer-test-{uuid.uuid4().hex}",  # a count of this test's own
    )
    address = ("198.51.100.4", 5000)
    with (
        TestClient(create_app(settings), client=address) as one,
        TestClient(create_app(settings), client=address) as two,  # another worker
    ):
        assert _attempt(one, "wrong-key-0123456789")[0] == 401
        assert _attempt(two, "wrong-key-0123456789")[0] == 401
        assert _attempt(one, KEYS["admin"])[0] == 429  # two failures, one on each worker


def test_a_version_that_does_not_load_is_shown_and_never_rolled_back_to(
    ops: TestClient, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    current, previous = store.current(), store.previous()
    assert previous is not None
    manifest = store.version_path(previous) / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("{ not json")
    csrf = sign_in(ops, "admin")
    page = ops.get("/console/models")
    assert page.status_code == 200
    assert "unreadable manifest" in page.text
    assert ops.get("/console/models/rollback").status_code == 200
    refused = ops.post("/console/models/rollback", data={"csrf": csrf, "expected_current": current})
    assert refused.status_code == 409
    assert f"version {previous} does not load" in refused.text
    assert f"{current} stays current" in refused.text
    assert str(tmp_path) not in refused.text
    assert store.current() == current
    api = ops.get("/v1/model/versions", headers=ADMIN).json()
    assert api["versions"][1]["error"] == "unreadable manifest"
