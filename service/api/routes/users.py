"""Users: register or update; erase (GDPR) and export everything held about one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path
from starlette.concurrency import run_in_threadpool

from service.api.deps import IngestDep, PrivacyDep, no_store
from service.api.schemas import ErasureOut, ErrorOut, Id, UserExport, UserIn, UserOut

router = APIRouter(prefix="/v1/users", tags=["users"])
USER_EXAMPLE = {"signed_up_at": "2026-11-23T09:30:00Z", "attributes": {"country": "UK"}}
UserPath = Annotated[Id, Path(description="The shop's user id.")]
# issue 12, item 7: signed_up_at never moves later once set
SIGNED_UP_LATER = {
    "model": ErrorOut,
    "description": "`signed_up_at` later than the one stored (`signed_up_at_conflict`): it may "
    "move earlier, never later; nothing of the request is written.",
}


@router.put("/{user_id}", response_model=UserOut, responses={409: SIGNED_UP_LATER})
async def put_user(
    user_id: UserPath,
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


@router.delete("/{user_id}", response_model=ErasureOut)
async def erase_user(user_id: UserPath, privacy: PrivacyDep) -> ErasureOut:
    """Erase the user: events, decisions, user row, coupons' link; no personal answer after."""
    receipt = await run_in_threadpool(privacy.erase, user_id)
    return ErasureOut(
        erased_at=receipt.erased_at, removed=receipt.removed, pending=list(receipt.pending)
    )


# the export carries the user's coupon codes: no browser, proxy or CDN keeps a copy
@router.get("/{user_id}/export", response_model=UserExport, dependencies=[Depends(no_store)])
async def export_user(user_id: UserPath, privacy: PrivacyDep) -> UserExport:
    """Everything held about the user: rows per table, recent activity, the model's view."""
    return UserExport(**await run_in_threadpool(privacy.export, user_id))
