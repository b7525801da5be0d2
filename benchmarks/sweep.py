"""Campaign sweep over 100,000 new users: the batched sweep of this tree against the per-user
sweep of a baseline commit, side by side in one run, on SQLite and on PostgreSQL.

For each database: a fresh one, seeded as ``benchmarks.offers`` seeds its sweep (100,000 users
signed up over the last 23 h, Taobao-like view streams, some who bought; not timed). Then, for
``--rounds`` rounds taking turns (the baseline first in odd rounds, this tree first in even
ones): the offer tables emptied (every user undecided again), then ``OfferEngine.sweep`` of the
built-in campaign in a fresh process of each tree (the baseline exported with ``git archive``),
timed inside the process (imports excluded), on an engine with a 120 s timeout (the service's
5 s would cancel the per-user sweep's candidates read on a loaded machine). After every sweep
the offer tables are checked (one decision per user, a coupon for every ``issued`` decision
and none without, the budget counter equal to the coupons) and every user's decision is
compared with the first sweep's: batched and per-user must decide the same (the built-in
campaign's daily cap is lifted). Medians of the rounds are reported.

Then the served flow of this tree: one server process, ``POST .../run`` timed (202 at once),
a second POST while it runs (409), the job polled with ``GET .../runs/{job_id}`` until done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.against_commit import export
from benchmarks.common import PYTHON, RESULTS, ROOT, WORK, median, save, this_command
from benchmarks.harness import BACKENDS, Server, fresh_database
from benchmarks.offers import (
    MARKETING_KEY,
    _against_seed,
    call,
    integrity,
    reset_offers,
    seed_new_users,
    uncapped_campaigns,
    wait_for_quiet,
)
from service.offers.campaigns import BUILT_IN

TARGET_SECONDS = 10.0
BASELINE = "9efaacd"  # the last commit with the per-user sweep behind a synchronous request

# one sweep in a fresh process of a tree: what it decided and how long it took
CHILD = """
import json, sys, time
from datetime import UTC, datetime
from service.activity.repository import Repository
from service.db import make_engine
from service.offers.campaigns import BUILT_IN, load_campaigns
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository
engine = make_engine(sys.argv[1], timeout_seconds=120)
campaigns = load_campaigns(None)  # without the daily cap of issue 12 (none in the baseline)
campaigns[BUILT_IN] = campaigns[BUILT_IN].model_copy(update={"max_per_day": None})
offers = OfferEngine(campaigns, OfferRepository(Repository(engine)), lambda: datetime.now(UTC))
started = time.perf_counter()
result = offers.sweep(BUILT_IN)
seconds = time.perf_counter() - started
engine.dispose()
print(json.dumps({"seconds": seconds, "evaluated": result.evaluated,
                  "decisions": dict(result.decisions)}))
