"""A traffic simulator: the Online Retail test window replayed as visits to the live service.

What it proves (issue 14, item 5): the feedback loop works end to end without a real shop. The
service is a real server (``benchmarks.harness.Server``) with a model root and a fresh database;
nothing here calls the service's code in-process.

- **Visits.** The trainer's temporal split (``training.evaluate.temporal_split``, the last
  ``test_days`` = 30 days): every day on which a user known at the cut-off bought something in
  the test window is one visit, in time order. The visit asks ``GET /v1/users/{id}/
  recommendations`` (``exclude_purchased=true``: "new for you" on the home page, the trainer's
  ``novel`` protocol) and posts one ``impression`` per item shown (placement ``home``).
- **The click model** (``ClickModel``). A shown item at position k (0-based) is looked at with
  probability 1 / log2(k + 2) (the discount of NDCG); looked at, it is clicked with probability
  ``p`` if the user really buys it in the test window on that day or later ("relevant"), with
  ``q`` otherwise; a clicked relevant item is bought with probability ``r`` (a ``purchase``
  event with its price), a clicked other item never. Clicks and purchases go through
  ``POST /v1/events`` in batches (feedback first, then the purchases, so that each purchase
  finds its click), drawn from ``numpy.random.default_rng(seed)``: a run repeats (the split
  of users into arms excepted: it hashes the experiment's id, new at every start).
- **An A/B test in the loop** (``ab_test``): two versions in one model root, one current
  (control), an experiment started through ``POST /v1/experiments`` with the other as its
  candidate, share 0.5; ``GET /v1/experiments/{id}`` read every ``check_every`` visits.
- **Visits to detect a difference** (``detection``): the lists the live service showed, their
  click probabilities under the click model, and an arm whose probabilities are ``1 + lift``
  times as high; many seeded replications of random visits, the visits until Newcombe's 95 %
  interval of the CTR difference (``service.offers.stats.uplift``) excludes 0, next to the
  textbook two-proportion sample size; ``live_detection`` asks the same of the live
  service's experiment in a few replications (both arms serve one version, the candidate's
  clicks boosted).

Run ``python -m benchmarks.simulator`` (about 10 minutes on 2 busy cores); it writes
``benchmarks/results/simulator.json``, rendered by ``python -m benchmarks.report``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import numpy.typing as npt

from benchmarks.common import ROOT, WORK, save, this_command
from benchmarks.harness import FRONTEND_KEY, Server, fresh_sqlite
from service.offers.stats import uplift

if TYPE_CHECKING:
    import pandas as pd

    from training.data.formats import Purchases

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
ADMIN_KEY = "bench-simulator-admin-key-0123456789"  # the simulator's servers accept it as admin
MARKETING_KEY = "bench-simulator-marketing-key-0123456789"
PLACEMENT = "home"
LIST_LENGTH = 10
MAX_BATCH = 1000  # POST /v1/events takes at most this many events at once
# the simulator replays hundreds of visits a second: its servers pick up an experiment and run
# the guard every half second, and a check waits for one guard's look (GUARD_WAIT), so that
# the guard looks at least once every ``check_every`` visits
GUARD_SECONDS = 0.5
GUARD_WAIT = 0.6
Z95, Z80 = 1.959964, 0.841621  # two-sided 95 % confidence; 80 % power


# --- the click model ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickModel:
    """How a simulated visitor reacts to a list (see the module docstring).

    Defaults, and why: ``p`` = 0.5, a visitor shown at the top an item they are about to buy
    anyway clicks it one time in two (strong intent, but a list is not the only way to it);
    ``q`` = 0.005, a curiosity click on anything else, which with ``p`` puts the CTR of a good
    list near the 1-2 % of recommendation widgets in shops; ``r`` = 0.5, half of the clicked
    items they buy are bought from the list (the rest elsewhere, unattributed). The position
    discount 1 / log2(k + 2) is NDCG's, so that the expected clicks of a list are ``p`` times
    its DCG plus ``q`` times its length's: online CTR measures what offline NDCG@10 ranks.
    """

    p: float = 0.5
    q: float = 0.005
    r: float = 0.5
    position_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("p", "q", "r"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, not {getattr(self, name)}")

    def examination(self, length: int) -> npt.NDArray[np.float64]:
        """The chance each of ``length`` positions is looked at."""
        if not self.position_bias:
            return np.ones(length)
        return np.asarray(1.0 / np.log2(np.arange(length) + 2.0))

    def click_probabilities(self, relevant: Sequence[bool]) -> npt.NDArray[np.float64]:
        """The click probability of each shown item, from whether the user buys it."""
        flags = np.asarray(relevant, dtype=bool)
        return self.examination(len(flags)) * np.where(flags, self.p, self.q)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "examination": "1 / log2(position + 2)" if self.position_bias else "1",
        }


# --- visits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """One user's day in the test window: they come, are shown a list, react to it."""

    user_id: str
    day: str  # ISO date of the day
    # what the user buys in the test window from this day on: the items they click with p
    later: frozenset[str]


@dataclass(frozen=True)
class Replay:
    """The trainer's temporal split of a purchase history, as training data and visits."""

    train: Purchases  # the purchases up to the cut-off: what both models learn from
    visits: list[Visit]  # the test window's visits of users known at the cut-off, in time order
    cutoff: pd.Timestamp
    end: pd.Timestamp
    prices: dict[str, str]  # item -> median unit price, exact text ("2.95"), GBP


