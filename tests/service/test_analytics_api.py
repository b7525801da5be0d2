"""The loyalty endpoints and ``recoffer report`` agree to the last digit on the same orders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.settings import Settings
from training.cli import app as cli
from training.data.imports import import_file

MARKETING = "marketing-key-0123456789"
FRONTEND = "frontend-key-0123456789"
M = {"X-API-Key": MARKETING}

# a duplicated line (stored once by the import), an order of two lines on two days, orders
# without an order id, two currencies, a line without a price
PURCHASES = """user_id,item_id,timestamp,quantity,price,currency,order_id
d,x,2023-12-31T23:59:00,1,,,D1
a,x,2024-01-05T10:00:00,1,10.00,EUR,A1
b,y,2024-01-20T10:00:00,1,20.00,EUR,B1
c,z,2024-02-03T10:00:00,1,7.00,GBP,
a,y,2024-02-11T09:00:00,1,3.50,EUR,A2
a,y,2024-02-11T09:00:00,1,3.50,EUR,A2
a,x,2024-02-10T09:00:00,2,5.00,EUR,A2
c,x,2024-02-25T10:00:00,1,1.00,GBP,
b,y,2024-03-01T00:00:00,3,6.6667,EUR,B2
e,x,2024-03-10T10:00:00,1,1.00,EUR,E1
b,y,2024-04-02T10:00:00,1,99.00,EUR,B3
"""


def client(tmp_path: Path, database_url: str) -> TestClient:
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=database_url,
        marketing_keys=[MARKETING],
        frontend_keys=[FRONTEND],
        reload_interval_seconds=0,
        event_poll_seconds=0.05,
        offer_metrics_seconds=0,
        access_log=False,
    )
    return TestClient(create_app(settings))


def cli_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["report", *args, "--json"])
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


@pytest.mark.parametrize(
    "query", [{"period": "month"}, {"period": "week", "since": "2024-01-31", "until": "2024-03-02"}]
)
def test_api_file_and_database_reports_agree(
    tmp_path: Path, database_url: str, query: dict[str, str]
) -> None:
    path = tmp_path / "purchases.csv"
    path.write_text(PURCHASES)
    import_file("purchases", path, database_url)
    options = [f"--{k}={v}" for k, v in query.items()]
    from_file = cli_json("--data", str(path), *options)
    from_database = cli_json("--database-url", database_url, *options)
    with client(tmp_path, database_url) as api:
        loyalty = api.get("/v1/analytics/loyalty", params=query, headers=M)
        matrix = api.get(
            "/v1/analytics/cohorts",
            params={k: v for k, v in query.items() if k != "period"},
            headers=M,
        )
    assert loyalty.status_code == 200, loyalty.text
    assert matrix.status_code == 200, matrix.text
    assert from_file == from_database == {"loyalty": loyalty.json(), "cohorts": matrix.json()}
    periods = loyalty.json()["periods"]
    assert periods, "a report with figures"
    if query["period"] == "month":
        march = periods[3]  # December 2023 (d), January, February, March
        # B2: 3 x 6.6667 = 20.0001 exactly; E1 1.00 -> (20.0001 + 1) / 2, half-even to 4 places
        assert march["average_order_value"] == {"EUR": "10.5000"}
        assert march["lifetime_value"]["EUR"]["median"] == "23.5000"  # a: 10 + 10 + 3.50 once
        assert [p["period"] for p in periods][-1] == "2024-04-01"


def test_bad_input_is_a_422_naming_the_field(tmp_path: Path) -> None:
    with client(tmp_path, f"sqlite:///{tmp_path / 'r.db'}") as api:
        cases = [
            ("/v1/analytics/loyalty", {"period": "year"}, "period"),
            ("/v1/analytics/loyalty", {"since": "yesterday"}, "since"),
            ("/v1/analytics/cohorts", {"since": "2024-05-01", "until": "2024-01-01"}, "until"),
            ("/v1/analytics/loyalty", {"period": "week", "since": "1900-01-01"}, "since"),
            # the ends of the calendar: no overflow, a 422 (issue 13 review)
            ("/v1/analytics/loyalty", {"until": "9999-12-31"}, "until"),
            ("/v1/analytics/cohorts", {"until": "9999-12-31"}, "until"),
            ("/v1/analytics/loyalty", {"since": "9999-12-01", "until": "9999-12-31"}, "since"),
            ("/v1/analytics/loyalty", {"since": "0001-01-01", "until": "0001-01-02"}, "since"),
            ("/v1/analytics/cohorts", {"since": "0001-01-01T00:00:00+14:00"}, "since"),
        ]
        for path, params, field in cases:
            for until in ({"until": "2024-01-01"}, {}):  # a range to now is bounded too
                query = {**params, **until} if field == "since" and "period" in params else params
                answer = api.get(path, params=query, headers=M)
                assert answer.status_code == 422, (query, answer.text)
                assert field in json.dumps(answer.json()), answer.text
        assert api.get("/v1/analytics/loyalty", headers={"X-API-Key": FRONTEND}).status_code == 403
        assert api.get("/v1/analytics/cohorts").status_code == 401
        empty = api.get("/v1/analytics/loyalty", headers=M)
        assert empty.json() == {"period": "month", "periods": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give one of --data FILE or --database-url URL"),
        (["--data", "x.csv", "--database-url", "sqlite://"], "give one of"),
        (["--data", "missing.csv"], "file not found"),
        (["--database-url", "sqlite://", "--period", "day"], "--period 'day'"),
        (["--database-url", "sqlite://", "--since", "soon"], "--since 'soon'"),
        (["--database-url", "sqlite://", "--until", "9999-12-31"], "until"),
    ],
)
def test_report_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["report", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr


def test_per_segment_reports_split_the_customers(tmp_path: Path, database_url: str) -> None:
    from service.tables import LIFECYCLE_STAGES

    path = tmp_path / "purchases.csv"
    path.write_text(PURCHASES)
    import_file("purchases", path, database_url)
    ran = CliRunner().invoke(
        cli, ["segments", "--database-url", database_url, "--as-of", "2024-04-15"]
    )
    assert ran.exit_code == 0, ran.output
    with client(tmp_path, database_url) as api:
        whole = api.get("/v1/analytics/loyalty", headers=M).json()["periods"]
        per_stage = {}
        for stage in LIFECYCLE_STAGES:
            answer = api.get("/v1/analytics/loyalty", params={"segment": stage}, headers=M)
            assert answer.status_code == 200, answer.text
            per_stage[stage] = {p["period"]: p for p in answer.json()["periods"]}
        refused = api.get("/v1/analytics/cohorts", params={"segment": "vip"}, headers=M)
    assert refused.status_code == 422
    assert "segment" in refused.text
    for period in whole:
        parts = [
            s[period["period"]]["customers_at_end"]
            for s in per_stage.values()
            if period["period"] in s
        ]
        assert sum(parts) == period["customers_at_end"]
    some = next(stage for stage, rows in per_stage.items() if rows)
    from_cli = cli_json("--database-url", database_url, "--segment", some)
    assert [p["period"] for p in from_cli["loyalty"]["periods"]] == list(per_stage[some])
    assert from_cli["loyalty"]["periods"] == list(per_stage[some].values())
