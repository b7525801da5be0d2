"""Erasure and export (GDPR): DELETE /v1/users/{id}, the tombstones, GET .../export.

A real model of the small shop (tests/conftest.py), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hmac
import shutil
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.offers.campaigns import BUILT_IN, Campaign
from service.offers.rules import in_holdout, normalise_code
from service.privacy import POLICIES, user_columns
from service.settings import Settings
from service.tables import erased_users, erasure_keys, metadata
from training.data.formats import purchases_from_frame
from training.synthetic.shop import SyntheticShop

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": FRONTEND}
A = {"X-API-Key": ADMIN}
Seeded = dict[str, Any]


def make_client(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0,  # versions change when a test says so (reload)
        "event_poll_seconds": 0.05,
        "access_log": False,
    }
    return TestClient(create_app(Settings(**{**options, **overrides})))


@pytest.fixture
def model_root(small_model_root: Path, tmp_path: Path) -> Path:
    """A copy of the two-version model root: these tests retrain and roll back."""
    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    return root


def _user_ids(root: Path, version: str | None = None) -> set[str]:
    store = ModelStore(root)
    path = store.version_path(version) if version else store.current_path()
    assert path is not None
    return {str(u) for u in load_artifact(path).arrays["user_ids"]}


def _model_user(root: Path) -> str:
    """A user with a purchase history in both versions, outside the built-in holdout."""
    holdout = Campaign().holdout_percent
    store = ModelStore(root)
    artifact = load_artifact(store.current_path())  # type: ignore[arg-type]
    indptr = artifact.arrays["history_indptr"]
    order = (indptr[1:] - indptr[:-1]).argsort()[::-1]
    in_both = _user_ids(root, store.versions()[0])
    for row in order:
        user = str(artifact.arrays["user_ids"][int(row)])
        if user in in_both and not in_holdout(BUILT_IN, user, holdout):
            return user
    raise AssertionError("no user outside the holdout")


def _engine(client: TestClient) -> Engine:
    engine: Engine = client.app.state.recoffer.repository.engine  # type: ignore[attr-defined]
    return engine


def _items(client: TestClient, root: Path, n: int) -> list[str]:
    artifact = load_artifact(ModelStore(root).current_path())  # type: ignore[arg-type]
    return [str(i) for i in artifact.arrays["item_ids"][:n]]


def _seed(client: TestClient, root: Path, user: str) -> dict[str, Any]:
    """Sign-up, twelve views, an issued coupon redeemed for an order, and a later view."""
    r = client.put(
        f"/v1/users/{user}", json={"attributes": {"email": f"{user}@example.org"}}, headers=F
    )
    assert r.status_code == 200, r.text
    items = _items(client, root, 12)
    views = [{"user_id": user, "type": "view", "item_id": i} for i in items]
    assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
    r = client.post("/v1/offers/evaluate", json={"user_id": user}, headers=F)
    assert r.status_code == 200, r.text
    decision = r.json()
    assert decision["decision"] == "issued", decision
    code = decision["coupon"]["code"]
    r = client.post(
        f"/v1/coupons/{code}/redeem",
        json={"user_id": user, "order_id": "order-1", "order_amount": "80.00", "currency": "EUR"},
        headers=F,
    )
    assert r.status_code == 200, r.text
    one = {"user_id": user, "type": "purchase", "item_id": items[0], "order_id": "order-1"}
    assert client.post("/v1/events", json=one, headers=F).status_code == 200
    return {"code": code, "events": len(views) + 1, "items": items}


def _holding(engine: Engine, user_id: str) -> list[str]:
    """Every (table.column) of the metadata holding ``user_id`` in any string or JSON value."""
    found: list[str] = []

    def names(value: Any) -> bool:
        if isinstance(value, str):
            return user_id in value
        if isinstance(value, dict):
            return any(names(k) or names(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return any(names(v) for v in value)
        return False

    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if names(value):
                        found.append(f"{table.name}.{column}")
    return found


def _source(client: TestClient, user: str) -> str:
    r = client.get(f"/v1/users/{user}/recommendations", headers=F)
    assert r.status_code == 200, r.text
    body = r.json()
    if body["source"] == "popular":
        assert {i["source"] for i in body["items"]} == {"popular"}
    return str(body["source"])


@pytest.fixture
def erased_setup(model_root: Path, database_url: str) -> Iterator[tuple[TestClient, str, Seeded]]:
    with make_client(model_root, database_url) as client:
        user = _model_user(model_root)
        seeded = _seed(client, model_root, user)
        yield client, user, seeded


# --- the policy declaration ------------------------------------------------------------


def test_every_table_with_a_user_id_column_declares_its_erasure_policy() -> None:
    keyed = user_columns(metadata)
    assert {"users", "events", "offer_decisions", "coupons"} <= set(keyed)
    missing = sorted(set(keyed) - set(POLICIES))
    assert not missing, f"tables holding user ids without an erasure policy: {missing}"
    for name, policy in POLICIES.items():
        assert name in metadata.tables, name
        assert policy.column in metadata.tables[name].c, (name, policy.column)
    # an unlinked column must be nullable, or the erasure could not run
    for name, policy in POLICIES.items():
        if policy.action == "unlink":
            assert metadata.tables[name].c[policy.column].nullable, name


# --- the erasure -----------------------------------------------------------------------


def test_delete_removes_the_user_from_every_table_and_serves_popular(
    erased_setup: tuple[TestClient, str, Seeded],
) -> None:
    client, user, seeded = erased_setup
    engine = _engine(client)
    assert _source(client, user) == "model"
    assert _holding(engine, user)  # the scan sees the seeded rows

    r = client.delete(f"/v1/users/{user}", headers=A)
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["removed"] == {
        "users": 1,
        "events": seeded["events"],
        "offer_decisions": 1,
        "coupons": 1,
        "coupon_ledger": 1,  # the redemption stays in the trail, without the user
        "user_segments": 0,  # no segment computed yet in this seeding
        "customer_value": 0,  # no `recoffer clv --write` in this seeding
        "webhook_events": 0,  # webhooks off here (no URL): nothing was written
        "rec_impressions": 0,  # no list shown in this seeding (tests/service/feedback)
        "rec_clicks": 0,
        "rec_attributions": 0,
    }
    assert _holding(engine, user) == []
    with engine.connect() as conn:
        key = bytes.fromhex(conn.execute(select(erasure_keys.c.secret)).scalar_one())
        stones = list(conn.execute(select(erased_users.c.user_hash)).scalars())
        coupon = conn.execute(
            select(metadata.tables["coupons"]).where(
                metadata.tables["coupons"].c.code == normalise_code(seeded["code"])
            )
        ).one()
    assert stones == [hmac.new(key, user.encode(), sha256).hexdigest()]
    # accounting keeps the coupon: code, campaign, discount, dates, order, without the person
    assert coupon.user_id is None
    assert coupon.campaign_id == BUILT_IN
    assert coupon.order_id == "order-1"
    assert coupon.redeemed_at is not None
    assert coupon.issued_at is not None
    assert coupon.discount_percent > 0
    # its code still looks up (no 500 for the missing owner), naming nobody; and nobody's it is
    r = client.get(f"/v1/coupons/{seeded['code']}", headers=F)
    assert (r.status_code, r.json()["user_id"]) == (200, None), r.text
    r = client.get(f"/v1/coupons/{seeded['code']}", params={"user_id": user}, headers=F)
    assert r.status_code == 404

    # this worker at once: no precomputed candidates, no history, no recent events
    assert _source(client, user) == "popular"
    r = client.get(
        f"/v1/users/{user}/recommendations", params={"exclude_purchased": "true"}, headers=F
    )
    assert r.json()["source"] == "popular"

    # nothing new is stored under the id: its events are dropped, its user row refused
    view = {"user_id": user, "type": "view", "item_id": seeded["items"][0]}
    r = client.post("/v1/events", json=view, headers=F)
    assert r.status_code == 200
    assert r.json()["accepted"] == 0
    r = client.put(f"/v1/users/{user}", json={"attributes": {}}, headers=F)
    assert r.status_code == 410
    assert r.json()["error"] == "user_erased"
    r = client.post("/v1/offers/evaluate", json={"user_id": user}, headers=F)
    assert r.json()["decision"] == "not_eligible"
    assert _holding(engine, user) == []
    assert _source(client, user) == "popular"

    # a repeat: same status, same erasure time, nothing more to remove
    again = client.delete(f"/v1/users/{user}", headers=A)
    assert again.status_code == 200
    assert again.json()["erased_at"] == receipt["erased_at"]
    assert set(again.json()["removed"].values()) == {0}


def test_an_id_never_stored_is_tombstoned_too(model_root: Path, database_url: str) -> None:
    # known to the model only (trained from files): erasing it still stops personal answers
    with make_client(model_root, database_url) as client:
        user = _model_user(model_root)
        assert _source(client, user) == "model"
        r = client.delete(f"/v1/users/{user}", headers=A)
        assert r.status_code == 200
        assert set(r.json()["removed"].values()) == {0}
        assert _source(client, user) == "popular"


def test_the_erased_user_stays_unserved_after_a_retrain_and_a_rollback(
    erased_setup: tuple[TestClient, str, Seeded],
    model_root: Path,
    database_url: str,
    small_shop: SyntheticShop,
) -> None:
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    client, user, _ = erased_setup
    before = ModelStore(model_root).current()
    assert client.delete(f"/v1/users/{user}", headers=A).status_code == 200

    meta = small_shop.items[["item_id", "category", "name"]]
    frame = small_shop.purchases.merge(meta, on="item_id", how="left")
    purchases = purchases_from_frame(frame, source="small-shop")
    assert user in set(purchases.frame["user_id"])
    params = ModelParams(factors=16, iterations=10, regularization=0.1, threads=2)
    result = run(
        TrainConfig(model_dir=model_root, database_url=database_url, params=params, force=True),
        purchases=purchases,
    )
    assert result.report.dropped["erased_users"] == int((purchases.frame["user_id"] == user).sum())
    assert user not in _user_ids(model_root)  # the new version leaves the user out
    assert client.post("/v1/model/reload", headers=A).status_code == 200
    assert _source(client, user) == "popular"

    ModelStore(model_root).rollback(before)
    assert user in _user_ids(model_root)  # the old version still holds the id ...
    assert client.post("/v1/model/reload", headers=A).status_code == 200
    r = client.get(f"/v1/users/{user}/recommendations", headers=F)
    assert r.json()["model_version"] == before
    assert r.json()["source"] == "popular"  # ... and does not serve it


def test_other_workers_honour_the_erasure_at_their_next_poll(
    model_root: Path, database_url: str
) -> None:
    user = _model_user(model_root)
    # the tail of this worker never runs during the test: its poll is called by hand
    with (
        make_client(model_root, database_url) as a,
        make_client(model_root, database_url, event_poll_seconds=3600) as b,
    ):
        seeded = _seed(a, model_root, user)
        stale = b.app.state.recoffer  # type: ignore[attr-defined]
        rows = stale.repository.events_after(0)
        stale.activity.add(rows)  # what b's tail had read before the erasure
        assert len(stale.activity.recent(user)) == seeded["events"]
        assert _source(b, user) == "model"
        assert a.delete(f"/v1/users/{user}", headers=A).status_code == 200
        assert _source(b, user) == "model"  # the lag: until b polls
        assert stale.privacy.refresh() == 1  # b's poll
        assert _source(b, user) == "popular"
        assert stale.activity.recent(user) == ()  # its copy of the events is gone too
        assert stale.privacy.refresh() == 0


def test_a_polling_worker_and_a_restarted_one_stop_serving_the_user(
    model_root: Path, database_url: str
) -> None:
    user = _model_user(model_root)
    poll = 0.05
    with (
        make_client(model_root, database_url) as a,
        make_client(model_root, database_url, event_poll_seconds=poll) as b,
    ):
        assert _source(b, user) == "model"
        assert a.delete(f"/v1/users/{user}", headers=A).status_code == 200
        deadline = time.monotonic() + 100 * poll  # generous: 2 cores shared with other tests
        while _source(b, user) != "popular":
            assert time.monotonic() < deadline, "worker b never read the tombstone"
            time.sleep(poll / 5)
    # a worker started later loads the tombstones before it serves
    with make_client(model_root, database_url, event_poll_seconds=3600) as c:
        assert _source(c, user) == "popular"


# --- the export ------------------------------------------------------------------------


def test_export_returns_everything_held_about_the_user(
    erased_setup: tuple[TestClient, str, Seeded],
    model_root: Path,
) -> None:
    client, user, seeded = erased_setup
    r = client.get(f"/v1/users/{user}/export", headers=A)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"  # it carries coupon codes
    body = r.json()
    tables = body["tables"]
    assert body["user_id"] == user
    assert body["erased_at"] is None
    assert tables["users"][0]["attributes"] == {"email": f"{user}@example.org"}
    assert len(tables["events"]) == seeded["events"]
    assert {e["item_id"] for e in tables["events"]} == set(seeded["items"])
    assert [d["decision"] for d in tables["offer_decisions"]] == ["issued"]
    assert [c["code"] for c in tables["coupons"]] == [normalise_code(seeded["code"])]
    assert tables["coupons"][0]["order_id"] == "order-1"
    assert len(body["recent_activity"]) == seeded["events"]
    model = body["model"]
    assert model["version"] == ModelStore(model_root).current()
    assert model["in_model"] is True
    assert model["served_personally"] is True
    artifact = load_artifact(ModelStore(model_root).current_path())  # type: ignore[arg-type]
    row = [str(u) for u in artifact.arrays["user_ids"]].index(user)
    indptr, indices = artifact.arrays["history_indptr"], artifact.arrays["history_indices"]
    bought = {str(artifact.arrays["item_ids"][i]) for i in indices[indptr[row] : indptr[row + 1]]}
    assert {p["item_id"] for p in model["purchases"]} == bought

    assert client.delete(f"/v1/users/{user}", headers=A).status_code == 200
    after = client.get(f"/v1/users/{user}/export", headers=A).json()
    assert after["erased_at"] is not None
    assert all(rows == [] for rows in after["tables"].values())
    assert after["recent_activity"] == []
    # the served version still holds the id until it is pruned, and does not serve it
    assert after["model"]["in_model"] is True
    assert after["model"]["served_personally"] is False


# --- who may call ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [FRONTEND, MARKETING])
def test_erasure_and_export_need_the_admin_role(model_root: Path, tmp_path: Path, key: str) -> None:
    with make_client(model_root, f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        user = _model_user(model_root)
        headers = {"X-API-Key": key}
        assert client.delete(f"/v1/users/{user}", headers=headers).status_code == 403
        assert client.get(f"/v1/users/{user}/export", headers=headers).status_code == 403
        assert client.delete(f"/v1/users/{user}").status_code == 401
        assert client.get(f"/v1/users/{user}/export").status_code == 401
        assert _source(client, user) == "model"  # nothing was erased
        assert client.delete("/v1/users/has%20space", headers=A).status_code == 422


# --- migration 0004 --------------------------------------------------------------------


def test_migration_0004_keeps_coupons_and_makes_their_user_id_nullable(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from alembic import command
    from sqlalchemy import insert, inspect

    from service.activity.repository import Repository
    from service.db import alembic_config, make_engine, migrate
    from service.privacy.repository import PrivacyRepository

    engine = make_engine(database_url)
    migrate(engine, "0003")
    now = datetime.now(UTC)
    coupon = {
        "code": "ABCDEFGHJKLMNPQR",
        "campaign_id": BUILT_IN,
        "user_id": "u-before-0004",
        "attribution_id": "a1",
        "discount_percent": 10.0,
        "issued_at": now,
        "expires_at": now + timedelta(days=1),
    }
    coupons = metadata.tables["coupons"]
    with engine.begin() as conn:
        conn.execute(insert(coupons).values(**coupon))
    migrate(engine)
    columns = {c["name"]: c for c in inspect(engine).get_columns("coupons")}
    assert columns["user_id"]["nullable"] is True
    PrivacyRepository(Repository(engine)).erase("u-before-0004", now)
    with engine.connect() as conn:
        row = conn.execute(select(coupons.c.code, coupons.c.user_id)).one()
        assert tuple(row) == ("ABCDEFGHJKLMNPQR", None)
        assert conn.execute(select(erasure_keys.c.secret)).scalar_one()  # made by the migration

    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        conn.commit()
    with engine.connect() as conn:  # the accounting row survives, under no user
        assert tuple(conn.execute(select(coupons.c.code, coupons.c.user_id)).one()) == (
            "ABCDEFGHJKLMNPQR",
            "",
        )
    names = set(inspect(engine).get_table_names())
    assert not {"erased_users", "erasure_keys"} & names
    user_column = next(c for c in inspect(engine).get_columns("coupons") if c["name"] == "user_id")
    assert user_column["nullable"] is False
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(select(coupons.c.user_id)).scalar_one() is None
    engine.dispose()


def test_the_per_request_check_hashes_exactly_as_hmac_sha256() -> None:
    from service.privacy import Tombstones, user_hash

    for key in (b"k" * 32, b"x" * 100, b""):
        stones = Tombstones(key, [user_hash(key, "u1")])
        for user_id in ("u1", "u2", "üser/ä", "x" * 128):
            expected = hmac.new(key, user_id.encode(), sha256).hexdigest()
            assert user_hash(key, user_id) == expected
            assert stones.hash(user_id) == expected
        assert stones.is_erased("u1")
        assert not stones.is_erased("u2")
    assert not Tombstones(None, ["anything"]).is_erased("u1")  # no key yet: nothing to check


def test_a_poll_straddling_the_erasure_does_not_bring_the_events_back(
    model_root: Path, tmp_path: Path
) -> None:
    user = _model_user(model_root)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with (
        make_client(model_root, url, event_poll_seconds=3600) as client,
        make_client(model_root, url, event_poll_seconds=3600) as other,
    ):
        seeded = _seed(other, model_root, user)  # events this worker has not read yet
        state = client.app.state.recoffer  # type: ignore[attr-defined]
        read_before = state.repository.events_after(0)  # the tail's read, before the commit
        assert client.delete(f"/v1/users/{user}", headers=A).status_code == 200
        state.activity.add(read_before)  # ... added after it
        assert len(state.activity.recent(user)) == seeded["events"]
        state.privacy.refresh()  # the end of that same poll
        assert state.activity.recent(user) == ()
        assert _source(client, user) == "popular"


def test_a_replica_process_honours_the_erasure_within_its_poll(
    model_root: Path, database_url: str
) -> None:
    import httpx

    from benchmarks.harness import Server

    user = _model_user(model_root)
    env = {
        "RECOFFER_MODEL_DIR": str(model_root),
        "RECOFFER_DATABASE_URL": database_url,
        "RECOFFER_FRONTEND_KEYS": FRONTEND,
        "RECOFFER_ADMIN_KEYS": ADMIN,
        "RECOFFER_EVENT_POLL_SECONDS": "0.2",
        "RECOFFER_ACCESS_LOG": "false",
    }
    with make_client(model_root, database_url) as here, Server(env) as replica:
        url = f"{replica.url}/v1/users/{user}/recommendations"
        assert httpx.get(url, headers=F).json()["source"] == "model"
        assert here.delete(f"/v1/users/{user}", headers=A).status_code == 200
        deadline = time.monotonic() + 30  # the poll is 0.2 s; 2 cores shared with other tests
        while httpx.get(url, headers=F).json()["source"] != "popular":
            assert time.monotonic() < deadline, replica.log_tail()
            time.sleep(0.05)
        # and the replica refuses to store anything new under the id
        view = {"user_id": user, "type": "view", "item_id": _items(here, model_root, 1)[0]}
        r = httpx.post(f"{replica.url}/v1/events", json=view, headers=F)
        assert r.json()["accepted"] == 0