def replay_window(purchases: Purchases, test_days: float = 30.0) -> Replay:
    """Split ``purchases`` as the trainer does (``temporal_split``) into what the models learn
    from and the visits to replay."""
    import pandas as pd

    from training.evaluate import temporal_split

    split = temporal_split(purchases.frame, test_days)
    train = split.train.reset_index(drop=True)
    known_items = set(train["item_id"])
    items = purchases.items[purchases.items["item_id"].isin(known_items)].reset_index(drop=True)
    report = dataclasses.replace(
        purchases.report,
        source=f"{purchases.report.source} up to {split.cutoff:%Y-%m-%d %H:%M}",
        rows_kept=len(train),
        users=int(train["user_id"].nunique()),
        items=len(known_items),
        end=train["timestamp"].iloc[-1],
    )
    test = split.test[split.test["user_id"].isin(set(train["user_id"]))]
    test = test.assign(day=test["timestamp"].dt.normalize())
    first = test.groupby(["user_id", "day"], sort=False)["timestamp"].min().reset_index()
    first = first.sort_values(["timestamp", "user_id"], kind="stable")
    bought: dict[str, list[tuple[pd.Timestamp, str]]] = {}
    for user, day, item in test[["user_id", "day", "item_id"]].itertuples(index=False):
        bought.setdefault(str(user), []).append((pd.Timestamp(day), str(item)))
    visits = [
        Visit(
            user_id=str(user),
            day=f"{day:%Y-%m-%d}",
            later=frozenset(item for when, item in bought[str(user)] if when >= day),
        )
        for user, day in first[["user_id", "day"]].itertuples(index=False)
    ]
    prices = {
        str(item): str(Decimal(str(price)).quantize(Decimal("0.01")))
        for item, price in purchases.items[["item_id", "price"]].itertuples(index=False)
        if price == price and price > 0  # NaN: no price known
    }
    from training.data.formats import Purchases as _Purchases

    return Replay(
        train=_Purchases(frame=train, items=items, report=report),
        visits=visits,
        cutoff=split.cutoff,
        end=split.end,
        prices=prices,
    )


# --- the service over HTTP ------------------------------------------------------------------


class ServiceError(RuntimeError):
    """The service answered a call with an unexpected status (the message has its body)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {body[:600]}")
        self.status = status


class Client:
    """One keep-alive connection to the service, with the frontend and admin keys."""

    def __init__(self, base_url: str, frontend_key: str = FRONTEND_KEY) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.frontend_key = frontend_key
        self.admin_key = ADMIN_KEY
        self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def close(self) -> None:
        self._conn.close()

    def call(
        self, method: str, path: str, body: object = None, *, key: str | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or text) of one request, reconnecting once if the
        kept-alive connection was closed."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-API-Key": key or self.frontend_key}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt == 2:
                    raise
        try:
            decoded: Any = json.loads(raw)
        except ValueError:
            decoded = raw.decode(errors="replace")
        return response.status, decoded

    def ok(self, method: str, path: str, body: object = None, *, key: str | None = None) -> Any:
        """The decoded body of a 2xx answer; ServiceError otherwise."""
        status, decoded = self.call(method, path, body, key=key)
        if not 200 <= status < 300:
            raise ServiceError(method, path, status, json.dumps(decoded, default=str))
        return decoded

    def recommendations(self, user_id: str, limit: int = LIST_LENGTH) -> dict[str, Any]:
        query = urlencode({"limit": limit, "exclude_purchased": "true"})
        result: dict[str, Any] = self.ok("GET", f"/v1/users/{user_id}/recommendations?{query}")
        return result

    def post_events(self, events: Sequence[dict[str, Any]]) -> None:
        for first in range(0, len(events), MAX_BATCH):
            self.ok("POST", "/v1/events", {"events": list(events[first : first + MAX_BATCH])})

    def start_experiment(
        self, name: str, candidate_version: str, share: float = 0.5, **extra: Any
    ) -> dict[str, Any]:
        body = {"name": name, "candidate_version": candidate_version, "share": share, **extra}
        result: dict[str, Any] = self.ok("POST", "/v1/experiments", body, key=self.admin_key)
        return result

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.ok(
            "GET", f"/v1/experiments/{experiment_id}", key=self.admin_key
        )
        return result

    def online_metrics(self, by: str) -> Any:
        return self.ok(
            "GET", f"/v1/analytics/recommendations?{urlencode({'by': by})}", key=self.admin_key
        )


def service_env(model_root: Path, database_url: str) -> dict[str, str]:
    """The server's settings: the model root, the database, the three keys."""
    return {
        "RECOFFER_MODEL_DIR": str(model_root),
        "RECOFFER_DATABASE_URL": database_url,
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_ADMIN_KEYS": ADMIN_KEY,
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_EXPERIMENT_POLL_SECONDS": str(GUARD_SECONDS),
        "RECOFFER_EXPERIMENT_GUARD_SECONDS": str(GUARD_SECONDS),
    }


@contextlib.contextmanager
def live_service(model_root: Path, prefix: str = "simulator") -> Iterator[tuple[Client, str]]:
    """A real server over ``model_root`` and a fresh SQLite database: a client to it and the
    database's URL."""
    with fresh_sqlite(prefix) as url, Server(service_env(model_root, url)) as server:
        client = Client(server.url)
        try:
            yield client, url
        finally:
            client.close()


# --- the loop -------------------------------------------------------------------------------


@dataclass
class ArmTally:
    """What the simulator showed and posted for one arm (or for no experiment)."""

    visits: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    users: set[str] = field(default_factory=set)
    versions: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "visits": self.visits,
            "users": len(self.users),
            "impressions": self.impressions,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "ctr": self.clicks / self.impressions if self.impressions else None,
            "conversion": self.purchases / self.impressions if self.impressions else None,
            "versions": sorted(self.versions),
        }


