"""The demo shop behind a real server with one API key per role: what the console's browser
tests (``tests/browser``) and its page-timing run (``benchmarks/console_pages.py``) open.

The shop is the one ``python3 tasks.py run`` serves (the ``demo`` preset of the synthetic shop,
its model, its database with past orders and segments), with two model versions so that ops can
roll one back, and some offer traffic (coupons issued, held out, redeemed) so that marketing's
pages have figures to show.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from benchmarks.harness import Server

KEYS = {
    "frontend": "demo-frontend-key-0123456789",
    "marketing": "demo-marketing-key-0123456789",
    "admin": "demo-admin-key-0123456789",
}


@dataclass(frozen=True)
class DemoShop:
    workdir: Path
    data_dir: Path
    models: Path
    database_url: str


def build_demo_shop(workdir: Path, preset: str = "demo") -> DemoShop:
    """Generate, train (twice: a previous version to roll back to) and seed the demo shop."""
    from training.demo import prepare_demo
    from training.pipeline import run

    plan = prepare_demo(workdir, preset, progress=lambda _message: None, tune_seconds=2.0)
    if plan.train_config is not None:
        run(plan.train_config)
        run(dataclasses.replace(plan.train_config, tune_seconds=0.0, force=True))
    plan.seed_database()
    return DemoShop(workdir, plan.data_dir, plan.models, plan.database_url)


def serve_demo(shop: DemoShop, log: Path | None = None) -> Server:
    """The API on the demo shop, with a key per role (a context manager)."""
    env = {
        "RECOFFER_MODEL_DIR": str(shop.models),
        "RECOFFER_DATABASE_URL": shop.database_url,
        "RECOFFER_FRONTEND_KEYS": KEYS["frontend"],
        "RECOFFER_MARKETING_KEYS": KEYS["marketing"],
        "RECOFFER_ADMIN_KEYS": KEYS["admin"],
        "RECOFFER_HOST": "127.0.0.1",
        "RECOFFER_ACCESS_LOG": "false",
        "RECOFFER_RELOAD_INTERVAL_SECONDS": "1",
    }
    return Server(env, log=log)


def seed_offers(url: str, shop: DemoShop, *, users: int = 300, redeem_every: int = 3) -> int:
    """Offer decisions for the shop's newest users through the API, and a redemption for every
    ``redeem_every``-th coupon issued; returns the number of decisions made."""
    frame = pd.read_csv(shop.data_dir / "users.csv", dtype={"user_id": str})
    newest = frame.sort_values("signed_up_at").tail(users)["user_id"]
    headers = {"X-API-Key": KEYS["frontend"]}
    made, issued = 0, 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for user_id in newest:
            answer = client.post("/v1/offers/evaluate", json={"user_id": user_id})
            if answer.status_code != 200:
                continue
            made += 1
            coupon = answer.json().get("coupon")
            if not coupon:
                continue
            issued += 1
            if issued % redeem_every == 0:
                client.post(
                    f"/v1/coupons/{coupon['code']}/redeem",
                    json={
                        "user_id": user_id,
                        "order_id": f"demo-{user_id}",
                        "order_amount": "80.00",
                        "currency": "EUR",
                    },
                )
    return made


def seed_feedback(url: str, shop: DemoShop, *, users: int = 120, lists_per_batch: int = 10) -> int:
    """Recommendation feedback through the API (issue 14): a list for each of ``users`` users
    (the oldest, who have histories), its impressions posted in batches of
    ``lists_per_batch`` lists, a click on the first item of every third list and a purchase of
    it for every sixth; returns the number of impressions posted."""
    frame = pd.read_csv(shop.data_dir / "users.csv", dtype={"user_id": str})
    oldest = frame.sort_values("signed_up_at").head(users)["user_id"]
    headers = {"X-API-Key": KEYS["frontend"]}
    shown = 0
    pending: list[dict[str, object]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for n, user_id in enumerate(oldest):
            answer = client.get(f"/v1/users/{user_id}/recommendations", params={"n": 8})
            if answer.status_code != 200 or not answer.json()["items"]:
                continue
            body = answer.json()
            placement = ("home", "product", "cart")[n % 3]
            for position, item in enumerate(body["items"]):
                pending.append(
                    {
                        "type": "impression",
                        "user_id": user_id,
                        "item_id": item["item_id"],
                        "request_id": body["request_id"],
                        "placement": placement,
                        "position": position,
                    }
                )
            first = body["items"][0]["item_id"]
            if n % 3 == 0:
                pending.append(
                    {
                        "type": "click",
                        "user_id": user_id,
                        "item_id": first,
                        "request_id": body["request_id"],
                        "placement": placement,
                    }
                )
            if n % 6 == 0:
                pending.append(
                    {
                        "type": "purchase",
                        "user_id": user_id,
                        "item_id": first,
                        "order_id": f"demo-rec-{n}",
                        "quantity": 1 + n % 2,
                        "price": "12.50",
                        "currency": "EUR",
                    }
                )
            if (n + 1) % lists_per_batch == 0:
                shown += _post_feedback(client, pending)
                pending = []
        shown += _post_feedback(client, pending)
    return shown


def _post_feedback(client: httpx.Client, events: list[dict[str, object]]) -> int:
    if not events:
        return 0
    answer = client.post("/v1/events", json={"events": events})
    answer.raise_for_status()
    return sum(1 for e in events if e["type"] == "impression")
