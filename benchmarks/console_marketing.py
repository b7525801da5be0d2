"""The console's marketing pages on the demo shop: server time of each page.

The demo shop of ``recoffer demo`` (preset ``demo``: 5,000 users, 150,000 purchases, 500 new
users' views) is generated and seeded into a fresh SQLite database under ``var/bench`` (not
timed; no model is trained, the pages read none), its segments computed, a win-back campaign
created and both it and the built-in campaign swept, so the campaigns have decisions and
coupons. Then each marketing page is fetched ``1 + --repeats`` times through the app in
process (signed in as marketing): the first fetch, and the median of the others, from request
to the whole HTML received (the browser test reports the time to first render on a real
server). The first fetch of the loyalty and cohort pages computes their figures
(``console.figures``); the overview, fetched last, warms them for later visitors (in process the
client waits for that background task, so its first fetch includes it).

    python -m benchmarks.console_marketing
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

from fastapi.testclient import TestClient

from benchmarks.common import WORK, median, save, this_command
from service.app import create_app
from service.settings import Settings

KEY = "bench-marketing-key-0123456789"
FRONTEND = "bench-frontend-key-0123456789"
PAGES = (  # the overview last: it warms the loyalty and cohort figures after answering
    "/console/campaigns",
    "/console/campaigns/new?kind=win_back",
    "/console/campaigns/come_back",
    "/console/campaigns/new_user_high_intent",
    "/console/segments",
    "/console/loyalty",
    "/console/loyalty?period=week",
    "/console/cohorts",
    "/console",
)


def _sign_in(client: TestClient) -> None:
    form = client.get("/console/sign-in").text
    token = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post(
        "/console/sign-in", data={"key": KEY, "csrf": token}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text


def _sweep(client: TestClient, campaign_id: str) -> dict[str, Any]:
    headers = {"X-API-Key": KEY}
    started = client.post(f"/v1/campaigns/{campaign_id}/run", headers=headers)
    assert started.status_code == 202, started.text
    job = started.json()
    for _ in range(600):
        job = client.get(
            f"/v1/campaigns/{campaign_id}/runs/{job['job_id']}", headers=headers
        ).json()
        if job["state"] in ("done", "failed"):
            return dict(job)
        time.sleep(0.1)
    raise RuntimeError(f"sweep of {campaign_id} did not finish: {job}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from training.demo import prepare_demo

    workdir = WORK / "console-demo"
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    plan = prepare_demo(workdir, "demo", progress=lambda _: None)
    plan.seed_database()
    seeding = time.perf_counter() - t0
    settings = Settings(
        model_dir=plan.models,
        database_url=plan.database_url,
        marketing_keys=[KEY],
        frontend_keys=[FRONTEND],
        reload_interval_seconds=0,
        offer_metrics_seconds=0,
        access_log=False,
    )
    rows = []
    with TestClient(create_app(settings)) as client:
        headers = {"X-API-Key": KEY}
        come_back = {"campaign_id": "come_back", "kind": "win_back", "discount_percent": 15}
        assert client.post("/v1/campaigns", json=come_back, headers=headers).status_code == 201
        sweeps = {c: _sweep(client, c) for c in ("come_back", "new_user_high_intent")}
        _sign_in(client)
        for path in PAGES:
            times = []
            size = 0
            for _ in range(args.repeats + 1):
                started = time.perf_counter()
                answer = client.get(path)
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200, (path, answer.status_code)
                size = len(answer.content)
            rows.append(
                {
                    "page": path,
                    "first_ms": round(times[0] * 1000, 1),
                    "median_ms": round(median(times[1:]) * 1000, 1),
                    "max_ms": round(max(times[1:]) * 1000, 1),
                    "kib": round(size / 1024, 1),
                }
            )
            r = rows[-1]
            print(f"{path:45s} {r['first_ms']:8.1f} {r['median_ms']:8.1f} ms {r['kib']:7.1f} KiB")
    data = {
        "repeats": args.repeats,
        "seeding_seconds": round(seeding, 1),
        "sweeps": {c: {"issued": j["issued"], "holdout": j["holdout"]} for c, j in sweeps.items()},
        "pages": rows,
    }
    save("console_marketing", this_command(), data)


def render(doc: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md."""
    from benchmarks.report import _header

    sweeps = ", ".join(
        f"{c}: {s['issued']:,} issued, {s['holdout']:,} held out" for c, s in doc["sweeps"].items()
    )
    out = [
        "## Console: marketing pages on the demo shop (issue 13, item 2)",
        "",
        *_header(doc),
        "",
        "Each page of marketing fetched in process (TestClient, signed in as marketing) on the "
        "demo shop (5,000 users, 150,000 purchases) on SQLite, after its segments were computed "
        f"and two campaigns swept ({sweeps}); the time from request to the whole page: the "
        f"first fetch, and the median of {doc['repeats']} later ones. The first fetch of "
        "loyalty and cohorts computes their figures over every purchase (`Analytics`); later "
        "ones reuse them while no purchase arrives, and the overview warms them after it "
        "answers (its first fetch here includes that, as the in-process client waits for it). "
        "The browser test reports the time to first render.",
        "",
        "| page | first fetch ms | median ms (later) | max ms (later) | KiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in doc["pages"]:
        out.append(
            f"| `{row['page']}` | {row['first_ms']:,.1f} | {row['median_ms']:,.1f} | "
            f"{row['max_ms']:,.1f} | {row['kib']} |"
        )
    out.append("")
    return out


if __name__ == "__main__":
    main()
