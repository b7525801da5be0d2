"""Users: register or update."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from service.api.deps import IngestDep
from service.api.schemas import Id, UserIn, UserOut

router = APIRouter(prefix="/v1/users", tags=["users"])
USER_EXAMPLE = {"signed_up_at": "2026-11-23T09:30:00Z", "attributes": {"country": "UK"}}


@router.put("/{user_id}", response_model=UserOut)
async def put_user(
    user_id: Annotated[Id, Path(description="The shop's user id.")],
    body: Annotated[UserIn, Body(openapi_examples={"sign-up": {"value": USER_EXAMPLE}})],
    ingest: IngestDep,
) -> UserOut:
    """Register a user or update their sign-up time and attributes."""
    record = await ingest.put_user(
        user_id,
        signed_up_at=body.signed_up_at,
        attributes=body.attributes if "attributes" in body.model_fields_set else None,
    )
    return UserOut(
        user_id=record.user_id,
        signed_up_at=record.signed_up_at,
        first_seen_at=record.first_seen_at,
        attributes=record.attributes,
    )
