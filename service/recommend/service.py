"""The one place that joins the served model, this worker's recent activity and the clock.

Routes and the offer engine ask ``Recommendations``; nothing else assembles "model + recent
events + catalogue + now". Without a model it answers from the event log's purchases, with
the same filters as the model would apply.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from service.activity.records import Activity, CatalogueEntry
from service.activity.sessions import RedisSessions
from service.activity.store import ActivityStore
from service.clock import SECONDS_PER_DAY, Clock
from service.errors import ModelUnavailable
from service.experiments.arms import CANDIDATE
from service.feedback.token import ListIds, ServedList
from service.health import without_paths
from service.metrics import Metrics
from service.privacy.tombstones import Tombstones
from service.recommend.arrivals import ArrivalIndex, NewArrivals
from service.recommend.holder import LoadOutcome, ModelHolder
from service.recommend.recommender import Query, Recommendation, Recommender, Result

log = logging.getLogger(__name__)
NO_MODEL = "no model has been trained yet; run `recoffer train`"
# who an erased user is asked as: an id the API's alphabet refuses, so in no model's index
ANONYMOUS = ""
Arm = tuple[str | None, str | None]  # (experiment id, arm), or NO_ARM
NO_ARM: Arm = (None, None)


@dataclass(slots=True)
class Served:
    """A list and what made it: the model version (None: from the event log, no model yet),
    the recipe, and the experiment's arm when one is running (issue 14, item 3)."""

    result: Result
    version: str | None
    recipe: str = "all"
    experiment_id: str | None = None
    arm: str | None = None

    def described(self, served_at: datetime) -> ServedList:
        """What the list's signed id carries (``service.feedback.token``)."""
        return ServedList(
            request_id="",
            model_version=self.version,
            recipe=self.recipe,
            sources=tuple(r.source for r in self.result.items),
            served_at=served_at,
            experiment_id=self.experiment_id,
            arm=self.arm,
        )


@dataclass(frozen=True)
class ModelDescription:
    """What ``GET /v1/model`` shows about the model being served."""

    version: str
    trained_at: str
    data_until: str
    loaded_at: datetime
    served: dict[str, str]
    metrics: dict[str, Any]
    counts: dict[str, Any]
    signals: dict[str, Any] | None
    candidates_precomputed: bool


