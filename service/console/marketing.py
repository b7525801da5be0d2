"""Marketing's pages: campaigns and their results, segments, loyalty metrics and cohorts.

Every figure comes from the domain objects the API answers from (``CampaignStore``,
``Reports``, ``Segments``, ``Analytics``) and a campaign is created and changed through
``CampaignStore`` with ``Campaign``'s validation, as ``/v1/campaigns`` does; the only reads of
their own are the campaigns' results per day (``offers.history``) and the segment runs.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from service.analytics.orders import SEGMENTS as REPORT_SEGMENTS
from service.analytics.service import Analytics
from service.api.schemas import CohortsOut, CustomerValueSummaryOut, LoyaltyOut
from service.charts import Series, bar_chart, heat_table, line_chart, percent, plain
from service.console import campaign_form as cf
from service.console.figures import FiguresCache
from service.console.sessions import Session
from service.console.web import allowed, checked_form, page, state_of
from service.errors import InvalidInput, RecofferError, UnknownCampaign, kind_of
from service.offers.audience import SEGMENTS
from service.offers.campaigns import Campaign
from service.offers.history import CampaignHistory, History
from service.offers.reports import CampaignStats
from service.offers.repository.history import HistoryRepository
from service.offers.stats import Interval
from service.offers.store import CampaignView
from service.segments.rules import STAGES, TYPES
from service.state import AppState

router = APIRouter(prefix="/console", include_in_schema=False)
Marketing = Annotated[Session, Depends(allowed("marketing"))]
TOP_CUSTOMERS = 20  # on the customer value page
T = TypeVar("T")
SEGMENT_RUNS = 60  # segment runs drawn at most (the latest)
NOTICES = {
    "created": "the campaign was created and is active.",
    "saved": "the changes were saved (a new version).",
    "unchanged": "nothing was changed.",
    "paused": "the campaign is paused: it decides nothing until resumed.",
    "resumed": "the campaign decides again.",
    "archived": "the campaign is archived for good.",
}


def actor_of(request: Request, session: Session) -> str:
    """Who made a change, as the API records it: the key's role and fingerprint."""
    if state_of(request).settings.auth_disabled:
        return "development"
    return f"{session.role}:{session.key_digest[:12]}"


def _problem(request: Request, session: Session, exc: RecofferError) -> HTMLResponse:
    kind = kind_of(exc)
    title = "Not found" if kind.status == 404 else "Refused"
    return page(
        request,
        "problem.html",
        session,
        title=title,
        status=kind.status,
        problem=kind.public or str(exc),
    )


async def _call(call: Callable[[], T]) -> T:
    return await run_in_threadpool(call)


# --- figures -----------------------------------------------------------------------------


def _pct(value: Interval | None) -> str:
    return "no figure" if value is None else percent(value.estimate)


def _interval(value: Interval | None) -> str:
    if value is None:
        return "no figure yet"
    return (
        f"{percent(value.estimate)} (95 % interval {percent(value.low)} to {percent(value.high)})"
    )


def key_figures(stats: CampaignStats) -> list[tuple[str, str]]:
    """The stats' headline figures, in words, exactly as the API's JSON has them."""
    out = [
        ("Eligible (decided)", f"{stats.eligible:,}"),
        ("Coupons issued", f"{stats.coupons['issued']:,}"),
        ("Held out", f"{stats.decisions.get('holdout', 0):,}"),
        ("Redeemed", f"{stats.coupons['redeemed']:,}"),
        ("Expired unused", f"{stats.coupons['expired']:,}"),
        (
            "Conversion, treated",
            f"{_pct(stats.conversion['treated'])} "
            f"({stats.converted['treated']:,} of {stats.coupons['issued']:,} bought)",
        ),
        (
            "Conversion, holdout",
            f"{_pct(stats.conversion['holdout'])} "
            f"({stats.converted['holdout']:,} of {stats.decisions.get('holdout', 0):,} bought)",
        ),
        ("Uplift", _interval(stats.uplift)),
    ]
    for currency, amount in sorted(stats.discount_given.get("total", {}).items()):
        out.append((f"Discount given, {currency}", str(amount)))
    for currency, r in sorted(stats.revenue.items()):
        if r.incremental is not None:
            i = r.incremental
            out.append((f"Incremental revenue, {currency}", f"{i.estimate} ({i.low} to {i.high})"))
    return out


