"""Catalogue updates: one item (name, category, price, stock, attributes) or a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from service.activity.records import ItemChange, ItemRecord
from service.api.deps import CatalogueDep
from service.api.schemas import (
    Id,
    ItemBatchIn,
    ItemBatchOut,
    ItemIn,
    ItemOut,
    ItemResultOut,
    ItemUpsert,
)

router = APIRouter(prefix="/v1/items", tags=["catalogue"])

BATCH_EXAMPLES = {
    "a batch": {
        "value": {
            "items": [
                {
                    "op": "upsert",
                    "item_id": "85123A",
                    "name": "WHITE HANGING HEART T-LIGHT HOLDER",
                    "category": "c07",
                    "price": "2.55",
                    "currency": "GBP",
                    "attributes": {"colour": "white"},
                },
                {"op": "hide", "item_id": "22423"},
                {"op": "delete", "item_id": "84029E"},
            ]
        }
    }
}


def _out(record: ItemRecord) -> ItemOut:
    return ItemOut(**record.__dict__)


@router.put("/{item_id}", response_model=ItemOut)
async def put_item(
    item_id: Annotated[Id, Path(description="The shop's item id.")],
    body: Annotated[
        ItemIn,
        Body(openapi_examples={"out of stock": {"value": {"in_stock": False, "category": "c07"}}}),
    ],
    ingest: CatalogueDep,
) -> ItemOut:
    """Create or update a catalogue item; fields not sent keep their value."""
    record = await ingest.put_item(
        item_id,
        name=body.name,
        category=body.category,
        price=body.price,
        currency=body.currency,
        in_stock=body.in_stock,
        attributes=body.attributes,
    )
    return _out(record)


@router.post(":batch", response_model=ItemBatchOut)
async def change_items(
    body: Annotated[ItemBatchIn, Body(openapi_examples=BATCH_EXAMPLES)],
    ingest: CatalogueDep,
) -> ItemBatchOut:
    """Upsert, hide, show or delete a batch of items, all or nothing, with a result per item."""
    changes = [
        ItemChange(
            "upsert",
            op.item_id,
            name=op.name,
            category=op.category,
            price=op.price,
            currency=op.currency,
            in_stock=op.in_stock,
            attributes=op.attributes,
        )
        if isinstance(op, ItemUpsert)
        else ItemChange(op.op, op.item_id)
        for op in body.items
    ]
    results = await ingest.change_items(changes)
    return ItemBatchOut(results=[ItemResultOut(**r.__dict__) for r in results])
