"""The loop through the real routes: a model's list, its impressions and click, a purchase
credited to its version and source; and the retention of feedback rows (issue 14)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from service.artifact import ModelStore, load_artifact
from service.tables import rec_attributions, rec_clicks, rec_impressions

from .shop import F, M, click, impression, make_shop, purchase


def test_a_served_list_is_credited_to_its_version_and_sources(
    small_model_root: Path, database_url: str, tmp_path: Path
) -> None:
    path = ModelStore(small_model_root).current_path()
    assert path is not None
    artifact = load_artifact(path)
    indptr = artifact.arrays["history_indptr"]
    user = str(artifact.arrays["user_ids"][int((indptr[1:] - indptr[:-1]).argmax())])
    for shop in make_shop(database_url, tmp_path, model_dir=small_model_root):
        r = shop.client.get(f"/v1/users/{user}/recommendations?n=5", headers=F)
        assert r.status_code == 200, r.text
        body = r.json()
        lid, items = body["request_id"], body["items"]
        shown = [impression(user, it["item_id"], lid, p) for p, it in enumerate(items)]
        bought = items[1]["item_id"]
        assert shop.post(*shown).json() == {"accepted": len(items), "duplicates": 0}
        shop.post(click(user, bought, lid))
        shop.post(purchase(user, bought, price="4.20", currency="GBP"))
        rows = shop.rows(rec_impressions)
        assert {x["model_version"] for x in rows} == {body["model_version"]}
        assert [x["source"] for x in rows] == [it["source"] for it in items]
        [credit] = shop.rows(rec_attributions)
        assert (credit["model_version"], credit["source"], credit["via"]) == (
            body["model_version"],
            items[1]["source"],
            "click",
        )
        figures = shop.client.get("/v1/analytics/recommendations?by=model_version", headers=M)
        [group] = figures.json()["groups"]
        assert (group["impressions"], group["clicks"], group["purchases"]) == (len(items), 1, 1)


def test_old_feedback_rows_are_pruned_after_the_retention(
    database_url: str, tmp_path: Path
) -> None:
    for shop in make_shop(database_url, tmp_path, feedback_retention_days=7):
        feedback = shop.state.feedback
        assert feedback is not None
        assert feedback.retention == timedelta(days=7)
        old = shop.list_id("u1", ("model",))
        shop.post(impression("u1", "a", old, 0), click("u1", "a", old))
        shop.post(purchase("u1", "a"))
        shop.later(days=6)
        recent = shop.list_id("u1", ("model",))
        shop.post(impression("u1", "b", recent, 0), click("u1", "b", recent))
        shop.post(purchase("u1", "b"))
        assert feedback.prune() == 0  # six days: all kept
        shop.later(days=2)
        assert feedback.prune() == 3  # the first day's impression, click and attribution
        for table in (rec_impressions, rec_clicks, rec_attributions):
            assert [x["item_id"] for x in shop.rows(table)] == ["b"]
    for shop in make_shop(database_url, tmp_path / "kept", feedback_retention_days=0):
        assert shop.state.feedback is not None
        assert shop.state.feedback.prune() == 0
