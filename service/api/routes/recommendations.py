"""Recommendations for a user, and items similar to an item."""

from __future__ import annotations

import logging
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import RecommendationsDep, require_part
from service.api.fastpath import openapi_parameters, parse_request
from service.api.routes.offers import decision_out
from service.api.schemas import Id, RecommendationParams, RecommendationsOut, SimilarOut
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
    user_id = params.user_id
    query = RecQuery(
        user_id=user_id,
        limit=params.limit,
        exclude_purchased=params.exclude_purchased,
        exclude=frozenset(params.exclude),
        category=params.category,
        in_stock=params.in_stock,
        purchased_within_days=params.purchased_within_days,
    )
    served = recommendations.recommend(query)
    result = served.result
    payload = {
        "user_id": user_id,
        "items": [_item(r) for r in result.items],
        "source": result.source,
        "model_version": served.version,
        "request_id": request.scope["state"]["request_id"],
    }
    if params.include_offer:
        payload["offer"] = await _page_offer(offers, user_id)
    return Response(orjson.dumps(payload), media_type="application/json")


async def _page_offer(offers: OfferEngine, user_id: str) -> dict[str, object] | None:
    """The offer decision to show with the products; recommendations never fail for it."""
    try:
        decision = await run_in_threadpool(offers.offer_for_page, user_id)
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


@router.get("/v1/items/{item_id}/similar", response_model=SimilarOut)
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
