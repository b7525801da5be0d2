"""Large catalogues through an ANN index (issue 15, item 4), forced on for the small shop.

The trainer builds the index with ``ann_min_items=0``; the service takes a few hundred
candidates from it and re-ranks them exactly, so on this small catalogue its lists are the
exact ones. Every filter still returns ``limit`` items (the fetch grows, then exact scoring).
Precomputed candidates are bounded; ten million user ids need no dict.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import ann
from service.activity.records import Activity, CatalogueEntry
from service.app import create_app
from service.artifact import Artifact, ModelStore, load_artifact
from service.errors import ArtifactError
from service.recommend.recommender import Query, Recommender
from service.recommend.serving import ServingOptions, UserIndex, prepare
from service.scoring import Recipe, Scorer
from service.settings import Settings
from training.synthetic.shop import SyntheticShop

pytest.importorskip("usearch", reason="the ann extra (usearch) is not installed")

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
NO_PRECOMPUTE = ServingOptions(precompute_max_users=0)


@pytest.fixture(scope="module")
def ann_root(tmp_path_factory: pytest.TempPathFactory, small_shop: SyntheticShop) -> Path:
    """A model of the small shop whose trainer built the index (forced: ``ann_min_items=0``)."""
    from training.data.formats import purchases_from_frame
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    root = tmp_path_factory.mktemp("ann-models")
    meta = small_shop.items[["item_id", "category", "name"]]
    frame = small_shop.purchases.merge(meta, on="item_id", how="left")
    purchases = purchases_from_frame(frame, source="small-shop")
    # no EASE: a catalogue large enough for an index never has it (``ease_max_items``)
    params = ModelParams(
        factors=16, iterations=10, regularization=0.1, threads=2, ann_min_items=0, ease_max_items=0
    )
    run(TrainConfig(model_dir=root, params=params, force=True, tune_seconds=0), purchases=purchases)
    return root


@pytest.fixture(scope="module")
def artifact(ann_root: Path) -> Artifact:
    return load_artifact(ModelStore(ann_root).current_path(), mmap=False)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def indexed(artifact: Artifact) -> Recommender:
    return Recommender(prepare(artifact, options=NO_PRECOMPUTE))


@pytest.fixture(scope="module")
def exact(artifact: Artifact) -> Recommender:
    return Recommender(
        prepare(artifact, options=ServingOptions(precompute_max_users=0, use_ann=False))
    )


def _users(artifact: Artifact, n: int = 60) -> list[str]:
    ids = artifact.arrays["user_ids"]
    return [str(ids[i]) for i in np.linspace(0, len(ids) - 1, n).astype(int)]


def _ids(recommender: Recommender, query: Query, **kwargs: object) -> list[str]:
    return [r.item_id for r in recommender.recommend(query, **kwargs).items]  # type: ignore[arg-type]


def test_the_manifest_lists_the_index_with_its_checksum_and_recall(artifact: Artifact) -> None:
    info = artifact.manifest.ann
    assert info is not None
    assert info.library == "usearch"
    assert [i.factor_set for i in info.indexes] == ann.factor_sets(
        list(artifact.manifest.recipes.values())
    ) or [i.factor_set for i in info.indexes] == ["als"]
    for index in info.indexes:
        spec = artifact.manifest.files[index.file]
        assert spec.bytes == (artifact.path / index.file).stat().st_size
        assert len(spec.sha256) == 64
        assert index.items == artifact.n_items
    assert set(info.recall_at_10) == {"all", "novel"}
    assert min(info.recall_at_10.values()) >= 0.95
    assert info.recall_users == min(500, artifact.n_users)


def test_a_changed_index_file_is_refused(artifact: Artifact, tmp_path: Path) -> None:
    copy = tmp_path / artifact.path.name
    shutil.copytree(artifact.path, copy)
    index_file = copy / artifact.manifest.ann.indexes[0].file  # type: ignore[union-attr]
    index_file.chmod(0o644)
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(copy, mmap=False)
    index_file.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(copy, mmap=False)


def test_known_users_get_the_exact_lists_from_the_index(
    artifact: Artifact, indexed: Recommender, exact: Recommender
) -> None:
    assert indexed.model.ann_indexes
    assert not exact.model.ann_indexes
    overlap = []
    for user in _users(artifact):
        for exclude_purchased in (False, True):
            query = Query(user_id=user, limit=10, exclude_purchased=exclude_purchased)
            got, want = _ids(indexed, query), _ids(exact, query)
            assert len(got) == 10
            overlap.append(len(set(got) & set(want)) / 10)
    assert np.mean(overlap) >= 0.97


def test_session_users_get_the_exact_lists_from_the_index(
    artifact: Artifact, indexed: Recommender, exact: Recommender
) -> None:
    items = [str(i) for i in artifact.arrays["item_ids"][:300]]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    overlap = []
    for start in range(0, 200, 20):
        recent = [
            Activity(i, "view", now - timedelta(minutes=n))
            for n, i in enumerate(items[start : start + 6])
        ]
        recent.append(Activity(items[start], "purchase", now))
        for exclude_purchased in (False, True):
            query = Query(user_id="new-visitor", limit=10, exclude_purchased=exclude_purchased)
            got = indexed.recommend(query, recent, now=now)
            want = exact.recommend(query, recent, now=now)
            assert got.source == "session"
            assert len(got.items) == 10
            if exclude_purchased:
                assert items[start] not in {r.item_id for r in got.items}
            overlap.append(
                len({r.item_id for r in got.items} & {r.item_id for r in want.items}) / 10
            )
    assert np.mean(overlap) >= 0.97


def test_every_filter_still_returns_limit_items(artifact: Artifact, indexed: Recommender) -> None:
    m = indexed.model
    assert m.categories is not None
    categories, counts = np.unique(m.categories, return_counts=True)
    small = str(categories[counts.argmin()])  # few items: the fetch must grow past 200
    in_stock = {str(i): CatalogueEntry(in_stock=True) for i in artifact.arrays["item_ids"][::7]}
    hidden = frozenset(str(i) for i in artifact.arrays["item_ids"][:40])
    for user in _users(artifact, 15):
        history = set(indexed._history(m.user_index[user]).item_idx.tolist())
        base = _ids(indexed, Query(user_id=user, limit=20))
        cases: list[tuple[Query, dict[str, object]]] = [
            (Query(user_id=user, limit=20, exclude_purchased=True), {}),
            (Query(user_id=user, limit=20, exclude=frozenset(base[:15])), {}),
            (Query(user_id=user, limit=20, category=small), {}),
            (Query(user_id=user, limit=20, in_stock=True), {"catalogue": in_stock}),
            (Query(user_id=user, limit=20), {"hidden": hidden}),
            (
                Query(user_id=user, limit=60, exclude_purchased=True, in_stock=True),
                {"catalogue": in_stock},
            ),
        ]
        for query, extra in cases:
            result = indexed.recommend(query, **extra)  # type: ignore[arg-type]
            model_items = [r for r in result.items if r.source == "model"]
            assert len(result.items) == query.limit
            wanted = (
                min(query.limit, int(counts[categories == small][0]))
                if query.category
                else query.limit
            )
            assert len(model_items) >= min(wanted, query.limit) - 0  # no popular top-up needed
            rows = [m.item_index[r.item_id] for r in model_items]
            assert not {r.item_id for r in model_items} & query.exclude
            assert not {r.item_id for r in model_items} & (hidden if "hidden" in extra else set())
            if query.exclude_purchased:
                assert not set(rows) & history
            if query.category:
                assert all(m.categories[i] == small for i in rows)
            if query.in_stock:
                assert all(r.item_id in in_stock for r in model_items)


def test_without_the_library_an_indexed_version_is_scored_exactly(
    artifact: Artifact, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ann, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        model = prepare(artifact, options=NO_PRECOMPUTE)
    assert not model.ann_indexes
    assert "ann_index_unused" in caplog.text
    user = _users(artifact, 1)[0]
    assert len(Recommender(model).recommend(Query(user_id=user, limit=10)).items) == 10


def test_scoring_candidates_equals_scoring_the_catalogue(artifact: Artifact) -> None:
    scorer = Scorer.from_arrays(artifact.arrays)
    hist, ages = scorer.history_counts, scorer.history_age_days
    recipe = Recipe(
        weights={"als": 1.0, "repeat": 0.7, "popularity": 0.2, "trending": 0.1}, repeat_bonus=0.1
    )
    candidates = np.arange(0, scorer.n_items, 3)
    for user in range(0, scorer.user_factors.shape[0], 97):
        start, end = hist.indptr[user], hist.indptr[user + 1]
        args = (
            hist.indices[start:end],
            hist.data[start:end],
            ages.data[start:end],
            np.asarray(scorer.user_factors[user]),
            recipe,
        )
        full = scorer.score_row(*args)
        part = scorer.score_candidates(candidates, *args)
        np.testing.assert_allclose(part, full[candidates], rtol=1e-4, atol=1e-4)


def test_precomputed_candidates_are_bounded_to_the_longest_histories(artifact: Artifact) -> None:
    model = prepare(artifact, options=ServingOptions(precompute_max_users=25, use_ann=False))
    lengths = np.diff(artifact.arrays["history_indptr"])
    assert model.precomputed_users is not None
    assert len(model.precomputed_users) == 25
    assert model.candidates["all"][0].shape[0] == 25
    assert lengths[model.precomputed_users].min() >= np.sort(lengths)[-25]
    bounded, exact = Recommender(model), Recommender(prepare(artifact, options=NO_PRECOMPUTE))
    ids = artifact.arrays["user_ids"]
    for user in [str(ids[i]) for i in model.precomputed_users[:5]] + _users(artifact, 5):
        query = Query(user_id=user, limit=10)
        assert _ids(bounded, query) == _ids(
            Recommender(prepare(artifact, options=ServingOptions(use_ann=False))), query
        )
        assert len(_ids(exact, query)) == 10


def test_the_user_index_finds_ids_in_sorted_and_unsorted_arrays() -> None:
    for ids in (np.array(["a1", "a2", "b", "c9"]), np.array(["c9", "a1", "b", "a2"])):
        index = UserIndex(ids)
        assert [index[str(u)] for u in ids] == list(range(len(ids)))
        assert index.get("zz") is None
        assert "a3" not in index
        assert "b" in index
        assert index.get("a1-but-longer") is None
        assert len(index) == 4
        assert list(index) == [str(u) for u in ids]
        with pytest.raises(KeyError):
            index["a0"]


@pytest.fixture
def client(ann_root: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=ann_root,
        database_url=f"sqlite:///{tmp_path / 'recoffer.db'}",
        frontend_keys=[FRONTEND],
        marketing_keys=[MARKETING],
        access_log=False,
        precompute_max_users=0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_api_returns_limit_items_under_every_filter(
    client: TestClient, artifact: Artifact
) -> None:
    categories = artifact.arrays["item_categories"]
    values, counts = np.unique(categories, return_counts=True)
    category = str(values[counts.argmax()])
    headers = {"X-API-Key": FRONTEND}
    stock = [
        {"op": "upsert", "item_id": str(i), "in_stock": True}
        for i in artifact.arrays["item_ids"][::5]
    ]
    r = client.post("/v1/items:batch", json={"items": stock}, headers={"X-API-Key": MARKETING})
    assert r.status_code < 300, r.text
    for user in _users(artifact, 5):
        for params in (
            {"limit": 25},
            {"limit": 25, "exclude_purchased": "true"},
            {"limit": 25, "category": category},
            {"limit": 25, "in_stock": "true"},
            {"limit": 25, "exclude_purchased": "true", "in_stock": "true"},
        ):
            r = client.get(f"/v1/users/{user}/recommendations", params=params, headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["items"]) == 25, params
