"""Campaign sweeps as background jobs, and the batched write they use, on SQLite and PostgreSQL.

The batched sweep is compared with the per-user rule (``OfferEngine.evaluate`` one user after
the other, as the sweep did before) on the same data; the jobs are driven over HTTP with an
injected clock, two app instances on one database standing for two replicas.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from benchmarks.harness import ManualClock as Clock
from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.app import create_app
from service.db import make_engine, migrate
from service.offers import decisions as decisions_module
from service.offers.campaigns import BUILT_IN, Campaign
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository
from service.offers.repository.jobs import SweepJobRepository
from service.offers.rules import in_holdout
from service.settings import Settings
from service.state import AppState
from service.tables import campaign_budgets, coupons, offer_decisions, sweep_jobs

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MARKETING = "marketing-key-0123456789"
M = {"X-API-Key": MARKETING}
RUN = f"/v1/campaigns/{BUILT_IN}/run"


def hesitating(
    base: Repository, user_id: str, *, views: int = 11, ago: float = 2.0, bought: bool = False
) -> None:
    """A user who signed up ``ago`` hours before NOW and viewed ``views`` products since."""
    start = NOW - timedelta(hours=ago)
    base.upsert_user(user_id, signed_up_at=start)
    events = [
        NewEvent(user_id, "view", start + timedelta(minutes=n + 1), item_id=f"i{n % 7}")
        for n in range(views)
    ]
    if bought:
        events.append(NewEvent(user_id, "purchase", start + timedelta(minutes=1), item_id="i0"))
    base.add_events(events)


def offer_engine(url: str, campaign: Campaign, clock: Callable[[], datetime]) -> OfferEngine:
    engine = make_engine(url, timeout_seconds=30, pool_size=25)
    migrate(engine)
    return OfferEngine(
        {campaign.campaign_id: campaign}, OfferRepository(Repository(engine, clock)), clock
    )


def recorded(offers: OfferEngine, campaign_id: str) -> dict[str, tuple[str, int]]:
    """user -> (decision, coupons) of the campaign as stored."""
    d, c = offer_decisions, coupons
    with offers.repository.engine.connect() as conn:
        rows = conn.execute(
            select(d.c.user_id, d.c.decision, func.count(c.c.code))
            .select_from(d.outerjoin(c, c.c.attribution_id == d.c.attribution_id))
            .where(d.c.campaign_id == campaign_id)
            .group_by(d.c.user_id, d.c.decision)
        ).all()
    return {str(u): (str(k), int(n)) for u, k, n in rows}


def forget_decisions(offers: OfferEngine) -> None:
    with offers.repository.base.writing() as conn:
        for table in (coupons, offer_decisions, campaign_budgets):
            conn.execute(delete(table))


# --- the batched write against the per-user rule ---------------------------------------------


def test_a_batched_sweep_decides_as_one_evaluation_after_the_other(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caps that run out mid-batch and on the next day, the holdout, purchases, too few views:
    the same decision for every user, the same coupons and budget counters, on both days."""
    monkeypatch.setattr(decisions_module, "SWEEP_BATCH", 4)  # caps fall inside and across batches
    clock = Clock(NOW)
    campaign = Campaign(holdout_percent=30, max_per_day=5, max_total=8)
    offers = offer_engine(database_url, campaign, clock)
    try:
        base = offers.repository.base
        users = [f"same-{n:02d}" for n in range(24)]
        for n, user in enumerate(users):
            hesitating(base, user, views=4 if n % 7 == 3 else 12, bought=n % 5 == 1)
        cid = campaign.campaign_id

        def one_after_the_other() -> None:
            for user in sorted(users):
                offers.evaluate(user, cid)

        outcomes: list[tuple[dict[str, tuple[str, int]], dict[str, int]]] = []
        for decide in (one_after_the_other, lambda: offers.sweep(cid)):
            clock.now = NOW
            forget_decisions(offers)
            decide()  # day one: the daily cap runs out
            clock.advance(hours=13)  # the next UTC day, everyone still inside the window
            decide()  # day two: misses retried, until the total cap runs out
            budget = offers.repository.reports.budget_used(cid, clock.now)
            outcomes.append((recorded(offers, cid), budget))
        (per_user, per_user_budget), (batched, batched_budget) = outcomes
        assert batched == per_user
        assert batched_budget == per_user_budget == {"total": 8, "today": 3}
        kinds = Counter(k for k, _ in batched.values())
        assert kinds["issued"] == 8
        assert kinds["budget_exhausted"] > 0
        assert kinds["holdout"] > 0
        assert {n for k, n in batched.values() if k == "issued"} == {1}  # one coupon each
    finally:
        offers.repository.engine.dispose()