@dataclass
class LoopResult:
    """A run of visits: the tallies per arm, each shown list's click probabilities per model
    version (for ``detection``), what the check saw, and each visit's answer."""

    arms: dict[str, ArmTally]
    shown: dict[str, list[npt.NDArray[np.float64]]]
    checks: list[dict[str, Any]]
    visits: int
    seconds: float
    stopped_at: int | None = None  # the visit at which ``check`` asked to stop
    # each visit's answer: user_id, model_version, recipe, experiment_id, arm
    answers: list[dict[str, Any]] = field(default_factory=list)


Check = Callable[[int], "dict[str, Any] | None"]


def run_visits(
    client: Client,
    visits: Sequence[Visit],
    clicks: ClickModel,
    *,
    seed: int,
    prices: dict[str, str] | None = None,
    batch_visits: int = 50,
    check: Check | None = None,
    check_every: int = 100,
    boost: dict[str, float] | None = None,
) -> LoopResult:
    """Replay ``visits`` against the service behind ``client`` (see the module docstring).

    Events are posted every ``batch_visits`` visits (the impressions and clicks, then the
    purchases), and before a user's next visit (what they bought is then not shown again).
    ``check(visits_so_far)`` runs after every ``check_every`` visits, once the events are
    posted; what it returns is kept, and a result with ``"stop": True`` ends the run there.
    ``boost`` multiplies the click probabilities of an arm (``live_detection``'s known lift).
    """
    rng = np.random.default_rng(seed)
    boost = boost or {}
    prices = prices or {}
    arms: dict[str, ArmTally] = {}
    shown: dict[str, list[npt.NDArray[np.float64]]] = {}
    checks: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    started = time.perf_counter()
    done = 0
    stopped_at: int | None = None

    pending: set[str] = set()  # users with events not posted yet

    def flush() -> None:
        client.post_events(feedback)
        client.post_events(purchases)
        feedback.clear()
        purchases.clear()
        pending.clear()

    for n, visit in enumerate(visits, start=1):
        if visit.user_id in pending:  # their last visit's events first: they bought since
            flush()
        pending.add(visit.user_id)
        answer = client.recommendations(visit.user_id)
        answers.append(
            {"user_id": visit.user_id}
            | {k: answer.get(k) for k in ("model_version", "recipe", "experiment_id", "arm")}
        )
        arm = str(answer.get("arm") or "none")
        tally = arms.setdefault(arm, ArmTally())
        tally.visits += 1
        tally.users.add(visit.user_id)
        tally.versions.add(str(answer.get("model_version")))
        items = [str(i["item_id"]) for i in answer["items"]]
        request_id = str(answer["request_id"])
        probabilities = clicks.click_probabilities([i in visit.later for i in items])
        probabilities = np.minimum(1.0, probabilities * boost.get(arm, 1.0))
        shown.setdefault(str(answer.get("model_version")), []).append(probabilities)
        clicked = rng.random(len(items)) < probabilities
        bought = rng.random(len(items)) < clicks.r
        if items:  # the list shown: one impression event for the whole list
            feedback.append(
                {
                    "type": "impression",
                    "user_id": visit.user_id,
                    "request_id": request_id,
                    "placement": PLACEMENT,
                    "items": items,
                }
            )
        for position, item in enumerate(items):
            common = {"user_id": visit.user_id, "item_id": item, "request_id": request_id}
            if not clicked[position]:
                continue
            feedback.append({"type": "click", **common, "placement": PLACEMENT})
            tally.clicks += 1
            if item in visit.later and bought[position]:
                purchases.append(_purchase(visit.user_id, item, prices, f"sim{seed}-{n}"))
                tally.purchases += 1
        tally.impressions += len(items)
        done = n
        if n % batch_visits == 0 or len(feedback) > MAX_BATCH - 2 * LIST_LENGTH:
            flush()
        if check is not None and n % check_every == 0:
            flush()
            seen = check(n)
            if seen is not None:
                checks.append({"visits": n, **seen})
                if seen.get("stop"):
                    stopped_at = n
                    break
    flush()
    seconds = time.perf_counter() - started
    return LoopResult(arms, shown, checks, done, seconds, stopped_at, answers)


def _purchase(user_id: str, item_id: str, prices: dict[str, str], order: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "purchase",
        "user_id": user_id,
        "item_id": item_id,
        "order_id": order,
        "quantity": 1,
    }
    price = prices.get(item_id)
    if price is not None:
        event |= {"price": price, "currency": "GBP"}
    return event


# --- experiments ----------------------------------------------------------------------------


def _results(doc: dict[str, Any]) -> dict[str, Any]:
    results = doc.get("results")
    return results if isinstance(results, dict) else {}


def arms_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-arm results of ``GET /v1/experiments/{id}``: {"control": {...}, ...}."""
    arms = _results(doc).get("arms") or {}
    return {str(k): v for k, v in arms.items()}


def difference_of(doc: dict[str, Any], metric: str = "ctr") -> dict[str, Any] | None:
    """The candidate-minus-control difference of ``metric`` (``ctr``, ``conversion``) with its
    interval (``estimate``, ``low``, ``high``), None while an arm has nothing."""
    holder = _results(doc).get(metric)
    diff = holder.get("difference") if isinstance(holder, dict) else None
    return dict(diff) if isinstance(diff, dict) else None


def summary_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures of an experiment's document the simulator keeps at each check."""
    results = _results(doc)
    out: dict[str, Any] = {"status": doc.get("status")}
    for arm, figures in arms_of(doc).items():
        out[arm] = {
            k: figures.get(k) for k in ("impressions", "users", "clicks", "purchases", "ctr")
        }
    for metric in ("ctr", "conversion"):
        out[f"{metric}_difference"] = difference_of(doc, metric)
    guard, srm = results.get("guard") or {}, results.get("srm") or {}
    out["guard"] = {k: guard.get(k) for k in ("ready", "tripped", "reason")}
    out["srm"] = {k: srm.get(k) for k in ("observed_share", "p_value", "mismatch")}
    return out


