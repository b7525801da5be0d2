"""The yardstick: a bare FastAPI endpoint returning a typed constant list of 10 items."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    item_id: str
    score: float
    reason: str
    source: str


ITEMS = [
    Item(item_id=f"i{n}", score=1.0 - n / 10, reason="popular", source="popular") for n in range(10)
]


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(user_id: str) -> list[Item]:
        return ITEMS

    return app