def test_sweep_reports_its_progress_after_every_batch(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions_module, "SWEEP_BATCH", 5)
    offers = offer_engine(database_url, Campaign(holdout_percent=0), lambda: NOW)
    try:
        for n in range(12):
            hesitating(offers.repository.base, f"step-{n:02d}", views=12 if n < 9 else 3)
        seen: list[tuple[int, int, dict[str, int]]] = []
        result = offers.sweep(BUILT_IN, lambda done, of, counts: seen.append((done, of, +counts)))
        assert [(done, of) for done, of, _ in seen] == [(0, 12), (5, 12), (10, 12), (12, 12)]
        assert seen[-1][2] == {"issued": 9, "not_eligible": 3} == dict(result.decisions)
    finally:
        offers.repository.engine.dispose()


def test_a_total_cap_holds_when_evaluations_race_a_batched_sweep(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions_module, "SWEEP_BATCH", 7)
    campaign = Campaign(holdout_percent=0, max_total=10)
    offers = offer_engine(database_url, campaign, lambda: NOW)
    try:
        users = [f"race-{n:02d}" for n in range(40)]
        for user in users:
            hesitating(offers.repository.base, user)
        start = threading.Barrier(5)

        def evaluate_some(k: int) -> None:
            start.wait()
            for user in users[k::4]:
                offers.evaluate(user, campaign.campaign_id)

        def sweep() -> None:
            start.wait()
            offers.sweep(campaign.campaign_id)

        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(evaluate_some, k) for k in range(4)]
            futures.append(pool.submit(sweep))
            for future in futures:
                future.result()
        decided = recorded(offers, campaign.campaign_id)
        assert set(decided) == set(users)  # one row each (the unique index)
        assert Counter(k for k, _ in decided.values()) == {"issued": 10, "budget_exhausted": 30}
        assert sum(n for _, n in decided.values()) == 10
        assert offers.repository.reports.budget_used(campaign.campaign_id, NOW)["total"] == 10
    finally:
        offers.repository.engine.dispose()


# --- jobs over HTTP ---------------------------------------------------------------------------


