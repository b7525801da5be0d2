"""Recommendations for a user, and items similar to an item."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Annotated

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.activity.records import Activity
from service.api.deps import RecommendationsDep, require_part
from service.api.docs import documented
from service.api.fastpath import openapi_parameters, parse_request
from service.api.routes.offers import decision_out
from service.api.schemas import (
    NO_STORE,
    Id,
    RecommendationFilters,
    RecommendationParams,
    RecommendationsIn,
    RecommendationsOut,
    SimilarOut,
)
from service.offers.decisions import OfferEngine
from service.recommend.recommender import Query as RecQuery
from service.recommend.recommender import Recommendation
from service.recommend.service import Recommendations
from service.state import AppState

log = logging.getLogger(__name__)
router = APIRouter(tags=["recommendations"])


def _page_parts(state: AppState) -> tuple[Recommendations, OfferEngine]:
    return state.recommendations, state.offers


FRONTEND_PAGE = require_part(_page_parts, "frontend")
PageDep = Annotated[tuple[Recommendations, OfferEngine], Depends(FRONTEND_PAGE)]
PATH = "/v1/users/{user_id}/recommendations"


@router.get(
    PATH,
    response_model=RecommendationsOut,
    openapi_extra={"parameters": openapi_parameters(RecommendationParams, ("user_id",))},
)
async def recommendations(request: Request) -> Response:
    """Personalised products for one user, with a reason for each (API key: frontend)."""
    # the hot path: key check and one validation inline, no FastAPI parameter resolution
    recommendations, offers = await FRONTEND_PAGE(request)
    params = parse_request(RecommendationParams, request)
    recent = await recommendations.session(params.user_id)  # Redis, when configured
    payload = _page(recommendations, params.user_id, params, request, recent)
    if not params.include_offer:
        return Response(orjson.dumps(payload), media_type="application/json")
    payload["offer"] = await _page_offer(offers, params.user_id, decide=False)
    return _with_offer(payload)


@router.post(PATH, response_model=RecommendationsOut)
async def recommendations_and_offer(
    request: Request,
    user_id: Annotated[Id, Path(description="The shop's user id.", examples=["17850"])],
    body: Annotated[
        RecommendationsIn,
        Body(openapi_examples={"home page": {"value": {"limit": 8, "decide_offer": True}}}),
    ],
    parts: PageDep,
) -> Response:
    """Products and the offer decided now, in one call (the GET never decides)."""
    recommendations, offers = parts
    recent = await recommendations.session(user_id)
    payload = _page(recommendations, user_id, body, request, recent)
    payload["offer"] = await _page_offer(offers, user_id, decide=body.decide_offer)
    return _with_offer(payload)


def _page(
    recommendations: Recommendations,
    user_id: str,
    filters: RecommendationFilters,
    request: Request,
    recent: Sequence[Activity] | None,
) -> dict[str, object]:
    """The list for ``user_id`` under ``filters``, as the response body; ``recent``: the
    user's events read from Redis (None: this worker's own)."""
    served = recommendations.recommend(
        RecQuery(
            user_id=user_id,
            limit=filters.limit,
            exclude_purchased=filters.exclude_purchased,
            exclude=frozenset(filters.exclude),
            category=filters.category,
            in_stock=filters.in_stock,
            purchased_within_days=filters.purchased_within_days,
        ),
        recent,
    )
    return {
        "user_id": user_id,
        "items": [_item(r) for r in served.result.items],
        "source": served.result.source,
        "model_version": served.version,
        "recipe": served.recipe,
        "experiment_id": served.experiment_id,
        "arm": served.arm,
        "request_id": recommendations.list_ids.issue(
            _list_request_id(request), user_id, served.described(recommendations.clock())
        ),
    }


def _list_request_id(request: Request) -> str:
    """The id part of a list's id, 96 random bits (lists are kept for months at thousands a
    second: 64 bits would collide): the middleware's own request id (what the access log
    carries) followed by 32 more, or a fresh one when the client sent an X-Request-ID (a page
    may send the same one with several lists)."""
    own: str = request.scope["state"]["request_id"]
    if "x-request-id" in request.headers:
        return secrets.token_hex(12)
    return own + secrets.token_hex(4)


def _with_offer(payload: dict[str, object]) -> Response:
    """A body with the user's offer: never stored by a browser, a proxy or a CDN."""
    return Response(orjson.dumps(payload), media_type="application/json", headers=NO_STORE)


async def _page_offer(
    offers: OfferEngine, user_id: str, *, decide: bool
) -> dict[str, object] | None:
    """The offer decision to show with the products; recommendations never fail for it."""
    try:
        decision = await run_in_threadpool(offers.offer_for_page, user_id, decide=decide)
    except SQLAlchemyError as exc:
        log.warning("offer_lookup_failed", extra={"error": str(exc).splitlines()[0]})
        return None
    if decision is None:
        return None
    return decision_out(decision, offers).model_dump(mode="json")


def _item(r: Recommendation) -> dict[str, object]:
    return {
        "item_id": r.item_id,
        "score": round(r.score, 6),
        "reason": r.reason,
        "source": r.source,
    }


@router.get("/v1/items/{item_id}/similar", response_model=SimilarOut, responses=documented(404))
async def similar(
    request: Request,
    item_id: Annotated[Id, Path(description="The shop's item id.", examples=["85123A"])],
    recommendations: RecommendationsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    exclude: Annotated[list[Id] | None, Query(max_length=100)] = None,
) -> Response:
    """Items bought by the same kind of customer as this one (404 for an unknown item)."""
    served = recommendations.similar(item_id, limit, exclude or ())
    payload = {
        "item_id": item_id,
        "items": [_item(r) for r in served.result.items],
        "model_version": served.version,
        "request_id": request.scope["state"]["request_id"],
    }
    return Response(orjson.dumps(payload), media_type="application/json")
