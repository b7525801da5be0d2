"""Catalogue updates: category, name, price, stock."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from service.api.deps import IngestDep
from service.api.schemas import Id, ItemIn, ItemOut

router = APIRouter(prefix="/v1/items", tags=["catalogue"])


@router.put("/{item_id}", response_model=ItemOut)
async def put_item(
    item_id: Annotated[Id, Path(description="The shop's item id.")],
    body: Annotated[
        ItemIn,
        Body(openapi_examples={"out of stock": {"value": {"in_stock": False, "category": "c07"}}}),
    ],
    ingest: IngestDep,
) -> ItemOut:
    """Create or update a catalogue item; fields not sent keep their value."""
    record = await ingest.put_item(
        item_id,
        name=body.name,
        category=body.category,
        price=body.price,
        in_stock=body.in_stock,
    )
    return ItemOut(**record.__dict__)