def excludes_zero(diff: dict[str, Any] | None) -> int:
    """+1 when the interval is above 0, -1 when below, 0 when it holds 0 (or is absent)."""
    if diff is None:
        return 0
    low, high = diff.get("low"), diff.get("high")
    if low is None or high is None:
        return 0
    return 1 if float(low) > 0 else -1 if float(high) < 0 else 0


def is_running(doc: dict[str, Any]) -> bool:
    return str(doc.get("status", "running")) == "running"


def wait_for_experiment(
    client: Client, users: Sequence[str], experiment_id: str, seconds: float = 30.0
) -> None:
    """Until the service serves the experiment (a worker may pick it up a moment later)."""
    deadline = time.monotonic() + seconds
    while True:
        for user in users[:20]:
            if client.recommendations(user).get("experiment_id") == experiment_id:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"experiment {experiment_id} not served after {seconds:g} s")
        time.sleep(0.5)


def ab_test(
    model_root: Path,
    replay: Replay,
    control: str,
    candidate: str,
    clicks: ClickModel,
    *,
    seed: int,
    passes: int = 1,
    check_every: int = 100,
    name: str = "simulator",
) -> dict[str, Any]:
    """One experiment on the live service: ``control`` current, ``candidate`` in the
    experiment at share 0.5; the visits replayed ``passes`` times; the experiment's figures
    every ``check_every`` visits, until the visits end or the experiment stops (the guard)."""
    from service.artifact import ModelStore

    ModelStore(model_root).promote(control)
    visits = list(replay.visits) * passes
    with live_service(model_root, prefix="simulator-ab") as (client, _):
        started = client.start_experiment(name, candidate)
        experiment_id = str(started["id"])
        wait_for_experiment(client, [v.user_id for v in visits], experiment_id)
        first_decided: dict[str, int | None] = {"ctr": None, "conversion": None}
        guard_stopped: list[int] = []

        def check(n: int) -> dict[str, Any]:
            time.sleep(GUARD_WAIT)  # the guard's look at what was just posted
            doc = client.experiment(experiment_id)
            seen = summary_of(doc)
            for metric in first_decided:
                sign = excludes_zero(difference_of(doc, metric))
                if sign and first_decided[metric] is None:
                    first_decided[metric] = n * sign  # negative: candidate worse
            ended = not is_running(doc)
            if ended:
                guard_stopped.append(n)
            return {**seen, "stop": ended}

        loop = run_visits(
            client,
            visits,
            clicks,
            seed=seed,
            prices=replay.prices,
            check=check,
            check_every=check_every,
        )
        final = client.experiment(experiment_id)
        by_version = by_group(client.online_metrics("model_version"), "model_version")
        by_arm = by_group(client.online_metrics("experiment_id,arm"), "experiment_id,arm")
    return {
        "experiment_id": experiment_id,
        "control": control,
        "candidate": candidate,
        "visits": loop.visits,
        "seconds": round(loop.seconds, 1),
        "visits_per_second": round(loop.visits / loop.seconds, 1) if loop.seconds else None,
        "posted": {arm: t.to_dict() for arm, t in loop.arms.items()},
        "ctr_decided_at_visits": first_decided["ctr"],
        "conversion_decided_at_visits": first_decided["conversion"],
        "guard_stopped_at_visits": guard_stopped[0] if guard_stopped else None,
        "checks": loop.checks,
        "final": final,
        "online_by_version": by_version,
        "online_by_arm": by_arm,
        "_shown": loop.shown,
    }


def by_group(doc: dict[str, Any], dimension: str) -> dict[str, dict[str, Any]]:
    """``GET /v1/analytics/recommendations``' groups by one ``dimension``: {value: figures}."""
    out: dict[str, dict[str, Any]] = {}
    for group in doc["groups"]:
        key = "+".join(str(group["group"].get(d)) for d in dimension.split(","))
        out[key] = {
            k: group.get(k)
            for k in ("impressions", "users", "clicks", "purchases", "ctr", "conversion")
        }
    return out


def agreement(
    offline: dict[str, float], online: dict[str, dict[str, Any]], metric: str
) -> dict[str, Any]:
    """Whether the versions' order by online ``metric`` (its estimate) is their order by
    offline NDCG@10 (``offline``: version -> NDCG@10)."""
    versions = [v for v in offline if v in online and online[v].get(metric) is not None]
    by_offline = sorted(versions, key=lambda v: -offline[v])
    by_online = sorted(versions, key=lambda v: -float(online[v][metric]["estimate"]))
    return {
        "offline_order": by_offline,
        "online_order": by_online,
        "agree": by_offline == by_online,
    }


def plain_pass(
    model_root: Path, replay: Replay, version: str, clicks: ClickModel, *, seed: int
) -> dict[str, Any]:
    """The visits replayed once with ``version`` current and no experiment: the lists every
    visit is shown (``detection``'s input) and the online figures they earn."""
    from service.artifact import ModelStore

    ModelStore(model_root).promote(version)
    with live_service(model_root, prefix="simulator-pass") as (client, _):
        loop = run_visits(client, replay.visits, clicks, seed=seed, prices=replay.prices)
        online = by_group(client.online_metrics("model_version"), "model_version")
    return {
        "version": version,
        "visits": loop.visits,
        "seconds": round(loop.seconds, 1),
        "visits_per_second": round(loop.visits / loop.seconds, 1) if loop.seconds else None,
        "posted": {arm: t.to_dict() for arm, t in loop.arms.items()},
        "online": online,
        "_shown": loop.shown,
    }


