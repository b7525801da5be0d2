"""Recommendations for a user, and items similar to an item."""

from __future__ import annotations

import logging
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import AppState, FrontendState, require
from service.api.fastpath import openapi_parameters, parse_request
from service.api.routes.offers import decision_out
from service.api.schemas import Id, RecommendationParams, RecommendationsOut, SimilarOut
from service.errors import ModelUnavailable
from service.recommender import Query as RecQuery
from service.recommender import Recommendation, Result

log = logging.getLogger(__name__)
router = APIRouter(tags=["recommendations"])


FRONTEND = require("frontend")
PATH = "/v1/users/{user_id}/recommendations"


@router.get(
    PATH,
    response_model=RecommendationsOut,
    openapi_extra={"parameters": openapi_parameters(RecommendationParams, ("user_id",))},
)
async def recommendations(request: Request) -> Response:
    """Personalised products for one user, with a reason for each (API key: frontend)."""
    # the hot path: key check and one validation inline, no FastAPI parameter resolution
    state = await FRONTEND(request)
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
    recommender = state.models.current
    if recommender is None:
        result = _from_event_log(state, query)
        version = None
    else:
        result = recommender.recommend(
            query, state.activity.recent(user_id), state.activity.catalogue, now=state.clock()
        )
        version = recommender.model.version
    state.metrics.recommendations.labels(result.source).inc()
    payload = {
        "user_id": user_id,
        "items": [_item(r) for r in result.items],
        "source": result.source,
        "model_version": version,
        "request_id": request.scope["state"]["request_id"],
    }
    if params.include_offer:
        payload["offer"] = await _page_offer(state, user_id)
    return Response(orjson.dumps(payload), media_type="application/json")


async def _page_offer(state: AppState, user_id: str) -> dict[str, object] | None:
    """The offer decision to show with the products; recommendations never fail for it."""
    try:
        decision = await run_in_threadpool(state.offers.offer_for_page, user_id)
    except SQLAlchemyError as exc:
        log.warning("offer_lookup_failed", extra={"error": str(exc).splitlines()[0]})
        return None
    if decision is None:
        return None
    return decision_out(decision, state.offers).model_dump(mode="json")


def _item(r: Recommendation) -> dict[str, object]:
    return {
        "item_id": r.item_id,
        "score": round(r.score, 6),
        "reason": r.reason,
        "source": r.source,
    }


def _from_event_log(state: AppState, query: RecQuery) -> Result:
    """No model yet: the most purchased items in the event log."""
    ranked = [
        item
        for item, _ in state.activity.purchases.most_common()
        if item not in query.exclude
        and (
            query.category is None
            or getattr(state.activity.catalogue.get(item), "category", None) == query.category
        )
    ][: query.limit]
    if not ranked:
        raise ModelUnavailable(
            "no model has been trained yet and no purchases have been recorded; "
            "run `recoffer train` (events are still accepted)"
        )
    return Result(
        items=[
            Recommendation(item, float(len(ranked) - rank), "popular", "popular")
            for rank, item in enumerate(ranked)
        ],
        source="popular",
    )


@router.get("/v1/items/{item_id}/similar", response_model=SimilarOut)
async def similar(
    request: Request,
    item_id: Annotated[Id, Path(description="The shop's item id.", examples=["85123A"])],
    state: FrontendState,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    exclude: Annotated[list[Id] | None, Query(max_length=100)] = None,
) -> Response:
    """Items bought by the same kind of customer as this one (404 for an unknown item)."""
    recommender = state.models.current
    if recommender is None:
        raise ModelUnavailable("no model has been trained yet; run `recoffer train`")
    items = recommender.similar(item_id, limit, exclude or ())
    payload = {
        "item_id": item_id,
        "items": [_item(r) for r in items],
        "model_version": recommender.model.version,
        "request_id": request.scope["state"]["request_id"],
    }
    return Response(orjson.dumps(payload), media_type="application/json")
