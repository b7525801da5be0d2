"""Fixtures shared by every test: tiny synthetic shops, trained model roots, the real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.data.formats import Purchases, purchases_from_frame
from training.synthetic.shop import SyntheticShop, generate_shop
from training.synthetic.spec import spec_for

SHARED = Path(__file__).resolve().parents[2] / "shared"
ONLINE_RETAIL = SHARED / "data" / "online-retail" / "online_retail.csv.gz"


def require_or_skip(condition: bool, reason: str, variable: str) -> None:
    """Skip with ``reason`` on a developer's machine; fail in CI where ``variable`` is set."""
    if condition:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} (and {variable}=1 says it must be available)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    require_or_skip(
        ONLINE_RETAIL.is_file(),
        f"Online Retail data set not present at {ONLINE_RETAIL}",
        "RECOFFER_REQUIRE_SHARED_DATA",
    )
    return ONLINE_RETAIL


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright downloads no browser here


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The browser for page tests; skips (fails in CI) when it is not installed."""
    require_or_skip(
        CHROMIUM.is_file(),
        f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)",
        "RECOFFER_REQUIRE_BROWSER",
    )
    return CHROMIUM


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian's prometheus package, or RECOFFER_PROMTOOL); skips (fails
    in CI) when absent. Checks the alert rules under deploy/prometheus (issue 13, item 4)."""
    import shutil

    path = os.environ.get("RECOFFER_PROMTOOL") or shutil.which("promtool") or ""
    require_or_skip(
        bool(path) and Path(path).is_file(),
        "promtool not found (apt-get install prometheus, or RECOFFER_PROMTOOL=path)",
        "RECOFFER_REQUIRE_PROMTOOL",
    )
    return path


@pytest.fixture(scope="session")
def tiny_shop() -> SyntheticShop:
    return generate_shop(spec_for("tiny"))


@pytest.fixture(scope="session")
def small_shop() -> SyntheticShop:
    return generate_shop(spec_for("small"))


@pytest.fixture(scope="session")
def tiny_purchases(tiny_shop: SyntheticShop) -> Purchases:
    return purchases_from_frame(tiny_shop.purchases, source="tiny-shop")


@pytest.fixture(scope="session")
def small_purchases(small_shop: SyntheticShop) -> Purchases:
    return purchases_from_frame(small_shop.purchases, source="small-shop")


# --- databases ---------------------------------------------------------------------------
# PostgreSQL's address and the fresh databases come from benchmarks.harness, shared with the
# benchmarks; imported where needed, so that tests without PostgreSQL never import it.


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL admin URL; skips (fails in CI) when the server is unreachable."""
    from sqlalchemy import create_engine, text

    from benchmarks.harness import POSTGRES_ADMIN_URL

    reason = ""
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "not available here"
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"
    require_or_skip(not reason, reason, "RECOFFER_REQUIRE_POSTGRES")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def fresh_postgres(postgres_server: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    from benchmarks.harness import postgres_database

    with postgres_database("recoffer_t", postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres(postgres_server: str) -> Iterator[str]:
    """A new, empty database shared by the tests of one module, dropped afterwards."""
    from benchmarks.harness import postgres_database

    with postgres_database("recoffer_t", postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recoffer.db'}"
    url: str = request.getfixturevalue("fresh_postgres")
    return url


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The local Redis URL (RECOFFER_TEST_REDIS_URL); skips (fails in CI) when unreachable."""
    import redis

    url = os.environ.get("RECOFFER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    reason = ""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {url}: {exc}"
    require_or_skip(not reason, reason, "RECOFFER_REQUIRE_REDIS")
    return url


# --- a trained model ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def small_model_root(tmp_path_factory: pytest.TempPathFactory, small_shop: SyntheticShop) -> Path:
    """A model root with two promoted versions of a model of the small shop (v2 current)."""
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    root = tmp_path_factory.mktemp("models")
    meta = small_shop.items[["item_id", "category", "name"]]
    frame = small_shop.purchases.merge(meta, on="item_id", how="left")
    purchases = purchases_from_frame(frame, source="small-shop")
    params = ModelParams(factors=16, iterations=10, regularization=0.1, threads=2)
    for _ in range(2):
        run(TrainConfig(model_dir=root, params=params, force=True), purchases=purchases)
    return root


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A Redis key prefix of this test's own (parallel runs never share keys), its keys deleted
    afterwards."""
    import secrets

    import redis

    name = f"recoffer-test-{secrets.token_hex(6)}"
    yield name
    client = redis.Redis.from_url(redis_server)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)
    client.close()