def results_charts(history: CampaignHistory) -> list[str]:
    """The charts of a campaign's results over time (cumulative, by UTC day)."""
    days = history.days
    labels = [d.day[5:] if len(days) < 400 else d.day for d in days]
    charts = [
        line_chart(
            labels,
            [
                Series("Issued", [d.decided.get("issued", 0) for d in days]),
                Series("Held out", [d.decided.get("holdout", 0) for d in days]),
                Series("Redeemed", [d.redeemed for d in days]),
                Series("Expired unused", [d.expired for d in days]),
            ],
            title="Coupons (cumulative)",
        ),
        line_chart(
            labels,
            [
                Series(
                    "Treated",
                    [None if (c := d.conversion["treated"]) is None else c.estimate for d in days],
                ),
                Series(
                    "Holdout",
                    [None if (c := d.conversion["holdout"]) is None else c.estimate for d in days],
                ),
            ],
            title="Conversion of treated and held-out users (cumulative)",
            fmt=percent,
        ),
        line_chart(
            labels,
            [
                Series("Uplift", [None if d.uplift is None else d.uplift.estimate for d in days]),
                Series(
                    "95 % interval, low", [None if d.uplift is None else d.uplift.low for d in days]
                ),
                Series(
                    "95 % interval, high",
                    [None if d.uplift is None else d.uplift.high for d in days],
                ),
            ],
            title="Uplift, treated minus holdout conversion, with its interval (cumulative)",
            fmt=percent,
        ),
    ]
    for currency in history.currencies:
        charts.append(
            line_chart(
                labels,
                [Series(currency, [float(d.spent.get(currency, Decimal(0))) for d in days])],
                title=f"Budget spent: discount given in {currency} (cumulative)",
            )
        )
        incremental = [
            None
            if (r := d.revenue.get(currency)) is None or r.incremental is None
            else r.incremental
            for d in days
        ]
        charts.append(
            line_chart(
                labels,
                [
                    Series(
                        "Incremental",
                        [None if i is None else float(i.estimate) for i in incremental],
                    ),
                    Series(
                        "95 % interval, low",
                        [None if i is None else float(i.low) for i in incremental],
                    ),
                    Series(
                        "95 % interval, high",
                        [None if i is None else float(i.high) for i in incremental],
                    ),
                ],
                title=f"Incremental revenue in {currency} (cumulative)",
            )
        )
    return charts


def daily_rows(history: CampaignHistory) -> list[dict[str, str]]:
    """The exact figures behind the charts, the latest day first."""
    rows = []
    for d in reversed(history.days):
        revenue = "; ".join(
            f"{c} {r.incremental.estimate}" for c, r in d.revenue.items() if r.incremental
        )
        rows.append(
            {
                "day": d.day,
                "issued": f"{d.decided.get('issued', 0):,}",
                "holdout": f"{d.decided.get('holdout', 0):,}",
                "redeemed": f"{d.redeemed:,}",
                "expired": f"{d.expired:,}",
                "spent": "; ".join(f"{c} {a}" for c, a in sorted(d.spent.items())) or "0",
                "treated": _pct(d.conversion["treated"]),
                "held": _pct(d.conversion["holdout"]),
                "uplift": _interval(d.uplift),
                "revenue": revenue or "no figure",
            }
        )
    return rows


def _summary(state: AppState) -> dict[str, dict[str, int]]:
    """Per campaign: decisions by kind and coupons by state, in two grouped reads."""
    now = state.clock()
    out = HistoryRepository(state.repository).summary()
    for (campaign_id, coupon_state), n in state.reports.repository.coupon_states(now).items():
        out.setdefault(campaign_id, {})[coupon_state] = n
    return out


