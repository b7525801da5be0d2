"""Campaigns managed at run time (issue 12, item 5): create, change, pause, resume, archive,
and each campaign's change log; role marketing.

A definition is validated by ``Campaign``, exactly as a table of the campaigns file is: the
422 names each field. A change is applied by the worker that made it at once and by every
other worker and replica within ``RECOFFER_CAMPAIGN_POLL_SECONDS`` (``service.offers.store``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import CampaignStoreDep
from service.api.docs import documented
from service.api.routes.coupons import api_client
from service.api.schemas import (
    CampaignChangeOut,
    CampaignHistoryOut,
    CampaignOut,
    CampaignRef,
)
from service.offers.campaigns import Campaign
from service.offers.store import CampaignView

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
CampaignPath = Annotated[CampaignRef, Path(description="The campaign's id.")]
ExpectedVersion = Annotated[
    int | None,
    Query(
        ge=1,
        description="Change only if the campaign is still at this version (else 409 "
        "campaign_version_conflict); without it the change applies to the latest version.",
    ),
]
T = TypeVar("T")


def campaign_out(view: CampaignView) -> CampaignOut:
    s = view.stored
    return CampaignOut(
        campaign_id=s.campaign_id,
        active_now=view.active_now,
        definition=view.definition,
        status=s.status,
        version=s.version,
        source=s.source,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


async def _validated(call: Callable[[], T]) -> T:
    """Run ``call`` in a thread; a definition the model refuses is a 422 naming its fields."""
    try:
        return await run_in_threadpool(call)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _located(response: Response, view: CampaignView) -> CampaignOut:
    response.headers["Location"] = f"/v1/campaigns/{view.stored.campaign_id}"
    return campaign_out(view)


@router.post("", status_code=201, response_model=CampaignOut, responses=documented(409))
async def create_campaign(
    campaign: Annotated[
        Campaign,
        Body(
            openapi_examples={
                "win-back": {
                    "value": {
                        "campaign_id": "come_back",
                        "kind": "win_back",
                        "min_orders": 2,
                        "discount_percent": 15,
                    }
                }
            }
        ),
    ],
    store: CampaignStoreDep,
    request: Request,
    response: Response,
) -> CampaignOut:
    """Create a campaign, active at once (version 1): a ``kind`` and its fields, validated
    like a table of the campaigns file. 409 when the id exists (archived ones included)."""
    if "campaign_id" not in campaign.model_fields_set:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "campaign_id"), "msg": "Field required"}]
        )
    view = await run_in_threadpool(store.create, campaign, api_client(request))
    return _located(response, view)


@router.get("/{campaign_id}", response_model=CampaignOut, responses=documented(404))
async def get_campaign(campaign_id: CampaignPath, store: CampaignStoreDep) -> CampaignOut:
    """One campaign: its definition (defaults included), status, version and source."""
    return campaign_out(await run_in_threadpool(store.get, campaign_id))


@router.patch("/{campaign_id}", response_model=CampaignOut, responses=documented(404, 409))
async def update_campaign(
    campaign_id: CampaignPath,
    changes: Annotated[
        dict[str, Any],
        Body(
            description="The fields to set; the others stay as they are. The result is "
            "validated as a whole, like the campaigns file; kind and campaign_id cannot change.",
            openapi_examples={"more coupons": {"value": {"max_per_day": 2000}}},
        ),
    ],
    store: CampaignStoreDep,
    request: Request,
    expected_version: ExpectedVersion = None,
) -> CampaignOut:
    """Change some fields of a campaign (a new version). 409: defined in the campaigns file,
    archived, or not at ``expected_version`` any more."""
    actor = api_client(request)
    view = await _validated(
        lambda: store.update(campaign_id, changes, actor, expected_version=expected_version)
    )
    return campaign_out(view)


@router.post("/{campaign_id}/pause", response_model=CampaignOut, responses=documented(404, 409))
async def pause_campaign(
    campaign_id: CampaignPath,
    store: CampaignStoreDep,
    request: Request,
    expected_version: ExpectedVersion = None,
) -> CampaignOut:
    """Stop deciding (a new version; a paused campaign is left as it is). Allowed on the
    campaigns file's campaigns too; its stats stay readable."""
    actor = api_client(request)
    view = await run_in_threadpool(
        lambda: store.transition(campaign_id, "pause", actor, expected_version=expected_version)
    )
    return campaign_out(view)


@router.post("/{campaign_id}/resume", response_model=CampaignOut, responses=documented(404, 409))
async def resume_campaign(
    campaign_id: CampaignPath,
    store: CampaignStoreDep,
    request: Request,
    expected_version: ExpectedVersion = None,
) -> CampaignOut:
    """Decide again after a pause (an active campaign is left as it is); 409 once archived."""
    actor = api_client(request)
    view = await run_in_threadpool(
        lambda: store.transition(campaign_id, "resume", actor, expected_version=expected_version)
    )
    return campaign_out(view)


@router.post("/{campaign_id}/archive", response_model=CampaignOut, responses=documented(404, 409))
async def archive_campaign(
    campaign_id: CampaignPath,
    store: CampaignStoreDep,
    request: Request,
    expected_version: ExpectedVersion = None,
) -> CampaignOut:
    """Retire the campaign for good: it never decides again and cannot be changed or
    resumed; its stats, coupons and history stay readable. 409 for the file's campaigns."""
    actor = api_client(request)
    view = await run_in_threadpool(
        lambda: store.transition(campaign_id, "archive", actor, expected_version=expected_version)
    )
    return campaign_out(view)


@router.get("/{campaign_id}/history", response_model=CampaignHistoryOut, responses=documented(404))
async def campaign_history(
    campaign_id: CampaignPath,
    store: CampaignStoreDep,
    after: Annotated[int, Query(ge=0, description="Only versions above this one.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Changes at most.")] = 100,
) -> CampaignHistoryOut:
    """Every change of the campaign, oldest first: the version it made, the action, the
    whole definition after it, who (the API key's role and fingerprint, or file) and when."""
    changes = await run_in_threadpool(lambda: store.history(campaign_id, after=after, limit=limit))
    return CampaignHistoryOut(
        campaign_id=campaign_id,
        changes=[
            CampaignChangeOut(
                version=c.version,
                action=c.action,
                status=c.status,
                definition=c.definition,
                actor=c.actor,
                at=c.at,
            )
            for c in changes
        ],
        next_after=changes[-1].version if len(changes) == limit else None,
    )
