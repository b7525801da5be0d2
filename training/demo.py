"""The demo on embedded defaults: a synthetic shop ending now, a model, a seeded SQLite database.

Everything is created once under the work directory and reused on the next run, so
``recoffer demo`` is quick the second time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd

from service.artifact import ModelStore
from training.models import ModelParams
from training.pipeline import TrainConfig
from training.synthetic.shop import SyntheticShop, generate_shop, write_shop
from training.synthetic.spec import spec_for

log = logging.getLogger(__name__)
SEED_BATCH = 1000
DEMO_CURRENCY = "EUR"  # the synthetic shop's prices


@dataclass
class DemoPlan:
    workdir: Path
    data_dir: Path
    models: Path
    database_url: str
    train_config: TrainConfig | None
    current: str | None

    def seed_database(self) -> None:
        """Load the shop's new users, their events and the catalogue into the database, once."""
        marker = self.workdir / ".seeded"
        if marker.is_file():
            return
        seed_database(self.database_url, self.data_dir)
        marker.write_text(datetime.now(UTC).isoformat())


def prepare_demo(
    workdir: Path, preset: str, *, progress: Callable[[str], None], tune_seconds: float = 20.0
) -> DemoPlan:
    """Generate the shop when missing; say whether a model must be trained."""
    spec = spec_for(preset)
    data_dir = workdir / "data" / preset
    purchases = data_dir / "purchases.csv"
    if not purchases.is_file():
        # the shop's history ends now, so its new users are new for the offer rules too
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
        spec = dataclasses.replace(spec, end=end.isoformat(sep=" "))
        progress(f"generating the '{preset}' synthetic shop into {data_dir}")
        shop = generate_shop(spec)
        write_shop(_with_item_metadata(shop), data_dir)
    models = workdir / "models"
    current = ModelStore(models).current()
    config = None
    if current is None:
        config = TrainConfig(
            model_dir=models,
            data=purchases,
            tune_seconds=tune_seconds,
            params=ModelParams(),
        )
    return DemoPlan(
        workdir=workdir,
        data_dir=data_dir,
        models=models,
        database_url=f"sqlite:///{workdir / 'recoffer.db'}",
        train_config=config,
        current=current,
    )


def _with_item_metadata(shop: SyntheticShop) -> SyntheticShop:
    """Purchases carry each item's category and name, so the model knows them."""
    meta = shop.items[["item_id", "category", "name"]]
    purchases = shop.purchases.merge(meta, on="item_id", how="left", validate="many_to_one")
    return dataclasses.replace(shop, purchases=purchases)


def seed_database(database_url: str, data_dir: Path) -> None:
    """Users who signed up recently, their behaviour events, the item catalogue, the shop's
    past orders, and a first computation of everyone's segments."""
    from service.activity.records import NewEvent
    from service.activity.repository import Repository
    from service.clock import utc_now
    from service.db import make_engine, migrate
    from service.segments.repository import SegmentRepository
    from service.segments.service import Segments
    from service.settings import SegmentSettings
    from training.data.imports import import_file

    engine = make_engine(database_url)
    try:
        migrate(engine)
        repo = Repository(engine)
        items = pd.read_csv(data_dir / "items.csv", dtype={"item_id": str, "category": str})
        for row in items.itertuples(index=False):
            repo.upsert_item(
                str(row.item_id),
                name=str(row.name),
                category=str(row.category),
                price=Decimal(f"{float(row.price):.2f}"),  # exact money, never a float
                currency=DEMO_CURRENCY,
                in_stock=True,
            )
        events = pd.read_csv(data_dir / "events.csv", dtype={"user_id": str, "item_id": str})
        events["timestamp"] = pd.to_datetime(events["timestamp"])
        users = pd.read_csv(data_dir / "users.csv", dtype={"user_id": str})
        signed_up = dict(zip(users["user_id"], pd.to_datetime(users["signed_up_at"]), strict=True))
        for user_id in events["user_id"].unique():
            repo.upsert_user(str(user_id), signed_up_at=_utc(signed_up[user_id]))
        batch = [
            NewEvent(
                user_id=str(e.user_id),
                type=str(e.type),
                ts=_utc(e.timestamp),
                item_id=str(e.item_id),
            )
            for e in events.itertuples(index=False)
        ]
        for start in range(0, len(batch), SEED_BATCH):
            repo.add_events(batch[start : start + SEED_BATCH])
        # the shop's past orders, as `recoffer import` loads them: the lifecycle campaigns
        # (win-back, anniversary, frequent buyer) and the segments have customers to look at
        imported = import_file(
            "purchases", data_dir / "purchases.csv", database_url, currency=DEMO_CURRENCY
        )
        summary = Segments(SegmentRepository(repo), SegmentSettings(), utc_now).run()
        log.info(
            "demo_database_seeded",
            extra={
                "events": len(batch),
                "items": len(items),
                "purchases": imported.written,
                "segmented_users": summary.users,
            },
        )
    finally:
        engine.dispose()


def _utc(value: pd.Timestamp) -> datetime:
    moment: datetime = pd.Timestamp(value).to_pydatetime()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