"""


def sweep_in(tree: Path, url: str) -> dict[str, Any]:
    proc = subprocess.run(
        [PYTHON, "-c", CHILD, url],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"sweep in {tree} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def decided(url: str) -> tuple[str, int, int]:
    """A digest of every (user, decision) of the built-in campaign, their number, and the
    budget counter ``total``."""
    from sqlalchemy import select

    from service.db import make_engine
    from service.tables import campaign_budgets, offer_decisions

    d, b = offer_decisions, campaign_budgets
    engine = make_engine(url, timeout_seconds=60)
    with engine.connect() as conn:
        rows = conn.execute(
            select(d.c.user_id, d.c.decision)
            .where(d.c.campaign_id == BUILT_IN)
            .order_by(d.c.user_id)
        ).all()
        total = conn.execute(
            select(b.c.issued).where(b.c.campaign_id == BUILT_IN, b.c.period == "total")
        ).scalar()
    engine.dispose()
    digest = hashlib.sha256("\n".join(f"{u}\t{k}" for u, k in rows).encode()).hexdigest()
    return digest[:16], len(rows), int(total or 0)


def served(url: str) -> dict[str, Any]:
    """POST the run to a server of this tree, POST again while it runs, poll until done."""
    reset_offers(url)
    models = Path(tempfile.mkdtemp(prefix="sweep-models-", dir=WORK))
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(models),
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_LOG_LEVEL": "WARNING",
        "RECOFFER_CAMPAIGNS_FILE": str(uncapped_campaigns(models)),
    }
    path = f"/v1/campaigns/{BUILT_IN}/run"
    with Server(env, stop_seconds=60) as server:
        started = time.perf_counter()
        status, job, post_seconds = call(server.port, "POST", path, MARKETING_KEY)
        if status != 202:
            raise SystemExit(f"run answered {status}: {job}")
        second_status, _, _ = call(server.port, "POST", path, MARKETING_KEY)
        polls = 0
        while job["state"] in ("queued", "running"):
            time.sleep(0.2)
            polls += 1
            _, job, _ = call(
                server.port, "GET", f"/v1/campaigns/{BUILT_IN}/runs/{job['job_id']}", MARKETING_KEY
            )
        done_seconds = time.perf_counter() - started
    checks = integrity(url)
    checks.pop("_decided", None)
    return {
        "post_status": status,
        "post_seconds": round(post_seconds, 3),
        "second_post_status": second_status,
        "polls": polls,
        "job": job,
        "until_done_seconds": round(done_seconds, 2),
        "checks": checks,
    }


def measure(
    backend: str, url: str, trees: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    population = seed_new_users(url, args.users, datetime.now(UTC))
    print(backend, "seeded", population.describe(), flush=True)
    expected = population.expected()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    reference: str | None = None
    for number in range(args.rounds):
        order = list(trees) if number % 2 == 0 else list(reversed(trees))
        for name in order:
            reset_offers(url)
            quiet = wait_for_quiet(args.quiet_wait)
            result = sweep_in(trees[name], url)
            checks = integrity(url)
            unlike = _against_seed(checks.pop("_decided"), expected)
            digest, rows, budget_total = decided(url)
            reference = reference or digest
            run = {
                **result,
                **quiet,
                "round": number + 1,
                "decisions_digest": digest,
                "same_decisions_as_first": digest == reference,
                "decision_rows": rows,
                "budget_total": budget_total,
                **unlike,
                "checks_ok": bool(checks["ok"])
                and budget_total == checks["coupons"]
                and unlike["decided_unlike_the_seed"] == 0
                and unlike["decided_but_not_seeded"] == 0,
            }
            runs[name].append(run)
            print(backend, name, json.dumps(run), flush=True)
    medians = {name: round(median([r["seconds"] for r in rows]), 3) for name, rows in runs.items()}
    flow = None if args.no_served else served(url)
    if flow is not None:
        print(backend, "served", json.dumps(flow, default=str), flush=True)
    every = [r for rows in runs.values() for r in rows]
    return {
        "database": population.describe(),
        "runs": runs,
        "median_seconds": medians,
        "speedup": round(medians["baseline"] / medians["batched"], 1)
        if "baseline" in medians
        else None,
        "same_decisions": all(r["same_decisions_as_first"] for r in every),
        "checks_ok": all(r["checks_ok"] for r in every),
        "served": flow,
        "met": medians["batched"] < TARGET_SECONDS
        and all(r["checks_ok"] and r["same_decisions_as_first"] for r in every),
    }


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Offers: campaign sweep as a background job, batched",
        "",
        f"On {m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}; "
        + "; ".join(
            f"{b}: measured {r.get('date', doc['date'])} with `{r.get('command', doc['command'])}`"
            for b, r in doc["backends"].items()
        )
        + ".",
        "",
        f"`OfferEngine.sweep` of the built-in campaign over a fresh database of "
        f"{doc['users']:,} users signed up over the last 23 h (the users of the sweep above), "
        f"in a fresh process: `before` is commit `{doc['baseline']}` (one transaction per "
        "decision), `after` this tree (one transaction per batch of 2,000 users). "
        f"{doc['rounds']} rounds taking turns, the offer tables emptied before each sweep; "
        "every sweep is checked (one decision per user, a coupon for every issued decision "
        "and none without, the budget counter equal to the coupons) and every user's decision "
        "compared with the first sweep's. `CPUs busy before` is how many of the 2 CPUs other "
        "processes kept busy just before each sweep (the machine is shared). (The section "
        "above measured the per-user sweep behind a synchronous request, before this change.)",
        "",
        "| database | evaluated | issued | holdout | before s (median) | after s (median) | "
        "speedup | after, each round s | CPUs busy before each (before / after) | same "
        "decisions | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for backend, row in doc["backends"].items():
        after = row["runs"]["batched"]
        mix = after[0]["decisions"]
        before = row["median_seconds"].get("baseline")
        before_text = "—" if before is None else f"{before:.1f}"
        speedup = "—" if row["speedup"] is None else f"{row['speedup']:g}x"
        each = ", ".join(f"{r['seconds']:.1f}" for r in after)
        busy = "; ".join(
            " / ".join(f"{r['cpus_busy_before']:.2f}" for r in pair)
            for pair in zip(row["runs"].get("baseline", after), after, strict=False)
        )
        out.append(
            f"| {backend} | {after[0]['evaluated']:,} | {mix.get('issued', 0):,} | "
            f"{mix.get('holdout', 0):,} | {before_text} | "
            f"{row['median_seconds']['batched']:.1f} | {speedup} | {each} | {busy} | "
            f"{'yes' if row['same_decisions'] else 'NO'} | "
            f"{'ok' if row['checks_ok'] else 'FAILED'} |"
        )
    out.append("")
    for backend, row in doc["backends"].items():
        out.append(
            f"- Target {doc['users']:,} users in under {TARGET_SECONDS:g} s ({backend}): "
            f"{row['median_seconds']['batched']:.1f} s, **{'met' if row['met'] else 'not met'}**."
        )
    flows = {b: r["served"] for b, r in doc["backends"].items() if r.get("served")}
    if flows:
        out += [
            "",
            "Served (one `python -m service` process): `POST /v1/campaigns/"
            f"{BUILT_IN}/run` answers at once with the job, a second POST while it runs is "
            "refused, and `GET .../runs/{job_id}` is polled every 0.2 s until the job is done.",
            "",
            "| database | POST status | POST s | second POST | job state | job s | "
            "POST to done s |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for backend, f in flows.items():
            out.append(
                f"| {backend} | {f['post_status']} | {f['post_seconds']:.3f} | "
                f"{f['second_post_status']} | {f['job']['state']} | "
                f"{f['job']['seconds'] or float('nan'):.1f} | {f['until_done_seconds']:.1f} |"
            )
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--baseline", default=BASELINE, help="commit of the per-user sweep ('' to skip it)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="wait at most this long for idle CPUs"
    )
    parser.add_argument("--no-served", action="store_true", help="skip the served flow")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where sweep.json goes")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    trees: dict[str, Path] = {}
    if args.baseline:
        trees["baseline"] = export(args.baseline)
    trees["batched"] = ROOT
    backends = [args.backend] if args.backend else list(BACKENDS)
    previous = args.out / "sweep.json"
    kept = json.loads(previous.read_text()).get("backends", {}) if previous.is_file() else {}
    results: dict[str, Any] = {
        "users": args.users,
        "rounds": args.rounds,
        "baseline": args.baseline or None,
        "backends": {b: row for b, row in kept.items() if b not in backends},  # not re-measured
    }
    for backend in backends:
        with fresh_database(backend, "recoffer_bench_sweep") as url:
            if url is None:
                continue
            row = measure(backend, url, trees, args)
            row["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            row["command"] = this_command()
            results["backends"][backend] = row
        save("sweep", this_command(), results, args.out)  # after each database: nothing lost
    for backend, row in results["backends"].items():
        print(backend, "median seconds", row["median_seconds"], "met", row["met"])


if __name__ == "__main__":
    main()