# --- the campaigns -----------------------------------------------------------------------


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns(request: Request, session: Marketing) -> HTMLResponse:
    state = state_of(request)
    views = state.campaign_store.all()
    figures = _summary(state)
    rows = []
    for view in views:
        s = view.stored
        f = figures.get(s.campaign_id, {})
        rows.append(
            {
                "id": s.campaign_id,
                "name": view.definition.get("name", s.campaign_id),
                "kind": s.kind,
                "status": s.status,
                "deciding": "yes" if view.active_now else "no",
                "source": s.source,
                "issued": f.get("issued", 0),
                "holdout": f.get("holdout", 0),
                "redeemed": f.get("redeemed", 0),
                "expired": f.get("expired", 0),
            }
        )
    return page(request, "campaigns.html", session, title="Campaigns", rows=rows)


def _new_form(
    request: Request,
    session: Session,
    kind: str | None,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    chosen = cf.kind_of(kind)
    problem = None
    if kind is not None and chosen is None:
        status, problem = 422, f"kind: {kind[:40]!r} is not a campaign kind"
    own, common = cf.fields_of(chosen) if chosen else ([], [])
    return page(
        request,
        "campaign_new.html",
        session,
        title="New campaign",
        status=status,
        kinds=cf.kinds(),
        kind=chosen,
        own=own,
        common=common,
        values=values or {},
        errors=errors or {},
        problem=problem,
        segments=SEGMENTS,
    )


@router.get("/campaigns/new", response_class=HTMLResponse)
def new_campaign(request: Request, session: Marketing, kind: str | None = None) -> HTMLResponse:
    return _new_form(request, session, kind)


@router.post("/campaigns/new", response_class=HTMLResponse)
async def create_campaign(request: Request, session: Marketing) -> Response:
    form = await checked_form(request, session)
    raw_kind = form.get("kind")
    kind = cf.kind_of(raw_kind if isinstance(raw_kind, str) else None)
    if kind is None:
        return _new_form(request, session, str(raw_kind or "?"), status=422)
    own, common = cf.fields_of(kind)
    fields = [*own, *common]
    values = cf.submitted(form, fields)
    raw_id = form.get("campaign_id")
    campaign_id = raw_id.strip() if isinstance(raw_id, str) else ""
    values["campaign_id"] = campaign_id
    names = ["campaign_id", *(f.name for f in fields)]
    if not campaign_id:
        errors = {"campaign_id": "enter an id (lower case letters, digits, - and _)"}
        return _new_form(request, session, kind, values=values, errors=errors, status=422)
    definition = {"campaign_id": campaign_id, "kind": kind, **cf.changes_of(values, fields)}
    try:
        campaign = Campaign.model_validate(definition)  # the API's body, validated alike
    except ValidationError as exc:
        errors = cf.field_errors(exc, names)
        return _new_form(request, session, kind, values=values, errors=errors, status=422)
    store = state_of(request).campaign_store
    try:
        await _call(lambda: store.create(campaign, actor_of(request, session)))
    except RecofferError as exc:
        errors = {"campaign_id": str(exc)}
        return _new_form(
            request, session, kind, values=values, errors=errors, status=kind_of(exc).status
        )
    return RedirectResponse(f"/console/campaigns/{campaign_id}?done=created", status_code=303)


def _campaign_page(
    request: Request,
    session: Session,
    view: CampaignView,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    done: str | None = None,
) -> HTMLResponse:
    state = state_of(request)
    s = view.stored
    stats: CampaignStats | None
    try:
        stats = state.reports.stats(s.campaign_id)
    except UnknownCampaign:  # not applied in this worker yet
        stats = None
    history = History(HistoryRepository(state.repository), state.clock).results(s.campaign_id)
    kind = cf.kind_of(s.kind)
    own, common = cf.fields_of(kind) if kind else ([], [])
    definition = view.definition
    current: dict[str, Any] = {}
    for f in [*own, *common]:
        value = definition.get(f.name)
        if f.widget == "segments":
            current[f.name] = list(value or [])
        else:
            current[f.name] = cf.shown(value) if f.name in definition else ""
    changes = state.campaign_store.history(s.campaign_id, limit=1000)
    return page(
        request,
        "campaign.html",
        session,
        title=str(definition.get("name", s.campaign_id)),
        status=status,
        view=view,
        stored=s,
        figures=key_figures(stats) if stats else [],
        notes=stats.notes if stats else [],
        charts=results_charts(history),
        daily=daily_rows(history),
        first_day=history.first_day,
        definition=sorted(definition.items()),
        editable=s.status != "archived" and s.source != "file",
        own=own,
        common=common,
        values=values if values is not None else current,
        errors=errors or {},
        segments=SEGMENTS,
        changes=changes[-20:][::-1],
        notice=NOTICES.get(done or ""),
    )


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign(
    request: Request, campaign_id: str, session: Marketing, done: str | None = None
) -> HTMLResponse:
    store = state_of(request).campaign_store
    try:
        view = store.get(campaign_id)
    except RecofferError as exc:
        return _problem(request, session, exc)
    return _campaign_page(request, session, view, done=done)


@router.post("/campaigns/{campaign_id}/edit", response_class=HTMLResponse)
async def edit_campaign(request: Request, campaign_id: str, session: Marketing) -> Response:
    form = await checked_form(request, session)
    store = state_of(request).campaign_store
    try:
        view = await _call(lambda: store.get(campaign_id))
    except RecofferError as exc:
        return _problem(request, session, exc)
    kind = cf.kind_of(view.stored.kind)
    own, common = cf.fields_of(kind) if kind else ([], [])
    fields = [*own, *common]
    values = cf.submitted(form, fields)
    changes = cf.changes_of(values, fields, view.definition)
    raw_version = form.get("version")
    if not (
        isinstance(raw_version, str)
        and raw_version.isascii()
        and raw_version.isdigit()
        and len(raw_version) <= 18
    ):  # the form always carries the version it was made from: without it, no blind overwrite
        problem = InvalidInput("version", "missing from the form: reload the campaign's page")
        return _problem(request, session, problem)
    expected = int(raw_version)
    names = [f.name for f in fields]
    if not changes:
        return RedirectResponse(f"/console/campaigns/{campaign_id}?done=unchanged", status_code=303)
    actor = actor_of(request, session)
    try:
        await _call(lambda: store.update(campaign_id, changes, actor, expected_version=expected))
    except (ValidationError, InvalidInput) as exc:
        errors = cf.field_errors(exc, names)
        return await _call(
            lambda: _campaign_page(request, session, view, values=values, errors=errors, status=422)
        )
    except RecofferError as exc:  # changed meanwhile, archived, from the file
        errors = {"definition": str(exc)}
        status = kind_of(exc).status
        return await _call(  # the campaign as it is now, with what was typed
            lambda: _campaign_page(
                request,
                session,
                store.get(campaign_id),
                values=values,
                errors=errors,
                status=status,
            )
        )
    return RedirectResponse(f"/console/campaigns/{campaign_id}?done=saved", status_code=303)


async def _transition(
    request: Request, campaign_id: str, session: Session, action: str
) -> Response:
    form = await checked_form(request, session)
    if action == "archive" and form.get("confirm") != "yes":
        return RedirectResponse(f"/console/campaigns/{campaign_id}/archive", status_code=303)
    store = state_of(request).campaign_store
    actor = actor_of(request, session)
    try:
        if action == "pause":
            await _call(lambda: store.transition(campaign_id, "pause", actor))
        elif action == "resume":
            await _call(lambda: store.transition(campaign_id, "resume", actor))
        else:
            await _call(lambda: store.transition(campaign_id, "archive", actor))
    except RecofferError as exc:
        return _problem(request, session, exc)
    done = {"pause": "paused", "resume": "resumed", "archive": "archived"}[action]
    return RedirectResponse(f"/console/campaigns/{campaign_id}?done={done}", status_code=303)


@router.post("/campaigns/{campaign_id}/pause")
async def pause_campaign(request: Request, campaign_id: str, session: Marketing) -> Response:
    return await _transition(request, campaign_id, session, "pause")


@router.post("/campaigns/{campaign_id}/resume")
async def resume_campaign(request: Request, campaign_id: str, session: Marketing) -> Response:
    return await _transition(request, campaign_id, session, "resume")


@router.get("/campaigns/{campaign_id}/archive", response_class=HTMLResponse)
def confirm_archive(request: Request, campaign_id: str, session: Marketing) -> HTMLResponse:
    try:
        view = state_of(request).campaign_store.get(campaign_id)
    except RecofferError as exc:
        return _problem(request, session, exc)
    return page(
        request,
        "campaign_archive.html",
        session,
        title=f"Archive {campaign_id}?",
        stored=view.stored,
    )


@router.post("/campaigns/{campaign_id}/archive")
async def archive_campaign(request: Request, campaign_id: str, session: Marketing) -> Response:
    return await _transition(request, campaign_id, session, "archive")


# --- segments, loyalty, cohorts ------------------------------------------------------------


@router.get("/segments", response_class=HTMLResponse)
def segments(request: Request, session: Marketing) -> HTMLResponse:
    state = state_of(request)
    counts = state.segments.counts()
    runs = state.segments.runs(SEGMENT_RUNS)
    stages, types = counts.per_stage(), counts.per_type()
    labels = [r.as_of.strftime("%m-%d %H:%M") for r in runs]
    over_time = [
        line_chart(
            labels,
            [Series(stage, [r.per_stage()[stage] for r in runs]) for stage in STAGES],
            title="Users per lifecycle stage, at each segment run",
        ),
        line_chart(
            labels,
            [Series(kind, [r.per_type()[kind] for r in runs]) for kind in TYPES],
            title="Users per loyalty type, at each segment run",
        ),
    ]
    return page(
        request,
        "segments.html",
        session,
        title="Segments",
        users=sum(stages.values()),
        counts=counts,
        stages=stages,
        types=types,
        stage_names=STAGES,
        type_names=TYPES,
        now_charts=[
            bar_chart(list(stages.items()), title="Users per lifecycle stage, now"),
            bar_chart(list(types.items()), title="Users per loyalty type, now"),
        ],
        over_time=over_time,
        runs=runs[::-1][:20],
    )


def _filters(period: str | None, segment: str | None) -> tuple[str, str | None, str | None]:
    """The GET form's period and segment, or the field that is wrong and why (a wrong field
    falls back to its default, so the page still shows figures)."""
    chosen_segment = segment or None
    if chosen_segment is not None and chosen_segment not in REPORT_SEGMENTS:
        return "month", None, f"segment: {chosen_segment[:40]!r} is not a segment"
    if period not in (None, "", "week", "month"):
        return "month", chosen_segment, f"period: {period[:20]!r} is not week or month"
    return period or "month", chosen_segment, None


def _rate(value: float | None) -> str:
    return "no figure" if value is None else f"{value:.4f}"


@router.get("/loyalty", response_class=HTMLResponse)
def loyalty(
    request: Request, session: Marketing, period: str | None = None, segment: str | None = None
) -> HTMLResponse:
    chosen, chosen_segment, problem = _filters(period, segment)
    figures = figures_of(request).loyalty("week" if chosen == "week" else "month", chosen_segment)
    report = LoyaltyOut.model_validate(figures.result)
    rows = report.periods
    labels = [f"{r.period} (so far)" if r.partial else r.period for r in rows]
    currencies = sorted({c for r in rows for c in (*r.average_order_value, *r.lifetime_value)})
    charts = [
        line_chart(
            labels,
            [
                Series("Retention", [r.retention for r in rows]),
                Series("Churn", [r.churn for r in rows]),
            ],
            title=f"Customer retention and churn per {chosen}",
            fmt=percent,
        ),
        line_chart(
            labels,
            [
                Series("Repurchase rate", [r.repurchase_rate for r in rows]),
                Series("Repeat-customer rate", [r.repeat_customer_rate for r in rows]),
                Series("Upsell rate", [r.upsell_rate for r in rows]),
            ],
            title=f"Repurchase, repeat customers and upsell per {chosen}",
            fmt=percent,
        ),
        line_chart(
            labels,
            [
                Series("Customers", [r.customers_at_end for r in rows]),
                Series("New customers", [r.new_customers for r in rows]),
                Series("Orders", [r.orders for r in rows]),
            ],
            title=f"Customers and orders per {chosen}",
        ),
        line_chart(
            labels,
            [Series("Orders per customer", [r.purchase_frequency for r in rows])],
            title=f"Purchase frequency per {chosen}",
        ),
    ]
    for currency in currencies:
        charts.append(
            line_chart(
                labels,
                [
                    Series(
                        "Average order value",
                        [
                            float(v) if (v := r.average_order_value.get(currency)) else None
                            for r in rows
                        ],
                    ),
                    Series(
                        "Lifetime value, mean",
                        [
                            float(lv.mean) if (lv := r.lifetime_value.get(currency)) else None
                            for r in rows
                        ],
                    ),
                    Series(
                        "Lifetime value, median",
                        [
                            float(lv.median) if (lv := r.lifetime_value.get(currency)) else None
                            for r in rows
                        ],
                    ),
                ],
                title=f"Order value and historical lifetime value in {currency}",
            )
        )
    return page(
        request,
        "loyalty.html",
        session,
        title="Loyalty",
        status=422 if problem else 200,
        problem=problem,
        period=chosen,
        segment=chosen_segment or "",
        segments=REPORT_SEGMENTS,
        charts=charts,
        rows=rows,
        currencies=currencies,
        rate=_rate,
        computed_at=figures.computed_at,
        current=figures.current,
    )


@router.get("/cohorts", response_class=HTMLResponse)
def cohort_matrix(request: Request, session: Marketing, segment: str | None = None) -> HTMLResponse:
    _, chosen_segment, problem = _filters(None, segment)
    figures = figures_of(request).cohorts(chosen_segment)
    matrix = CohortsOut.model_validate(figures.result)
    width = max((len(c.share) for c in matrix.cohorts), default=0)
    grid = heat_table(
        [
            (f"{c.cohort} ({c.size:,})", [*c.share, *([None] * (width - len(c.share)))])
            for c in matrix.cohorts
        ],
        [f"+{k}" for k in range(width)],
        title="Share of each cohort ordering again, by months since the first order",
        row_header="Cohort (customers)",
    )
    return page(
        request,
        "cohorts.html",
        session,
        title="Cohorts",
        status=422 if problem else 200,
        problem=problem,
        segment=chosen_segment or "",
        segments=REPORT_SEGMENTS,
        grid=grid,
        matrix=matrix,
        computed_at=figures.computed_at,
        current=figures.current,
    )


def figures_of(request: Request) -> FiguresCache:
    """This worker's loyalty and cohort figures (``console.figures``), made on first use."""
    engine = state_of(request).repository.engine
    cache: FiguresCache | None = getattr(request.app.state, "console_figures", None)
    if cache is None or cache.engine is not engine:
        cache = FiguresCache(engine)
        request.app.state.console_figures = cache
    return cache


def warm(request: Request) -> None:
    """Compute the loyalty and cohort pages' default views (a background task)."""
    figures_of(request).warm()


def headline(state: AppState) -> list[tuple[str, str]]:
    """A few figures for marketing on the overview page (cheap reads only)."""
    views = state.campaign_store.all()
    deciding = sum(1 for v in views if v.active_now)
    paused = sum(1 for v in views if v.stored.status == "paused")
    counts = state.segments.counts()
    stages = counts.per_stage()
    return [
        ("Campaigns deciding now", f"{deciding:,}"),
        ("Campaigns paused", f"{paused:,}"),
        ("Users with a segment", f"{sum(stages.values()):,}"),
        ("Active customers", f"{stages.get('active', 0):,}"),
        ("At risk", f"{stages.get('at_risk', 0):,}"),
    ]


@router.get("/customer-value", response_class=HTMLResponse)
def customer_value(request: Request, session: Marketing) -> HTMLResponse:
    """The latest ``recoffer clv --write`` run: what ``GET /v1/analytics/customer-value``
    answers, with its top customers and the spread of the predicted value."""
    summary = CustomerValueSummaryOut.model_validate(
        Analytics(state_of(request).repository.engine).customer_value(TOP_CUSTOMERS)
    )
    spread = (
        bar_chart(
            [(name, float(Decimal(amount))) for name, amount in summary.quantiles.items()],
            title=f"Predicted value per customer, {summary.currency}: quantiles",
            fmt=plain,
        )
        if summary.quantiles
        else ""
    )
    return page(
        request,
        "customer_value.html",
        session,
        title="Customer value",
        summary=summary,
        spread=spread,
    )