def make_client(tmp_path: Path, database_url: str, clock: Clock, **overrides: Any) -> TestClient:
    settings = Settings(
        model_dir=tmp_path / "models",  # no model: the built-in campaign is store-wide
        database_url=database_url,
        marketing_keys=[MARKETING],
        reload_interval_seconds=0,
        event_poll_seconds=0.05,
        offer_metrics_seconds=0,
        access_log=False,
        **overrides,
    )
    return TestClient(create_app(settings, clock=clock))


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
    return state


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def client(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[TestClient]:
    with make_client(tmp_path, database_url, clock) as c:
        yield c


def gate_sweeps(client: TestClient) -> threading.Event:
    """Hold this app's sweeps before they start (the real sweep runs once the event is set)."""
    offers = state_of(client).offers
    sweep = offers.sweep
    opened = threading.Event()

    def held(campaign_id: str, progress: Any = None) -> Any:
        opened.wait(30)
        return sweep(campaign_id, progress)

    offers.sweep = held  # type: ignore[method-assign]
    return opened


def test_a_run_answers_202_and_its_job_reaches_done_with_the_counts(client: TestClient) -> None:
    base = state_of(client).repository
    treated = [u for u in (f"job-{n}" for n in range(40)) if not in_holdout(BUILT_IN, u, 10)][:6]
    held = [u for u in (f"job-{n}" for n in range(200)) if in_holdout(BUILT_IN, u, 10)][:2]
    for user in treated + held:
        hesitating(base, user)
    hesitating(base, "job-few", views=3)
    hesitating(base, "job-bought", bought=True)
    hesitating(base, "job-old", ago=30)  # outside the window: not a candidate
    r = client.post(RUN, headers=M)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running")
    assert r.headers["location"] == f"/v1/campaigns/{BUILT_IN}/runs/{job['job_id']}"
    assert state_of(client).sweeps.wait(30)
    done = client.get(r.headers["location"], headers=M).json()
    assert done["state"] == "done", done
    assert (done["evaluated"], done["processed"], done["progress"]) == (10, 10, 1.0)
    assert (done["issued"], done["holdout"], done["not_eligible"]) == (6, 2, 2)
    assert (done["eligible"], done["budget_exhausted"], done["already_decided"]) == (8, 0, 0)
    assert done["finished_at"] is not None
    assert done["error"] is None
    listed = client.get(f"/v1/campaigns/{BUILT_IN}/runs", headers=M).json()
    assert [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    stats = client.get(f"/v1/campaigns/{BUILT_IN}/stats", headers=M).json()
    assert stats["coupons"]["issued"] == 6


def test_parallel_runs_on_two_replicas_start_one_sweep(
    tmp_path: Path, database_url: str, clock: Clock
) -> None:
    with (
        make_client(tmp_path, database_url, clock) as a,
        make_client(tmp_path, database_url, clock) as b,
    ):
        hesitating(state_of(a).repository, "parallel-1")
        gates = [gate_sweeps(a), gate_sweeps(b)]
        start = threading.Barrier(8)

        def post(i: int) -> Any:
            start.wait()
            return (a, b)[i % 2].post(RUN, headers=M)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        statuses = Counter(r.status_code for r in answers)
        assert statuses == {202: 1, 409: 7}
        started = next(r.json() for r in answers if r.status_code == 202)
        refused = [r.json() for r in answers if r.status_code == 409]
        assert {r["error"] for r in refused} == {"sweep_running"}
        assert all(started["job_id"] in r["detail"] for r in refused)
        for gate in gates:
            gate.set()
        assert state_of(a).sweeps.wait(30)
        assert state_of(b).sweeps.wait(30)
        # either replica answers for the job, and once it is done the campaign runs again
        for c in (a, b):
            job = c.get(f"/v1/campaigns/{BUILT_IN}/runs/{started['job_id']}", headers=M).json()
            assert (job["state"], job["issued"] + job["holdout"]) == ("done", 1)
        assert b.post(RUN, headers=M).status_code == 202
        assert state_of(b).sweeps.wait(30)


def test_a_job_whose_worker_went_silent_is_failed_and_the_campaign_runs_again(
    client: TestClient, clock: Clock
) -> None:
    jobs = SweepJobRepository(state_of(client).repository)
    dead, _ = jobs.create(BUILT_IN, "gone-host:1", NOW, silent_since=NOW, error="unused")
    assert dead is not None
    jobs.update(dead.job_id, state="running", started_at=NOW, heartbeat_at=NOW)
    path = f"/v1/campaigns/{BUILT_IN}/runs/{dead.job_id}"
    refused = client.post(RUN, headers=M)
    assert refused.status_code == 409
    assert dead.job_id in refused.json()["detail"]
    assert client.get(path, headers=M).json()["state"] == "running"
    clock.advance(seconds=119)
    assert client.get(path, headers=M).json()["state"] == "running"  # within 120 s: alive
    clock.advance(seconds=2)
    seen = client.get(path, headers=M).json()
    assert seen["state"] == "failed"
    assert "no heartbeat since" in seen["error"]
    r = client.post(RUN, headers=M)
    assert r.status_code == 202, r.text
    assert state_of(client).sweeps.wait(30)
    stored = jobs.job(BUILT_IN, dead.job_id)
    assert stored is not None
    assert (stored.state, stored.finished_at) == ("failed", clock.now)  # recorded, not only shown
    assert client.get(r.headers["location"], headers=M).json()["state"] == "done"


def test_a_worker_shutting_down_stops_its_sweep_and_marks_it_failed(
    tmp_path: Path, database_url: str, clock: Clock
) -> None:
    c = make_client(tmp_path, database_url, clock)
    c.__enter__()
    hesitating(state_of(c).repository, "stopped-1")
    gate = gate_sweeps(c)
    job_id = c.post(RUN, headers=M).json()["job_id"]
    sweeps = state_of(c).sweeps
    closing = threading.Thread(target=c.__exit__, args=(None, None, None))
    closing.start()
    assert sweeps._stopping.wait(30)  # the lifespan asked the sweeps to stop
    gate.set()
    closing.join(60)
    assert not closing.is_alive()
    with make_client(tmp_path, database_url, clock) as again:
        job = again.get(f"/v1/campaigns/{BUILT_IN}/runs/{job_id}", headers=M).json()
        assert job["state"] == "failed"
        assert job["error"].startswith("stopped: the worker shut down")
        assert again.post(RUN, headers=M).status_code == 202  # nothing blocks the next run
        assert state_of(again).sweeps.wait(30)


def test_unknown_jobs_and_campaigns_answer_404(client: TestClient) -> None:
    r = client.get(f"/v1/campaigns/{BUILT_IN}/runs/0123456789abcdef0123456789abcdef", headers=M)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_sweep_job")
    assert client.get(f"/v1/campaigns/{BUILT_IN}/runs/not-a-job", headers=M).status_code == 404
    r = client.get("/v1/campaigns/nope/runs/0123", headers=M)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_campaign")
    assert client.post("/v1/campaigns/nope/run", headers=M).status_code == 404
    r = client.get(f"/v1/campaigns/{BUILT_IN}/runs/{'x' * 65}", headers=M)
    assert r.status_code == 422
    assert client.get(f"/v1/campaigns/{BUILT_IN}/runs?limit=0", headers=M).status_code == 422


def test_another_campaigns_job_is_not_found_under_this_one(
    tmp_path: Path, database_url: str, clock: Clock
) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text("[campaigns.second]\n")
    with make_client(tmp_path, database_url, clock, campaigns_file=path) as c:
        r = c.post("/v1/campaigns/second/run", headers=M)
        assert r.status_code == 202
        assert state_of(c).sweeps.wait(30)
        job_id = r.json()["job_id"]
        assert c.get(f"/v1/campaigns/second/runs/{job_id}", headers=M).status_code == 200
        assert c.get(f"/v1/campaigns/{BUILT_IN}/runs/{job_id}", headers=M).status_code == 404


def test_an_inactive_campaign_is_not_swept(tmp_path: Path, database_url: str, clock: Clock) -> None:
    path = tmp_path / "campaigns.toml"
    path.write_text(f"[campaigns.{BUILT_IN}]\nenabled = false\n")
    with make_client(tmp_path, database_url, clock, campaigns_file=path) as c:
        r = c.post(RUN, headers=M)
        assert (r.status_code, r.json()["error"]) == (409, "offer_refused")
        assert "not active" in r.json()["detail"]
        with state_of(c).repository.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sweep_jobs)).scalar_one() == 0


def test_a_batched_sweep_restricts_coupons_to_the_products_viewed_most(database_url: str) -> None:
    offers = offer_engine(
        database_url, Campaign(holdout_percent=0, restrict_to_top_items=2), lambda: NOW
    )
    try:
        base = offers.repository.base
        start = NOW - timedelta(hours=2)
        for n, user in enumerate(("top-a", "top-b", "top-c")):
            base.upsert_user(user, signed_up_at=start)
            # product p{n} viewed 6 times, q{n} 4 times, the rest once each
            items = [f"p{n}"] * 6 + [f"q{n}"] * 4 + [f"r{n}{k}" for k in range(3)]
            base.add_events(
                [
                    NewEvent(user, "view", start + timedelta(minutes=k + 1), item_id=item)
                    for k, item in enumerate(items)
                ]
            )
        assert offers.sweep(BUILT_IN).decisions == {"issued": 3}
        with offers.repository.engine.connect() as conn:
            rows = conn.execute(select(coupons.c.user_id, coupons.c.item_ids)).all()
        assert {str(u): i for u, i in rows} == {
            "top-a": ["p0", "q0"],
            "top-b": ["p1", "q1"],
            "top-c": ["p2", "q2"],
        }
    finally:
        offers.repository.engine.dispose()