class Recommendations:
    """Recommendations, similar items and rankings for this worker's current model."""

    def __init__(
        self,
        models: ModelHolder,
        activity: ActivityStore,
        clock: Clock,
        metrics: Metrics,
        *,
        erased: Tombstones | None = None,
        arrivals: NewArrivals | None = None,
        sessions: RedisSessions | None = None,
    ) -> None:
        self.models = models
        self.activity = activity
        # users' recent events in Redis, shared by the replicas (issue 15, item 5); None: this
        # worker's ActivityStore holds them
        self.sessions = sessions
        self.clock = clock
        self.metrics = metrics
        self.erased = erased if erased is not None else Tombstones()
        # each list's signed id, under a key derived from the installation's (issue 14)
        self.list_ids = ListIds(lambda: self.erased.key)
        # products the model does not know, and the new_arrivals source (issue 14, item 4)
        self.arrivals = arrivals

    def _personal(
        self, user_id: str, recent: Sequence[Activity] | None = None
    ) -> tuple[str, Sequence[Activity]]:
        """The id to look up and the recent events to use: none of either for an erased user,
        whatever model version is served (their id may still be in its index).

        ``recent``: the events already read (``session``, on the event loop); otherwise read
        here, from Redis when configured (blocking: callers in threads) or this worker's store.
        """
        if self.erased.is_erased(user_id):
            return ANONYMOUS, ()
        if recent is not None:
            return user_id, recent
        if self.sessions is not None:
            return user_id, self.sessions.recent(user_id)
        return user_id, self.activity.recent(user_id)

    async def session(self, user_id: str) -> Sequence[Activity] | None:
        """The user's recent events read on the event loop (Redis), for ``recommend``'s
        ``recent``; None without Redis (``recommend`` reads this worker's store itself)."""
        if self.sessions is None or self.erased.is_erased(user_id):
            return None
        return await self.sessions.arecent(user_id)

    def _arm(self, user_id: str, protocol: str) -> tuple[Recommender | None, str, Arm]:
        """The model serving ``user_id``, the recipe's label, and the experiment's arm.

        During an experiment (issue 14, item 3) every user is in one arm, by a hash of the
        experiment and the user (``experiments.arms.arm_of``); outside one, or while the
        registry's current version is no longer the experiment's control (a trainer or a
        rollback switched it; the background loop then stops the experiment), the current
        model serves everyone, with no arm.
        """
        current = self.models.current
        arms = self.models.experiment
        if arms is None or current is None or current.model.version != arms.control_version:
            return current, protocol, NO_ARM
        arm = arms.arm_of(user_id)  # remembered per worker
        model = arms.candidate if arm == CANDIDATE else arms.control or current
        return model, arms.recipe_label(arm, protocol), (arms.experiment_id, arm)

    def recommend(self, query: Query, recent: Sequence[Activity] | None = None) -> Served:
        """The ranked list for ``query``, counted by where it came from; ``recent``: the
        user's events as ``session`` read them (None: read here)."""
        protocol = "novel" if query.exclude_purchased else "all"
        # the arm follows the shop's user id, erased or not (it says nothing about them)
        recommender, recipe, (experiment_id, arm) = self._arm(query.user_id, protocol)
        user_id, recent = self._personal(query.user_id, recent)
        if user_id != query.user_id:
            query = replace(query, user_id=user_id)
        if recommender is None:
            served = Served(self._from_event_log(query, recent), None, protocol)
        else:
            result = recommender.recommend(
                query,
                recent,
                self.activity.catalogue,
                now=self.clock(),
                hidden=self.activity.unservable,
                arrivals=self._arrivals(recommender.model.version, experiment=arm is not None),
            )
            served = Served(result, recommender.model.version, recipe, experiment_id, arm)
        self.metrics.recommendations.labels(served.result.source).inc()
        return served

    def similar(self, item_id: str, limit: int, exclude: Iterable[str]) -> Served:
        """Items whose vectors point like this one's (UnknownItem for an item not in the model).

        Always from the current model, experiment or not: the list belongs to an item, not a
        user, so it has no arm (and counts for neither).
        """
        recommender = self.models.current
        if recommender is None:
            raise ModelUnavailable(NO_MODEL)
        items = recommender.similar(item_id, limit, [*exclude, *self.activity.unservable])
        return Served(Result(items=items, source="model"), recommender.model.version)

    def rank(
        self, user_id: str, item_ids: Sequence[str], recent: Sequence[Activity] | None = None
    ) -> list[str]:
        """``item_ids`` by how likely the user is to buy each (given order without a model).

        During an experiment, by the model of the user's arm, as their lists are (an offer's
        coupon products then come from the same model as the user's recommendations). Hidden
        or out-of-stock items are left out: never a coupon's product. ``recent``: the user's
        session when the caller read it already (not read again from Redis).
        """
        recommender, _, _ = self._arm(user_id, "all")
        unservable = self.activity.unservable
        item_ids = [i for i in item_ids if i not in unservable]
        if recommender is None:
            return item_ids
        user_id, recent = self._personal(user_id, recent)
        return recommender.rank(user_id, item_ids, recent, self.clock())

    def top_items(
        self, user_id: str, n: int, recent: Sequence[Activity] | None = None
    ) -> list[str]:
        """The ``n`` products the model ranks highest for the user in the whole catalogue
        (the event log's best sellers without a model); not counted as a recommendation.

        A lifecycle campaign's coupon is restricted to them (issue 12, item 2). During an
        experiment, the model of the user's arm ranks them, as in ``rank``. ``recent``: the
        user's session when the caller read it already (not read again from Redis).
        """
        recommender, _, _ = self._arm(user_id, "all")
        query = Query(user_id=user_id, limit=n)
        user, recent = self._personal(user_id, recent)
        if user != user_id:
            query = replace(query, user_id=user)
        if recommender is None:
            return [r.item_id for r in self._from_event_log(query, recent).items]
        result = recommender.recommend(
            query,
            recent,
            self.activity.catalogue,
            now=self.clock(),
            hidden=self.activity.unservable,
        )
        return [r.item_id for r in result.items]

    def _arrivals(self, version: str, *, experiment: bool = False) -> ArrivalIndex | None:
        """The new products' index for ``version`` (None: the source is off or rebuilding).

        ``experiment``: the list is an A/B test arm's. New products are indexed for the current
        version only, so while the candidate arm is another version neither arm gets them: both
        arms are compared on the same terms.
        """
        if self.arrivals is None:
            return None
        arms = self.models.experiment
        if experiment and arms is not None and arms.candidate_version != arms.control_version:
            return None
        return self.arrivals.for_version(version)

    def public(self, text: str) -> str:
        """A load error as a caller may see it: no absolute path of this machine."""
        return without_paths(text, self.models.store.root)

    def reload(self) -> LoadOutcome:
        """Load the registry's current version now, even one that failed before; counted."""
        outcome = self.models.refresh(force=True)
        self.loaded(outcome)
        return outcome

    def loaded(self, outcome: LoadOutcome) -> None:
        """Count a load (or an experiment's candidate adopted as current) and, when the
        served model changed, build the new products' vectors for it."""
        self.metrics.model_load(outcome)
        if outcome.changed and self.arrivals is not None:  # the new products, for this model
            try:
                self.arrivals.rebuild()
            except Exception:  # the model is served; its new arrivals come with the next refresh
                log.warning("new_items_rebuild_failed", exc_info=True)

    def describe(self) -> ModelDescription:
        """The served model's version, training time and test figures."""
        recommender = self.models.current
        if recommender is None:
            if self.models.last_error is None:
                raise ModelUnavailable("no model has been trained yet")
            raise ModelUnavailable(self.public(self.models.last_error))
        model = recommender.model
        manifest = model.artifact.manifest
        return ModelDescription(
            version=model.version,
            trained_at=manifest.created_at.isoformat(),
            data_until=manifest.reference_time.isoformat(),
            loaded_at=datetime.fromtimestamp(model.loaded_at, UTC),
            served=manifest.served,
            metrics=manifest.metrics.test,
            counts=manifest.counts.model_dump(exclude_none=True),
            signals=None if manifest.signals is None else manifest.signals.model_dump(mode="json"),
            candidates_precomputed=bool(model.candidates),
        )

    def _from_event_log(self, query: Query, recent: Sequence[Activity]) -> Result:
        """No model yet: the items most bought in the event log, under the query's filters.

        ModelUnavailable while the log has no purchase at all; filters that leave nothing give
        an empty list, as they would on a model's list.
        """
        if not self.activity.purchases:
            raise ModelUnavailable(
                "no model has been trained yet and no purchases have been recorded; "
                "run `recoffer train` (events are still accepted)"
            )
        ranked = popular_from_events(
            query, recent, self.activity.catalogue, self.activity.purchases, self.clock()
        )
        return Result(
            items=[
                Recommendation(item, float(len(ranked) - rank), "popular", "popular")
                for rank, item in enumerate(ranked)
            ],
            source="popular",
        )


