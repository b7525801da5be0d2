"""The Grafana dashboard and the Prometheus alert rules under deploy/ against the service's
metrics: every series they query is one a running service exports, with the labels and label
values they match on; the rules file has what Prometheus and the on-call need; and, where
promtool is installed, Prometheus itself loads the rules and each alert fires on its scenario.

The service is started once for the module and made to produce every family: recommendations,
events and a duplicate, an event write refused by a locked database, a coupon issued and
redeemed under coupon and money caps, a coupon lookup refused, a webhook that cannot be
delivered.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import DataError, OperationalError

from service.activity.ingest import write_failure
from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "recoffer-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "recoffer-alerts.yml"
SCRAPE_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"

# series that Prometheus makes itself, with the labels it adds to every scraped one
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}
# Grafana's own variables in durations, replaced by a duration before parsing
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}

FRONTEND, MARKETING, ADMIN = "frontend-key-0123456789", "marketing-key-0123456789", "a" * 24
F = {"X-API-Key": FRONTEND}
CAMPAIGN = "new_user_high_intent"
ACTIVE_UNTIL = datetime(2031, 1, 1, tzinfo=UTC)
BUILT_IN_PANELS = {"row", "timeseries", "stat", "table", "gauge", "bargauge", "text"}


# --- reading PromQL ------------------------------------------------------------------------


@dataclass
class Selector:
    """A series selector in an expression: the metric and the label matchers on it."""

    name: str
    equal: dict[str, str] = field(default_factory=dict)  # label = "value" (no variable)
    labels: set[str] = field(default_factory=set)  # every label matched on


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus would get it (Grafana's duration variables filled)."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return expr


def selectors(expr: str) -> list[Selector]:
    """Every series selector of ``expr`` (raises ValueError when it does not parse)."""
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            matchers = [m for m in node.matchers.matchers if m.name != "__name__"]
            found.append(
                Selector(
                    node.name,
                    {
                        m.name: m.value
                        for m in matchers
                        if m.op == promql_parser.MatchOp.Equal and "$" not in m.value
                    },
                    {m.name for m in matchers},
                )
            )

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


def groupings(expr: str) -> list[tuple[set[str], set[str]]]:
    """Each ``by (...)`` of ``expr``: its labels, and the metrics it aggregates."""
    found: list[tuple[set[str], set[str]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.AggregateExpr) or node.modifier is None:
            return
        if node.modifier.type != promql_parser.AggModifierType.By:
            return
        names: set[str] = set()

        def under(inner: promql_parser.Expr) -> None:
            if isinstance(inner, promql_parser.VectorSelector) and inner.name:
                names.add(inner.name)

        promql_parser.walk(node.expr, under)
        found.append((set(node.modifier.labels), names))

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return found


def test_the_reader_finds_the_metrics_of_known_expressions() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{status=~"5.."}[5m])))'
    ) == {"a_bucket"}
    assert metric_names("b_total / on (job) group_left () (max by (job) (c) - time())") == {
        "b_total",
        "c",
    }
    assert metric_names('up{job="x"} == 0 unless on (instance) d == 1') == {"up", "d"}
    assert metric_names(f"sum(rate(e_total[$__rate_interval])) * {86400}") == {"e_total"}
    [s] = selectors('f{period="today", campaign=~"$campaign", instance=~"$instance"}')
    assert (s.equal, s.labels) == ({"period": "today"}, {"period", "campaign", "instance"})
    assert groupings("sum by (job, le) (rate(i_bucket[5m])) / max(j)") == [
        ({"job", "le"}, {"i_bucket"})
    ]
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's only error type
        selectors("sum(rate(g_total{[5m]))")
    with pytest.raises(ValueError):  # noqa: PT011
        selectors("rate(h_total)")  # rate of an instant vector: a type error


# --- the files -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_queries() -> dict[str, str]:
    """(panel title or variable) -> each query of the dashboard."""
    doc = dashboard()
    out = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m, query
            out[f"variable {variable['name']}"] = m.group(1)
    return out


def test_the_dashboard_is_importable_with_a_prometheus_data_source_variable() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 36
    assert doc["uid"]
    assert doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = set()
    for panel in doc["panels"]:
        assert panel["type"] in BUILT_IN_PANELS, panel["type"]  # no plugin to install
        titles.add(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    for wanted in (
        "Request rate by route",
        "5xx rate by route",
        "Latency p50 / p95 / p99, all routes",
        "Recommendations by source",
        "Fallback share",
        "Event write failures",
        "Model version served",
        "Model age",
        "Coupons issued, redeemed, refused",
        "Coupon budget left",
        "Coupon burn rate",
        "Money burn rate",
        "Webhook backlog",
        "Oldest pending webhook",
        "Database up",
        "Activity store",
    ):
        assert wanted in titles, wanted
    quantiles = [q for q in dashboard_queries().values() if "histogram_quantile" in q]
    assert {re.search(r"histogram_quantile\((0\.\d+)", q).group(1) for q in quantiles} >= {  # type: ignore[union-attr]
        "0.5",
        "0.95",
        "0.99",
    }


REQUIRED_ALERTS = {
    "RecofferHigh5xxRate",
    "RecofferLatencyP99High",
    "RecofferEventWriteFailures",
    "RecofferModelStale",
    "RecofferNoModel",
    "RecofferCampaignBudgetRunsOutBeforeEnd",
    "RecofferCampaignMoneyBudgetRunsOutBeforeEnd",
    "RecofferWebhookBacklogOld",
    "RecofferWebhookBacklogGrowing",
    "RecofferDatabaseDown",
}


def test_every_alert_has_an_expression_a_duration_a_severity_and_a_runbook() -> None:
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in found:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}, rule["alert"]
        assert all(len(text) > 20 for text in notes.values()), rule["alert"]
        selectors(rule["expr"])  # parses


def test_the_scrape_example_loads_the_rules_file() -> None:
    doc = yaml.safe_load(SCRAPE_EXAMPLE.read_text())
    assert RULES.name in doc["rule_files"][0]
    [job] = doc["scrape_configs"]
    assert job["job_name"] == "recoffer"  # the job RecofferTargetDown names
    assert job["metrics_path"] == "/metrics"


# --- a service that exports every family ---------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _closed_port() -> int:
    """A local port nothing listens on (the webhook receiver that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the service's background loop did not get there"
        time.sleep(0.02)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(client: TestClient) -> Samples:
    text = client.get("/metrics").text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


@dataclass
class Exported:
    samples: Samples
    failed_batch: int
    clock: Clock


@pytest.fixture(scope="module")
def exported(
    small_model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("monitoring")
    campaigns = tmp / "campaigns.toml"
    campaigns.write_text(
        f"[campaigns.{CAMPAIGN}]\n"
        'fixed_discount = "5.00"\ncurrency = "EUR"\nholdout_percent = 0\n'
        'max_per_day = 100\nmax_total = 1000\nmax_discount_per_day = "50.00"\n'
        f'max_discount_total = "500.00"\nactive_until = "{ACTIVE_UNTIL.isoformat()}"\n'
    )
    database = tmp / "db.sqlite"
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    settings = Settings(
        model_dir=small_model_root,
        database_url=f"sqlite:///{database}",
        frontend_keys=[FRONTEND],
        marketing_keys=[MARKETING],
        admin_keys=[ADMIN],
        campaigns_file=campaigns,
        db_timeout_seconds=0.3,
        reload_interval_seconds=0,
        event_poll_seconds=0.05,
        offer_metrics_seconds=0,
        access_log=False,
        webhook_url=f"http://127.0.0.1:{_closed_port()}/hooks",
        webhook_secret="shared-secret-of-the-shop-0123",
        webhook_backoff_seconds=3600,
        webhook_backoff_max_seconds=3600,
        webhook_poll_seconds=0.05,
    )
    known = str(load_artifact(ModelStore(small_model_root).current_path()).arrays["user_ids"][0])  # type: ignore[arg-type]
    with TestClient(create_app(settings, clock=clock)) as client:
        assert client.get(f"/v1/users/{known}/recommendations", headers=F).status_code == 200
        assert client.get("/v1/users/stranger/recommendations", headers=F).status_code == 200
        view = {"user_id": "m", "type": "view", "item_id": "i1", "client_event_id": "e1"}
        for _ in range(2):  # the second is a duplicate
            assert client.post("/v1/events", json=view, headers=F).status_code == 200

        # a batch refused by a locked database: 503, and counted as not stored
        batch = [{"user_id": "w", "type": "view", "item_id": f"i{n}"} for n in range(3)]
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            r = client.post("/v1/events", json={"events": batch}, headers=F)
            assert r.status_code == 503, r.text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        # a coupon issued and redeemed under the coupon and money caps
        user = "mon-1"  # the campaign has no holdout
        signed_up = (clock() - timedelta(hours=1)).isoformat()
        r = client.put(f"/v1/users/{user}", json={"signed_up_at": signed_up}, headers=F)
        assert r.status_code == 200, r.text
        views = [{"user_id": user, "type": "view", "item_id": f"i{n:05d}"} for n in range(11)]
        assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
        r = client.post(
            "/v1/offers/evaluate", json={"user_id": user, "campaign_id": CAMPAIGN}, headers=F
        )
        assert r.json()["decision"] == "issued", r.text
        code = r.json()["coupon"]["code"]
        order = {"user_id": user, "order_id": "o1", "order_amount": "30.00", "currency": "EUR"}
        r = client.post(f"/v1/coupons/{code}/redeem", json=order, headers=F)
        assert r.status_code == 200, r.text
        assert client.get("/v1/coupons/NOPE-NOPE-NOPE", headers=F).status_code == 404
        state = client.app.state.recoffer  # type: ignore[attr-defined]
        state.reports.refresh_gauges()

        # the webhook events cannot be delivered; ten minutes later they still wait
        _until(lambda: _value(_samples(client), "recoffer_webhook_backlog", state="pending") >= 2)
        clock.now += timedelta(minutes=10)
        _until(
            lambda: _value(_samples(client), "recoffer_webhook_oldest_pending_age_seconds") >= 600
        )
        yield Exported(_samples(client), len(batch), clock)


def _value(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if labels.items() >= match.items())


def test_the_new_metrics_count_what_happened(exported: Exported) -> None:
    s = exported.samples
    failed = exported.failed_batch
    assert _value(s, "recoffer_event_write_failures_total", reason="database_unavailable") == failed
    for reason in ("refused", "error"):  # there at 0 from the start: rate() sees the first
        assert ({"reason": reason}, 0.0) in s["recoffer_event_write_failures_total"]
    assert _value(s, "recoffer_http_request_duration_seconds_count", status="503") >= 1
    assert (
        _value(s, "recoffer_campaign_active_until_timestamp_seconds", campaign=CAMPAIGN)
        == ACTIVE_UNTIL.timestamp()
    )
    age = _value(s, "recoffer_webhook_oldest_pending_age_seconds")
    assert 600 <= age < 700  # the service's clock moved ten minutes on
    assert _value(s, "recoffer_webhook_deliveries_total", outcome="failed") >= 1


def test_a_write_failure_is_named_by_what_went_wrong() -> None:
    assert write_failure(OperationalError("INSERT", {}, Exception("locked"))) == (
        "database_unavailable"
    )
    assert write_failure(DataError("INSERT", {}, Exception("too long"))) == "refused"
    assert write_failure(RuntimeError("bug")) == "error"


def _check_against_exports(queries: dict[str, str], samples: Samples) -> None:
    problems = []
    for where, expr in queries.items():
        for s in selectors(expr):
            if s.name in PROMETHEUS_OWN:
                continue
            found = samples.get(s.name)
            if not found:
                problems.append(f"{where}: {s.name} is not exported")
                continue
            labels = set().union(*(set(lab) for lab, _ in found)) | TARGET_LABELS
            if missing := s.labels - labels:
                problems.append(f"{where}: {s.name} has no label {sorted(missing)}")
            for label, value in s.equal.items():
                if label not in TARGET_LABELS and value not in {lab.get(label) for lab, _ in found}:
                    problems.append(f"{where}: {s.name} never has {label}={value!r}")
        for labels, names in groupings(expr):
            present = TARGET_LABELS.union(
                *(set(lab) for n in names for lab, _ in samples.get(n, []))
            )
            if missing := labels - present:
                problems.append(f"{where}: no metric of {sorted(names)} has {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_every_dashboard_query_reads_exported_series(exported: Exported) -> None:
    queries = dashboard_queries()
    assert len(queries) > 30
    _check_against_exports(queries, exported.samples)


def test_every_alert_reads_exported_series(exported: Exported) -> None:
    _check_against_exports({r["alert"]: r["expr"] for r in rules()}, exported.samples)


def test_the_check_catches_a_misspelt_metric_or_label_value(exported: Exported) -> None:
    with pytest.raises(AssertionError, match="recoffer_event_write_failure is not exported"):
        _check_against_exports({"typo": "rate(recoffer_event_write_failure[5m])"}, exported.samples)
    with pytest.raises(AssertionError, match="never has state='stuck'"):
        _check_against_exports(
            {"typo": 'recoffer_webhook_backlog{state="stuck"}'}, exported.samples
        )
    with pytest.raises(AssertionError, match=r"no metric of \['recoffer_coupons'\] has"):
        _check_against_exports({"typo": "sum by (campain) (recoffer_coupons)"}, exported.samples)
    with pytest.raises(AssertionError, match="has no label"):
        _check_against_exports(
            {"typo": 'recoffer_model_age_seconds{campaign="x"}'}, exported.samples
        )


# --- Prometheus itself, where promtool is installed ----------------------------------------


def test_prometheus_loads_the_rules(promtool: str) -> None:
    run = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules())} rules found" in run.stdout


T = 'job="recoffer", instance="a:8000"'
REC = "/v1/users/{user_id}/recommendations"


def _bucket(route: str, le: str, values: str) -> dict[str, str]:
    series = f'recoffer_http_request_duration_seconds_bucket{{{T}, route="{route}", le="{le}"}}'
    return {"series": series, "values": values}


def _count(route: str, status: str, values: str) -> dict[str, str]:
    labels = f'{T}, method="GET", route="{route}", status="{status}"'
    return {"series": f"recoffer_http_request_duration_seconds_count{{{labels}}}", "values": values}


def _s(series: str, values: str) -> dict[str, str]:
    return {"series": series, "values": values}


def _fires(alert: str, at: str, **labels: str) -> dict[str, Any]:
    return {"alertname": alert, "eval_time": at, "exp_alerts": [{"exp_labels": labels}]}


def _quiet(alert: str, at: str) -> dict[str, Any]:
    return {"alertname": alert, "eval_time": at, "exp_alerts": []}


JOB = {"job": "recoffer"}
CAMP = {"job": "recoffer", "campaign": "c"}
MONEY = T + ', campaign="c"'
DAY = 86400
# each: the series Prometheus would have scraped (one a minute from Unix time 0), and which
# alerts fire, or stay quiet, at a moment
SCENARIOS: list[tuple[list[dict[str, str]], list[dict[str, Any]]]] = [
    (  # 1 request in 11 fails, at 11 a second
        [_count(REC, "200", "0+600x40"), _count(REC, "503", "0+60x40")],
        [
            _fires("RecofferHigh5xxRate", "15m", severity="critical", **JOB),
            _fires("RecofferSome5xx", "30m", severity="warning", **JOB),
        ],
    ),
    (  # as many failing, but a quiet shop: 4 requests a minute
        [_count(REC, "200", "0+3x40"), _count(REC, "500", "0+1x40")],
        [_quiet("RecofferHigh5xxRate", "15m"), _quiet("RecofferSome5xx", "30m")],
    ),
    (  # 2 % failing: a warning, not a page
        [_count(REC, "200", "0+600x40"), _count(REC, "503", "0+12x40")],
        [
            _quiet("RecofferHigh5xxRate", "30m"),
            _fires("RecofferSome5xx", "30m", severity="warning", **JOB),
        ],
    ),
    (  # recommendations: half above 100 ms; offers: almost all between 0.5 and 1 s
        [
            _bucket(REC, "0.1", "0+50x30"),
            _bucket(REC, "0.25", "0+100x30"),
            _bucket(REC, "+Inf", "0+100x30"),
            _count(REC, "200", "0+100x30"),
            _bucket("/v1/offers/evaluate", "0.5", "0+10x30"),
            _bucket("/v1/offers/evaluate", "1.0", "0+100x30"),
            _bucket("/v1/offers/evaluate", "+Inf", "0+100x30"),
            _count("/v1/offers/evaluate", "200", "0+100x30"),
        ],
        [
            _fires("RecofferRecommendationsSlow", "20m", severity="warning", **JOB),
            _fires(
                "RecofferLatencyP99High",
                "20m",
                severity="warning",
                route="/v1/offers/evaluate",
                **JOB,
            ),
        ],
    ),
    (
        [
            _s(
                f'recoffer_event_write_failures_total{{{T}, reason="database_unavailable"}}',
                "0+5x20",
            ),
            _s(f'recoffer_event_write_failures_total{{{T}, reason="refused"}}', "0x20"),
        ],
        [
            _fires(
                "RecofferEventWriteFailures",
                "12m",
                severity="warning",
                reason="database_unavailable",
                **JOB,
            )
        ],
    ),
    (  # trained 36 h ago, and older every minute; another job's model is fresh
        [
            _s(f"recoffer_model_age_seconds{{{T}}}", f"{36 * 3600}+60x60"),
            _s('recoffer_model_age_seconds{job="other", instance="b"}', "3600+60x60"),
        ],
        [_fires("RecofferModelStale", "40m", severity="warning", **JOB)],
    ),
    (  # instance b stops serving its version after 5 minutes
        [
            _s(f"recoffer_database_up{{{T}}}", "1x30"),
            _s('recoffer_database_up{job="recoffer", instance="b:8000"}', "1x30"),
            _s(f'recoffer_model_info{{{T}, version="v1"}}', "1x30"),
            _s('recoffer_model_info{job="recoffer", instance="b:8000", version="v1"}', "1x5 0x25"),
        ],
        [_fires("RecofferNoModel", "25m", severity="warning", instance="b:8000", **JOB)],
    ),
    (  # one coupon a minute: 50 left today, 500 in total with 10 days to go
        [
            _s(f'recoffer_campaign_budget_left{{{T}, campaign="c", period="today"}}', "50x600"),
            _s(f'recoffer_campaign_budget_left{{{T}, campaign="c", period="total"}}', "500x600"),
            _s(
                f'recoffer_offer_decisions_total{{{T}, campaign="c", decision="issued"}}', "0+1x600"
            ),
            _s(
                f'recoffer_campaign_active_until_timestamp_seconds{{{T}, campaign="c"}}',
                f"{10 * DAY}x600",
            ),
        ],
        [
            _fires("RecofferCampaignBudgetRunsOutToday", "2h", severity="info", **CAMP),
            _fires("RecofferCampaignBudgetRunsOutBeforeEnd", "8h", severity="warning", **CAMP),
        ],
    ),
    (  # the same pace, but enough left today and no end to the campaign
        [
            _s(f'recoffer_campaign_budget_left{{{T}, campaign="c", period="today"}}', "5000x600"),
            _s(f'recoffer_campaign_budget_left{{{T}, campaign="c", period="total"}}', "500x600"),
            _s(
                f'recoffer_offer_decisions_total{{{T}, campaign="c", decision="issued"}}', "0+1x600"
            ),
            _s(f'recoffer_campaign_active_until_timestamp_seconds{{{T}, campaign="c"}}', "0x600"),
        ],
        [
            _quiet("RecofferCampaignBudgetRunsOutToday", "2h"),
            _quiet("RecofferCampaignBudgetRunsOutBeforeEnd", "8h"),
        ],
    ),
    (  # 1 EUR of discount a minute: 40 left today, 100 in total with 10 days to go
        [
            _s(
                f'recoffer_campaign_budget_money_left{{{MONEY}, period="today", currency="EUR"}}',
                "40x600",
            ),
            _s(
                f'recoffer_campaign_budget_money_left{{{MONEY}, period="total", currency="EUR"}}',
                "100x600",
            ),
            _s(
                f'recoffer_campaign_discount_given{{{MONEY}, period="total", currency="EUR"}}',
                "0+1x600",
            ),
            _s(
                f'recoffer_campaign_discount_given{{{MONEY}, period="total", currency="GBP"}}',
                "0+9x600",
            ),
            _s(
                f'recoffer_campaign_active_until_timestamp_seconds{{{T}, campaign="c"}}',
                f"{10 * DAY}x600",
            ),
        ],
        [
            _fires(
                "RecofferCampaignMoneyBudgetRunsOutToday",
                "2h",
                severity="info",
                currency="EUR",
                **CAMP,
            ),
            _fires(
                "RecofferCampaignMoneyBudgetRunsOutBeforeEnd",
                "8h",
                severity="warning",
                currency="EUR",
                **CAMP,
            ),
        ],
    ),
    (
        [
            _s(f"recoffer_webhook_oldest_pending_age_seconds{{{T}}}", "0+60x60"),
            _s(f'recoffer_webhook_backlog{{{T}, state="pending"}}', "0+10x60"),
            _s(f'recoffer_webhook_backlog{{{T}, state="dead"}}', "0 0 3x60"),
        ],
        [
            _quiet("RecofferWebhookBacklogOld", "15m"),
            _fires("RecofferWebhookBacklogOld", "25m", severity="warning", **JOB),
            _fires("RecofferWebhookBacklogGrowing", "40m", severity="warning", **JOB),
            _fires("RecofferWebhookDead", "15m", severity="warning", **JOB),
        ],
    ),
    (  # a long backlog that shrinks is being worked off
        [_s(f'recoffer_webhook_backlog{{{T}, state="pending"}}', "600-5x60")],
        [_quiet("RecofferWebhookBacklogGrowing", "40m")],
    ),
    (
        [
            _s(f"recoffer_database_up{{{T}}}", "1 1 0x10"),
            _s('recoffer_database_up{job="recoffer", instance="b:8000"}', "1x12"),
            _s(f"up{{{T}}}", "1 0x10"),
        ],
        [
            _fires("RecofferDatabaseDown", "10m", severity="critical", instance="a:8000", **JOB),
            _fires("RecofferTargetDown", "10m", severity="critical", instance="a:8000", **JOB),
        ],
    ),
]


def test_each_alert_fires_on_its_scenario_and_not_on_a_quiet_one(
    promtool: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:  # the texts are checked above; promtool would compare them
        for rule in group["rules"]:
            del rule["annotations"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    tests = [
        {"interval": "1m", "input_series": series, "alert_rule_test": checks}
        for series, checks in SCENARIOS
    ]
    covered = {c["alertname"] for _, checks in SCENARIOS for c in checks if c["exp_alerts"]}
    assert covered == {r["alert"] for r in rules()}
    unit = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(unit))
    run = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