# --- visits needed to detect a difference --------------------------------------------------


def textbook_visits(
    base_ctr: float, lift: float, impressions_per_visit: float, power: float
) -> dict[str, float]:
    """The two-proportion sample size (two-sided 95 %, ``power``): impressions per arm, and
    the visits (both arms together) that give them."""
    z_beta = {0.5: 0.0, 0.8: Z80}[power]
    p1, p2 = base_ctr, base_ctr * (1 + lift)
    per_arm = (Z95 + z_beta) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p2 - p1) ** 2
    return {"impressions_per_arm": per_arm, "visits": 2 * per_arm / impressions_per_visit}


def detection(
    lists: Sequence[npt.NDArray[np.float64]],
    *,
    lift: float = 0.10,
    replications: int = 200,
    seed: int = 1,
    step: int = 100,
    max_visits: int | None = None,
    users: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Visits until a ``lift`` relative CTR difference is detected at 95 % confidence.

    Each replication draws visits at random (with replacement) from ``lists`` (each shown
    list's click probabilities), puts each in arm A or B with probability 0.5, multiplies B's
    probabilities by ``1 + lift``, draws the clicks, and after every ``step`` visits computes
    Newcombe's 95 % interval of B's CTR minus A's (``service.offers.stats.uplift``). Reported:
    the visits at which it first excludes 0 (looking after every step, as a dashboard does;
    median and spread, and how often it first excluded 0 on the wrong side), and the power at
    a fixed number of visits (the share of replications whose interval at N excludes 0 above
    0): the first N where it reaches 50 % and 80 %, to set beside the textbook formula.

    With ``users`` (the user of each list), each replication puts each *user* in A or B, as
    the service does, instead of each visit: a user's visits then share an arm.
    """
    probs = np.zeros((len(lists), max(len(p) for p in lists)))
    lengths = np.zeros(len(lists))
    for k, p in enumerate(lists):
        probs[k, : len(p)] = p
        lengths[k] = len(p)
    base_ctr = float(probs.sum() / lengths.sum())
    per_visit = float(lengths.mean())
    book = {power: textbook_visits(base_ctr, lift, per_visit, power) for power in (0.5, 0.8)}
    horizon = max_visits or int(math.ceil(book[0.8]["visits"] * 2.5 / step) * step)
    checkpoints = np.arange(step, horizon + 1, step)
    rng = np.random.default_rng(seed)
    codes = None if users is None else np.unique(np.asarray(users), return_inverse=True)[1]
    first: list[int | None] = []
    wrong = 0
    above = np.zeros(len(checkpoints))
    for _ in range(replications):
        pick = rng.integers(len(lists), size=horizon)
        if codes is None:
            in_b = rng.random(horizon) < 0.5
        else:
            in_b = (rng.random(int(codes.max()) + 1) < 0.5)[codes[pick]]
        p = probs[pick] * np.where(in_b, 1 + lift, 1.0)[:, None]
        clicks = (rng.random(p.shape) < p).sum(axis=1)
        imps = lengths[pick]
        cum = {
            "a_clicks": np.cumsum(np.where(in_b, 0, clicks))[checkpoints - 1],
            "a_imps": np.cumsum(np.where(in_b, 0, imps))[checkpoints - 1],
            "b_clicks": np.cumsum(np.where(in_b, clicks, 0))[checkpoints - 1],
            "b_imps": np.cumsum(np.where(in_b, imps, 0))[checkpoints - 1],
        }
        crossed: int | None = None
        for j, n in enumerate(checkpoints):
            diff = uplift(
                int(cum["b_clicks"][j]),
                int(cum["b_imps"][j]),
                int(cum["a_clicks"][j]),
                int(cum["a_imps"][j]),
            )
            if diff is None:
                continue
            if diff.low > 0:
                above[j] += 1
            if crossed is None and (diff.low > 0 or diff.high < 0):
                crossed = int(n)
                wrong += diff.high < 0
        first.append(crossed)
    power = above / replications
    found = sorted(n for n in first if n is not None)

    def first_reaching(share: float) -> int | None:
        hits = np.flatnonzero(power >= share)
        return int(checkpoints[hits[0]]) if len(hits) else None

    def quantile(q: float) -> int | None:
        return found[min(len(found) - 1, int(q * len(found)))] if found else None

    return {
        "lift": lift,
        "assigned": "visit" if users is None else "user",
        "base_ctr": base_ctr,
        "impressions_per_visit": per_visit,
        "lists": len(lists),
        "replications": replications,
        "step": step,
        "horizon": horizon,
        "seed": seed,
        "peeking": {
            "detected": len(found),
            "wrong_side": wrong,
            "median": statistics.median(found) if found else None,
            "p10": quantile(0.1),
            "p25": quantile(0.25),
            "p75": quantile(0.75),
            "p90": quantile(0.9),
        },
        "fixed_horizon": {
            "power_50_at": first_reaching(0.5),
            "power_80_at": first_reaching(0.8),
            "power_at": {
                int(n): round(float(s), 3)
                for n, s in zip(checkpoints, power, strict=True)
                if int(n) % 1000 == 0
            },
        },
        "textbook": {
            "power_50": {k: round(v, 1) for k, v in book[0.5].items()},
            "power_80": {k: round(v, 1) for k, v in book[0.8].items()},
        },
    }


def live_detection(
    model_root: Path,
    replay: Replay,
    version: str,
    clicks: ClickModel,
    *,
    lift: float = 0.10,
    replications: int = 5,
    horizon: int = 20_000,
    step: int = 250,
    seed: int = 1,
    recipe: str | None = None,
) -> dict[str, Any]:
    """``detection``'s question asked of the live service: ``replications`` experiments whose
    two arms serve ``version``, the candidate's click probabilities ``1 + lift`` times the
    control's, ``horizon`` visits drawn at random from the test window each; the experiment's
    own CTR interval (``GET /v1/experiments/{id}``) read every ``step`` visits. No purchases
    are posted (``r`` = 0), so that the users' histories, and so their lists, stay those of
    the test window from one replication to the next."""
    from service.artifact import ModelStore

    ModelStore(model_root).promote(version)
    rng = np.random.default_rng(seed)
    no_purchases = dataclasses.replace(clicks, r=0.0)
    first: list[int | None] = []
    signs: list[list[int]] = []
    ended: list[dict[str, Any]] = []
    with live_service(model_root, prefix="simulator-lift") as (client, _):
        for k in range(replications):
            extra: dict[str, Any] = {} if recipe is None else {"candidate_recipe": recipe}
            started = client.start_experiment(f"simulator-lift-{k}", version, **extra)
            experiment_id = str(started["id"])
            wait_for_experiment(client, [v.user_id for v in replay.visits], experiment_id)
            visits = [replay.visits[int(i)] for i in rng.integers(len(replay.visits), size=horizon)]
            seen: list[int] = []

            def check(
                n: int, experiment_id: str = experiment_id, seen: list[int] = seen
            ) -> dict[str, Any]:
                doc = client.experiment(experiment_id)
                seen.append(excludes_zero(difference_of(doc, "ctr")))
                return {"stop": not is_running(doc)}

            run_visits(
                client,
                visits,
                no_purchases,
                seed=seed + k,
                check=check,
                check_every=step,
                boost={"candidate": 1 + lift},
            )
            final = client.experiment(experiment_id)
            if is_running(final):
                client.ok("POST", f"/v1/experiments/{experiment_id}/stop", {}, key=client.admin_key)
            else:  # the guard (or a change of the current version) ended it
                ended.append(
                    {
                        "replication": k,
                        "after_visits": len(seen) * step,
                        "outcome": {
                            x: (final.get("outcome") or {}).get(x) for x in ("reason", "detail")
                        },
                    }
                )
            crossed = next((j for j, s in enumerate(seen) if s), None)
            first.append(None if crossed is None else (crossed + 1) * step * seen[crossed])
            signs.append(seen)
    checkpoints = [(j + 1) * step for j in range(horizon // step)]
    above = [
        sum(1 for s in signs if j < len(s) and s[j] > 0) / replications
        for j in range(len(checkpoints))
    ]
    return {
        "lift": lift,
        "replications": replications,
        "horizon": horizon,
        "step": step,
        "seed": seed,
        "first_excluded_at": first,  # negative: on the wrong side
        "ended_early": ended,
        "power_at": {
            n: round(a, 3) for n, a in zip(checkpoints, above, strict=True) if n % 2000 == 0
        },
    }


# --- training the two models ---------------------------------------------------------------

# the deliberately worse model: ALS with 2 factors and one iteration, no EASE (see README)
WORSE = {"factors": 2, "iterations": 1, "ease_max_items": 0}


def train_pair(replay: Replay, model_root: Path, threads: int = 0) -> dict[str, dict[str, Any]]:
    """Train the good model (the trainer's defaults) and the worse one (``WORSE``) on the
    training window, both published in ``model_root``: {"good" | "worse": what they are}."""
    from training.models import ModelParams
    from training.pipeline import TrainConfig, run

    out: dict[str, dict[str, Any]] = {}
    for label, params in (
        ("good", ModelParams(threads=threads)),
        ("worse", ModelParams(threads=threads, **WORSE)),  # type: ignore[arg-type]
    ):
        result = run(TrainConfig(model_dir=model_root, params=params, force=True), replay.train)
        out[label] = offline_figures(result.manifest.model_dump(mode="json", by_alias=True))
        out[label]["params"] = {k: v for k, v in params.to_dict().items() if k in WORSE}
    return out


def offline_figures(manifest: dict[str, Any], protocol: str = "novel") -> dict[str, Any]:
    """A version's served candidate under ``protocol`` and its test metrics (the trainer's)."""
    served = manifest["served"][protocol]
    test = manifest["metrics"]["test"][protocol][served]
    return {
        "version": manifest["version"],
        "protocol": protocol,
        "served": served,
        "ndcg@10": test.get("ndcg@10"),
        "recall@10": test.get("recall@10"),
        "hit_rate@10": test.get("hit_rate@10"),
    }


# --- the benchmark --------------------------------------------------------------------------


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--passes", type=int, default=2, help="Replays of the test window.")
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--replications", type=int, default=300)
    parser.add_argument("--lift", type=float, default=0.10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--live-replications", type=int, default=5)
    parser.add_argument("--live-step", type=int, default=250)
    args = parser.parse_args()

    from training.data.formats import load_purchases

    clicks = ClickModel()
    replay = replay_window(load_purchases(args.data, "online-retail"))
    root = WORK / "simulator-models"
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    models = train_pair(replay, root, args.threads)
    good, worse = models["good"]["version"], models["worse"]["version"]
    baseline = plain_pass(root, replay, good, clicks, seed=args.seed)
    print("baseline", json.dumps(_strip(baseline)["posted"]), flush=True)
    runs: dict[str, dict[str, Any]] = {}
    for label, control, candidate in (
        ("worse_candidate", good, worse),
        ("better_candidate", worse, good),
    ):
        runs[label] = ab_test(
            root,
            replay,
            control,
            candidate,
            clicks,
            seed=args.seed,
            passes=args.passes,
            check_every=args.check_every,
            name=f"simulator-{label}",
        )
        print(label, json.dumps(_strip(runs[label])["posted"]), flush=True)
    offline = {models[k]["version"]: models[k]["ndcg@10"] for k in models}
    for run in runs.values():
        run["agreement"] = {
            metric: agreement(offline, run["online_by_version"], metric)
            for metric in ("ctr", "conversion")
        }
    # target 3: the lists the good model showed to every visit, without an experiment
    lists = baseline["_shown"][good]
    target = detection(lists, lift=args.lift, replications=args.replications, seed=args.seed)
    print(json.dumps(target["fixed_horizon"]), json.dumps(target["peeking"]), flush=True)
    by_user = detection(
        lists,
        lift=args.lift,
        replications=args.replications,
        seed=args.seed,
        users=[v.user_id for v in replay.visits],
    )
    print(json.dumps(by_user["fixed_horizon"]), json.dumps(by_user["peeking"]), flush=True)
    live: dict[str, Any] | None = None
    if args.live_replications:
        horizon = int(math.ceil(target["textbook"]["power_80"]["visits"] * 1.2 / 1000) * 1000)
        live = live_detection(
            root,
            replay,
            good,
            clicks,
            lift=args.lift,
            replications=args.live_replications,
            horizon=horizon,
            step=args.live_step,
            seed=args.seed,
            recipe=models["good"]["served"],
        )
        print(json.dumps(live), flush=True)
    save(
        "simulator",
        this_command(),
        {
            "data": {
                "cutoff": str(replay.cutoff),
                "end": str(replay.end),
                "visits": len(replay.visits),
                "users": len({v.user_id for v in replay.visits}),
                "training_rows": len(replay.train.frame),
            },
            "click_model": clicks.to_dict(),
            "models": models,
            "baseline": _strip(baseline),
            "runs": {k: _strip(v) for k, v in runs.items()},
            "detection": target,
            "detection_by_user": by_user,
            "live_detection": live,
        },
    )
    print(json.dumps(target, indent=2))


# --- docs/benchmarks.md ---------------------------------------------------------------------


def render(doc: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md."""
    from benchmarks.report import _header

    out = ["## Traffic simulator: an A/B test of two models on the live service", ""]
    out += _header(doc)
    d, c, m = doc["data"], doc["click_model"], doc["models"]
    out += [
        f"Online Retail's test window ({d['cutoff'][:10]} to {d['end'][:10]}, the trainer's "
        f"split): {d['visits']:,} visits (a day on which a user known at the cut-off bought) of "
        f"{d['users']:,} users, each shown 10 items (`exclude_purchased=true`) by a real server. "
        f'Click model (README "Traffic simulator"): position k looked at with '
        f"{c['examination']}, then clicked with p = {c['p']} if the user buys the item that day "
        f"or later in the window, q = {c['q']} otherwise; a clicked item they buy is bought "
        f"from the list with r = {c['r']}. Both models learnt from the "
        f"{d['training_rows']:,} purchase lines before the cut-off; offline figures are the "
        "manifests' (the trainer's own test window, the 30 days before the cut-off, `novel`).",
        "",
        "| model | version | params | served (novel) | offline NDCG@10 | recall@10 |",
        "|---|---|---|---|---:|---:|",
    ]
    for label in ("good", "worse"):
        f = m[label]
        params = ", ".join(f"{k} {v}" for k, v in f["params"].items())
        out.append(
            f"| {label} | `{f['version']}` | {params} | {f['served']} | {f['ndcg@10']:.4f} | "
            f"{f['recall@10']:.4f} |"
        )
    base = doc.get("baseline")
    if base:
        t = next(iter(base["posted"].values()))
        out += [
            "",
            f"Without an experiment, the good model over the whole window: {t['impressions']:,} "
            f"impressions, CTR {_pct(t['ctr'])}, {t['purchases']:,} attributed purchases "
            f"({_pct(t['conversion'])} of impressions); {base['visits_per_second']:,} visits a "
            "second (recommendations, impressions, clicks and purchases posted in batches of 50 "
            "visits).",
        ]
    out += [
        "",
        "| run | arm | model | visits | users | impressions | clicks | CTR | purchases | "
        "purchases / impression |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {m["good"]["version"]: "good", m["worse"]["version"]: "worse"}
    for label, run in doc["runs"].items():
        for arm, t in run["posted"].items():
            model = ", ".join(names.get(v, v) for v in t["versions"])
            out.append(
                f"| {label} | {arm} | {model} | {t['visits']:,} | {t['users']:,} | "
                f"{t['impressions']:,} | {t['clicks']:,} | {_pct(t['ctr'])} | "
                f"{t['purchases']:,} | {_pct(t['conversion'])} |"
            )
    out.append("")
    for label, run in doc["runs"].items():
        final = run["final"]
        results = final.get("results") or {}
        diff = (results.get("ctr") or {}).get("difference")
        outcome = final.get("outcome") or {}
        agree = run.get("agreement", {})
        out.append(
            f"- **{label}** (control {names[run['control']]}, candidate "
            f"{names[run['candidate']]}; {run['visits']:,} visits, "
            f"{run['visits'] / d['visits']:.2f} passes of the window): the CTR difference's "
            "95 % interval was without 0 "
            f"first at the check after {_visits(run['ctr_decided_at_visits'])}, "
            f"{_from(settled(run['checks'], 'ctr'))}; conversion's first after "
            f"{_visits(run['conversion_decided_at_visits'])}, "
            f"{_from(settled(run['checks'], 'conversion'))}; experiment "
            f"{final.get('status')}"
            + (f" by the {outcome.get('reason')} ({outcome.get('detail')})" if outcome else "")
            + (
                f" after {run['guard_stopped_at_visits']:,} visits"
                if run["guard_stopped_at_visits"]
                else ""
            )
            + (
                f"; CTR difference {diff['estimate']:+.4f} [{diff['low']:+.4f}, "
                f"{diff['high']:+.4f}]"
                if diff
                else ""
            )
            + "; online order = offline NDCG@10 order: "
            + ", ".join(f"{k} {'yes' if v['agree'] else 'no'}" for k, v in agree.items())
            + "."
        )
    t = doc["detection"]
    pk, fx, bk = t["peeking"], t["fixed_horizon"], t["textbook"]
    out += [
        "",
        f"**Target: visits to detect a {t['lift']:.0%} relative CTR difference at 95 % "
        f"confidence.** Arm B's click probabilities {1 + t['lift']:g} times arm A's, on the "
        f"good model's {t['lists']:,} lists above (base CTR {_pct(t['base_ctr'])}, "
        f"{t['impressions_per_visit']:.0f} impressions a visit), each visit in A or B at "
        f"random; {t['replications']} seeded replications of up to {t['horizon']:,} visits, "
        f"Newcombe's interval every {t['step']} visits:",
        "",
        f"- at a fixed number of visits (decided in advance): 50 % power at "
        f"{_visits(fx['power_50_at'])}, **80 % power at {_visits(fx['power_80_at'])}**;",
        f"- textbook two-proportion formula for the same CTRs: "
        f"{_visits(bk['power_50']['visits'])} (50 % power), "
        f"{_visits(bk['power_80']['visits'])} (80 %; "
        f"{bk['power_80']['impressions_per_arm']:,.0f} impressions per arm);",
        f"- looking after every {t['step']} visits and stopping at the first interval without "
        f"0: a median of {_visits(pk['median'])} (p10 {_visits(pk['p10'])}, p90 "
        f"{_visits(pk['p90'])}), but {pk['wrong_side']} of {t['replications']} replications "
        "stopped on the wrong side: peeking decides early and wrongly, so fix the visits in "
        "advance.",
    ]
    u = doc.get("detection_by_user")
    if u:
        ufx, upk = u["fixed_horizon"], u["peeking"]
        out.append(
            f"- the same with each *user* in A or B, as the service assigns arms (the window's "
            f"{d['users']:,} users come back, each in one arm): 50 % power at "
            f"{_visits(ufx['power_50_at'])}, 80 % "
            + (
                f"at {_visits(ufx['power_80_at'])}"
                if ufx["power_80_at"]
                else f"not within {u['horizon']:,} visits (power levels off at "
                f"{list(ufx['power_at'].values())[-1]:.0%})"
            )
            + "; stopping at "
            f"the first interval without 0, {upk['wrong_side']} of {u['replications']} on the "
            "wrong side. Users differ far more in CTR than impressions do, so which users a "
            "split puts in B moves B's CTR as much as the lift: per-impression intervals are too "
            "narrow when few users come back often."
        )
    live = doc.get("live_detection")
    if live:
        firsts = live["first_excluded_at"]
        out += [
            f"- through the live service's experiment ({live['replications']} replications, "
            f"both arms serving the good model, the candidate's clicks x{1 + live['lift']:g}, "
            f"{live['horizon']:,} visits drawn from the window each, "
            f"`GET /v1/experiments/{{id}}` every {live['step']} visits): its CTR interval "
            "first excluded 0 after "
            + ", ".join(_visits(f) if f is not None else "never" for f in firsts)
            + "; share of replications excluding 0 above 0: "
            + ", ".join(f"{v:.0%} at {int(n):,}" for n, v in live["power_at"].items())
            + "."
            + "".join(
                f" The guard stopped replication {e['replication'] + 1} after "
                f"{e['after_visits']:,} visits ({e['outcome']['detail']}), though its "
                "candidate's clicks were boosted: a false stop of the user-split kind above."
                for e in live.get("ended_early", [])
                if e["outcome"].get("reason") == "guard"
            ),
        ]
    out.append("")
    return out


def settled(checks: Sequence[dict[str, Any]], metric: str = "ctr") -> int | None:
    """The visits from whose check on every check's ``metric`` interval excluded 0 on the
    side of the last one (negative: candidate worse); None when the last one held 0."""
    signs = [(int(c["visits"]), excludes_zero(c.get(f"{metric}_difference"))) for c in checks]
    if not signs or signs[-1][1] == 0:
        return None
    side, since = signs[-1][1], signs[-1][0]
    for visits, sign in reversed(signs):
        if sign != side:
            break
        since = visits
    return since * side


def _from(since: int | None) -> str:
    if since is None:
        return "not at every check to the end"
    return f"and at every check from {_visits(since)} on"


def _short(version: str) -> str:
    return f"`{version[-4:]}`"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _visits(value: float | None) -> str:
    if value is None:
        return "no check (within the run)"
    if value < 0:
        return f"{-value:,.0f} visits (candidate worse)"
    return f"{value:,.0f} visits"


if __name__ == "__main__":
    main()