def popular_from_events(
    query: Query,
    recent: Sequence[Activity],
    catalogue: Mapping[str, CatalogueEntry],
    purchases: Counter[str],
    now: datetime,
) -> list[str]:
    """Item ids by buyers in the event log, filtered as the model's lists are.

    Parameters:
        query: the request; every filter applies (exclude, category, in stock: only items the
            catalogue says are in stock, purchased by this user, bought within the last N
            days). Items hidden, deleted or out of stock are never listed.
        recent: this user's recent events (what they bought).
        catalogue: the shop's item updates (category, stock).
        purchases: buyers per item id in the event log.
        now: the moment "the last N days" count back from.
    Returns at most ``query.limit`` item ids, most bought first.
    """
    bought = [a for a in recent if a.type == "purchase"]
    wanted: set[str] | None = None
    if query.purchased_within_days is not None:  # replenishment: only what they bought lately
        horizon = query.purchased_within_days * SECONDS_PER_DAY
        wanted = {a.item_id for a in bought if (now - a.ts).total_seconds() <= horizon}
    banned = set(query.exclude)
    if query.exclude_purchased:
        banned |= {a.item_id for a in bought}
    ranked: list[str] = []
    for item, _ in purchases.most_common():
        if item in banned or (wanted is not None and item not in wanted):
            continue
        entry = catalogue.get(item)
        if entry is not None and not entry.servable:  # hidden, deleted, out of stock: never
            continue
        if query.in_stock and (entry is None or entry.in_stock is not True):
            continue
        if query.category is not None and (entry is None or entry.category != query.category):
            continue
        ranked.append(item)
        if len(ranked) == query.limit:
            break
    return ranked
