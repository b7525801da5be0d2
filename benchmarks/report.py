"""Render docs/benchmarks.md from benchmarks/results/*.json (every figure with its command)."""

from __future__ import annotations

import json
from typing import Any

from benchmarks.common import RESULTS, ROOT

DOC = ROOT / "docs" / "benchmarks.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _header(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    return [
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}.",
        "",
        f"Command: `{doc['command']}`",
        "",
    ]


def quality(doc: dict[str, Any]) -> list[str]:
    out = ["## Online Retail: model quality", "", *_header(doc)]
    out += [
        f"Temporal split, last 30 days as test; tuning budget {doc['tune_seconds']:g} s on the "
        "validation window before it. `*` marks the candidate served (chosen on validation).",
        "",
    ]
    metrics = doc["quality"]["metrics"]
    served = doc["quality"]["served"]
    names = ("recall@10", "ndcg@10", "precision@10", "hit_rate@10", "coverage@10")
    for protocol in ("all", "novel"):
        out += [
            f"Protocol `{protocol}` ({int(metrics[protocol]['served']['users']):,} users):",
            "",
            "| candidate | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for cand, row in metrics[protocol].items():
            if cand == "served":
                continue
            mark = " *" if served[protocol] == cand else ""
            out.append(f"| {cand}{mark} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " |")
        out.append("")
    recall_all = metrics["all"]["served"]["recall@10"]
    recall_novel = metrics["novel"]["served"]["recall@10"]
    out += [
        f"- Target `all` recall@10 >= 0.36 (repeat reference 0.341): {recall_all:.4f}, "
        f"{_verdict(recall_all >= 0.36)}.",
        f"- Target `novel` recall@10 >= 0.11 (EASE reference 0.106): {recall_novel:.4f}, "
        f"{_verdict(recall_novel >= 0.11)}.",
        "",
    ]
    e2e = doc["end_to_end"]
    seconds = e2e["pipeline_seconds_median"]
    out += [
        "## Online Retail: end-to-end training time (tuning off)",
        "",
        f"Same command with `--tune-seconds 0`, {e2e['repeats']} runs: load + clean + three "
        "nested fits + evaluation of every candidate + gate + publish.",
        "",
        f"- median pipeline time {seconds:.2f} s (process wall time "
        f"{e2e['wall_seconds_median']:.2f} s, imports included), peak RSS "
        f"{e2e['peak_rss_mib']:.0f} MiB",
        f"- breakdown of the last run (s): `{json.dumps(e2e['timings_last'])}`",
        f"- Target <= 15 s on 2 cores: {_verdict(seconds <= 15)}.",
        "",
    ]
    return out


def synthetic(doc: dict[str, Any]) -> list[str]:
    out = ["## Synthetic shops: training time and memory against size", "", *_header(doc)]
    out += [
        "Side by side in one run, each in a fresh process: a bare implicit ALS fit (factors 64, "
        "15 iterations, 2 threads, matrix building excluded) and the whole `recoffer train "
        "--tune-seconds 0` on the same purchases (Parquet).",
        "",
        "| shop | users | items | purchases | bare ALS fit (s) | whole train (s) | ratio of "
        "medians | ratio in each run | peak RSS train (MiB) | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in doc["sizes"]:
        each = ", ".join(f"{r:.2f}" for r in row.get("run_ratios", [])) or "—"
        out.append(
            f"| {row['preset']} | {row['users']:,} | {row['items']:,} | {row['interactions']:,} "
            f"| {row['bare_fit_seconds']:.2f} | {row['train_seconds']:.2f} | "
            f"{row['ratio']:.2f}x | {each} | {row['train_peak_rss_mib']:.0f} | "
            f"{row.get('date', doc['date'])} |"
        )
    two = next((r for r in doc["sizes"] if r["preset"] == "2m"), None)
    if two:
        out += [
            "",
            f"- Target (2M) whole train within 1.5x of the bare fit: {two['ratio']:.2f}x, "
            f"{_verdict(two['ratio'] <= 1.5)}.",
            f"- Target (2M) peak memory <= 1 GiB: {two['train_peak_rss_mib']:.0f} MiB, "
            f"{_verdict(two['train_peak_rss_mib'] <= 1024)}.",
            f"- Where the time goes (2M, last run, s): `{json.dumps(two['runs'][-1]['timings'])}`",
        ]
    out.append("")
    out += ["![training time and peak memory against size](img/training_size.png)", ""]
    return out


def api(doc: dict[str, Any]) -> list[str]:
    out = ["## HTTP API: recommendations", "", *_header(doc)]
    if "recommendations_date" in doc:
        out[2] = out[2].replace(doc["date"], doc["recommendations_date"])
    out += [
        f"Online Retail model {doc['model']} ({doc['users']:,} users, {doc['items']:,} items). "
        "One uvicorn worker (`uvicorn[standard]`) on CPU 0, load generators on CPU 1; SQLite; "
        "access log on (the default). Throughput: wrk, 64 connections. Latency: open-loop "
        "load at a constant rate (`benchmarks/loadgen.py`), measured from each request's due "
        "time.",
        "",
        "| endpoint / user kind | max throughput (req/s) | rate | p50 ms | p90 ms | p99 ms | "
        "p99.9 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "bare": "bare FastAPI, typed constant list of 10",
        "known": "known user (model)",
        "session": "session user (fold-in of 8 views)",
        "unknown": "unknown user (popular)",
    }
    for kind, label in labels.items():
        row = doc.get(kind)
        if not row:
            continue
        lat = row["latency"]
        out.append(
            f"| {label} | {row['throughput_rps']:,.0f} | {lat['rate']:,.0f} | "
            f"{lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
            f"{lat['p999_ms']:.2f} | {int(lat['errors'])} |"
        )
    known = doc["known"]
    ratio = doc["throughput_ratio_known_vs_bare"]
    out += [
        "",
        f"- Target p99 <= 3 ms at 1,000 req/s (known users): {known['latency']['p99_ms']:.2f} ms, "
        f"{_verdict(known['latency']['p99_ms'] <= 3)}.",
        f"- Target throughput >= 50 % of the bare endpoint: {100 * ratio:.0f} %, "
        f"{_verdict(ratio >= 0.5)}.",
        "",
        "## HTTP API: event ingestion",
        "",
        f"Measured {doc.get('ingestion_date', doc['date'])}. `POST /v1/events` with batches of "
        "100 events, wrk with 8 connections, same server setup.",
        "",
        "| database | batches/s | events/s | failed requests |",
        "|---|---:|---:|---:|",
    ]
    for backend, row in doc.get("ingestion", {}).items():
        out.append(
            f"| {backend} | {row['batches_per_second']:,.0f} | {row['events_per_second']:,.0f} "
            f"| {row.get('failures', 0)} |"
        )
    out.append("")
    return out


def _runs(rows: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for backend, row in rows.items():
        code = row.get("code")
        where = ""
        if code:
            dirty = " with uncommitted changes" if code["service_changed_since_commit"] else ""
            where = f", service/ at {code['commit']}{dirty} (digest {code['service_sha256']})"
        out.append(f"- {backend}: measured {row['date']}, `{row['command']}`{where}")
    return out


def _discarded(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    busy = ", ".join(f"{r['other_cpus_busy']:.2f}" for r in rows)
    return f"; {len(rows)} sweep(s) done again, as others kept {busy} CPUs busy during them"


def offers(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    machine = (
        f"{m.get('cpu', '?')}, {m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}"
    )
    out: list[str] = []
    evaluate = doc.get("evaluate", {})
    if evaluate:
        first = next(iter(evaluate.values()))
        lat = first["latency"]
        db = first["database"]
        out += [
            "## Offers: `POST /v1/offers/evaluate` latency",
            "",
            f"On {machine}. One uvicorn worker on CPU 0 with no model (the built-in campaign is "
            f"store-wide), `benchmarks/loadgen.py` on CPU 1: open loop at {lat['rate']:g} req/s "
            f"for {lat['requests'] / lat['rate']:g} s, each request for a different user of a "
            f"fresh database of {db['users']:,} seeded users ({db['events']:,} events): "
            + ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in sorted(db["kinds"].items()))
            + f". {first['warmup_requests']} evaluations of other users warm the server up "
            "first. Latency from each request's due time to the last byte of the answer; every "
            "answer is checked against the decision the seed implies.",
            "",
            "| database | requests | p50 ms | p95 ms | p99 ms | max ms | errors | issued | "
            "holdout | not eligible | answers as seeded |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for backend, row in evaluate.items():
            lat, mix = row["latency"], row["decisions_answered"]
            out.append(
                f"| {backend} | {lat['requests']:,} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} "
                f"| {lat['p99_ms']:.1f} | {lat['max_ms']:.1f} | {int(lat['errors'])} | "
                f"{mix.get('issued', 0):,} | {mix.get('holdout', 0):,} | "
                f"{mix.get('not_eligible', 0):,} | "
                f"{'yes' if row['checks']['answers_as_expected'] else 'NO'} |"
            )
        out += [
            "",
            "By decision (p50 / p99 ms): "
            + "; ".join(
                f"{backend} "
                + ", ".join(
                    f"{kind} {g['p50_ms']:.1f} / {g['p99_ms']:.1f}"
                    for kind, g in row["latency"]["groups"].items()
                )
                for backend, row in evaluate.items()
            )
            + ".",
            "",
        ]
        for backend, row in evaluate.items():
            runs = row.get("runs", [row["latency"]])
            out.append(
                f"- Target p99 <= 25 ms at 100 req/s, no errors ({backend}): "
                f"{row['latency']['p99_ms']:.1f} ms (the median of {len(runs)} runs' p99), "
                f"{sum(int(r['errors']) for r in runs)} errors, {_verdict(row['met'])}."
            )
        out += [
            "",
            "Every run: this machine is shared, so each run also says how many CPUs the "
            "server, PostgreSQL (its helpers and this database's backends) and everyone else "
            "kept busy, and for how long every task waited for the disk (Linux PSI, "
            "`/proc/pressure/io` full). A run during which others kept more than "
            f"{first.get('max_other_cpus', 0.25):g} CPUs busy is done again with new users "
            "(`done again`); the p99 reported is the median of the runs kept.",
            "",
            "| database | run | p50 ms | p95 ms | p99 ms | max ms | errors | server CPU | "
            "PostgreSQL CPUs | other CPUs | disk stall s | |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for backend, row in evaluate.items():
            runs = [(r, "kept") for r in row.get("runs", [])]
            runs += [(r, "done again") for r in row.get("discarded_runs", [])]
            for number, (r, fate) in enumerate(runs, 1):
                out.append(
                    f"| {backend} | {number} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {int(r['errors'])} | "
                    f"{r.get('server_cpu_share', float('nan')):.2f} | "
                    f"{r.get('postgres_cpus_busy', float('nan')):.2f} | "
                    f"{r.get('other_cpus_busy', float('nan')):.2f} | "
                    f"{r.get('io_full_stall_seconds', float('nan')):.2f} | {fate} |"
                )
        breakdowns = {b: r["breakdown"] for b, r in evaluate.items() if r.get("breakdown")}
        if breakdowns:
            out += [
                "",
                "Without load or HTTP: `OfferEngine.evaluate` in-process, one user after the "
                "other, database calls timed from the client (a PING is the pool's pre-ping on "
                "checkout):",
                "",
                "| database | decision | evaluations | median ms | p99 ms | database calls | "
                "median database ms |",
                "|---|---|---:|---:|---:|---:|---:|",
            ]
            for backend, b in breakdowns.items():
                for kind, k in b["by_decision"].items():
                    out.append(
                        f"| {backend} | {kind} | {k['evaluations']:,} | {k['median_ms']:.2f} | "
                        f"{k['p99_ms']:.2f} | {k['database_calls']:g} | "
                        f"{k['median_database_ms']:.2f} |"
                    )
        out += ["", *_runs(evaluate), ""]
    sweep = doc.get("sweep", {})
    if sweep:
        first = next(iter(sweep.values()))
        db = first["database"]
        out += [
            "## Offers: campaign sweep over the window",
            "",
            f"On {machine}. A fresh database of {db['users']:,} users signed up over the last "
            f"23 h ({db['events']:,} events; distinct products viewed: median "
            f"{db['median_distinct_products']:g}, 90th percentile "
            f"{db['p90_distinct_products']:g}; {100 * db['share_more_than_10_views']:.0f} % with "
            f"more than 10 views; {100 * db['share_bought']:.0f} % bought), seeded directly "
            f"(not timed). Then {first['how']}; then the same call again, which must find only "
            "the users still undecided and issue nothing. `engine s` is the sweep's own "
            "`seconds`; `client s` is the whole HTTP call; `PostgreSQL CPUs` and `other CPUs` "
            "are how many CPUs PostgreSQL's processes and anyone else's (this machine is shared) "
            "kept busy meanwhile; a sweep during which others kept more than "
            f"{first.get('max_other_cpus', 0.25):g} CPUs busy is done again (the offer tables "
            "emptied first).",
            "",
            "| database | evaluated | issued | holdout | not eligible | client s | engine s | "
            "users/s | PostgreSQL CPUs | other CPUs | second: evaluated | second: client s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for backend, row in sweep.items():
            a, b = row["first"], row["second"]
            mix = a["decisions"]
            out.append(
                f"| {backend} | {a['evaluated']:,} | {mix.get('issued', 0):,} | "
                f"{mix.get('holdout', 0):,} | {mix.get('not_eligible', 0):,} | "
                f"{a['wall_seconds']:.1f} | {a['seconds']:.1f} | "
                f"{row['first_users_per_second']:,.0f} | "
                f"{a.get('postgres_cpus_busy', float('nan')):.2f} | "
                f"{a.get('other_cpus_busy', float('nan')):.2f} | {b['evaluated']:,} | "
                f"{b['wall_seconds']:.1f} |"
            )
        out.append("")
        for backend, row in sweep.items():
            c = row["checks"]
            out.append(
                f"- Checks ({backend}): users with two decisions {c['users_with_two_decisions']}, "
                f"with two coupons {c['users_with_two_coupons']}; coupons {c['coupons']:,} = "
                f"issued decisions {c['decisions'].get('issued', 0):,}; coupons without an "
                f"issued decision {c['coupons_without_issued_decision']}; users decided unlike "
                f"the seed {c['decided_unlike_the_seed']} (expected eligible "
                f"{row['expected_eligible']:,}); second sweep issued nothing new: "
                f"{'yes' if row['second_issued_nothing'] else 'NO'}"
                f"{_discarded(row.get('discarded_first_sweeps', []))}; {_verdict(row['met'])}."
            )
        breakdowns = {b: r["breakdown"] for b, r in sweep.items() if r.get("breakdown")}
        if breakdowns:
            out += [
                "",
                "Where the time goes: the offer tables emptied (every user undecided again), "
                "then `OfferEngine.sweep` in-process with every database call timed from the "
                "client; what is left is Python (statement building, SQLAlchemy, the rule).",
                "",
                "| database | sweep s | candidates query s | decisions recorded | ms per "
                "recorded decision | database calls per recorded decision | database s | "
                "Python s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for backend, b in breakdowns.items():
                out.append(
                    f"| {backend} | {b['seconds']:.1f} | "
                    f"{b['phases']['candidates']['seconds']:.1f} | {b['recorded']:,} | "
                    f"{b['ms_per_recorded_decision']:.2f} | "
                    f"{b['database_calls_per_recorded_decision']:g} | "
                    f"{b['database_seconds']:.1f} | {b['python_seconds']:.1f} |"
                )
            out.append("")
            for backend, b in breakdowns.items():
                out.append(
                    f"- {backend}, database calls: "
                    + "; ".join(
                        f"{kind} {c['calls']:,} x = {c['seconds']:.1f} s"
                        for kind, c in b["database_calls"].items()
                    )
                    + "."
                )
        for backend, row in sweep.items():
            for label, scans in (
                ("the served sweep", row["first"].get("table_scans")),
                ("the in-process sweep", (row.get("breakdown") or {}).get("table_scans")),
            ):
                if not scans or "offer_decisions" not in scans:
                    continue
                d = scans["offer_decisions"]
                out.append(
                    f"- {backend}, {label}: `offer_decisions` read by {d['seq_scan']:,} "
                    f"sequential scans ({d['seq_tup_read']:,} rows read) and "
                    f"{d['idx_scan']:,} index scans (server autovacuum "
                    f"{'on' if scans['autovacuum']['on'] else 'off'})."
                )
        out += ["", *_runs(sweep), ""]
    return out


def main() -> None:
    parts = [
        "# Benchmarks",
        "",
        "Every figure here was produced by a script in `benchmarks/` and written by "
        "`python -m benchmarks.report` from `benchmarks/results/*.json`. Run them all with "
        "`python3 tasks.py bench` (needs `wrk`: `apt-get install wrk`; the Online Retail parts "
        "need `../shared/data/online-retail/`). The machine is noisy: figures are medians where "
        "runs were repeated, and ratios are taken within one run.",
        "",
    ]
    from benchmarks import (  # issue 14, item 3
        against_commit,
        ann_index,
        ann_libraries,
        backtest_kinds,
        campaign_store,
        capacity,
        clv,
        concurrency,
        console_marketing,
        console_pages,
        eval_scale,
        experiment_guard,
        experiment_serving,
        feedback_overhead,
        import_online_retail,
        lifecycle_sweep,
        loyalty,
        money,
        new_arrivals,
        reliability,
        replicas,
        retrain_pickup,
        segments,
        segments_online_retail,
        serving_memory,
        signals,
        signals_every_visitor,
        simulator,
        spark_engine,
        sweep,
        targeting,
        webhooks,
    )

    for name, render in (
        ("train_online_retail", quality),
        ("train_synthetic", synthetic),
        ("spark_engine", spark_engine.render),  # issue 15, item 1
        ("signals", signals.render),
        ("signals_every_visitor", signals_every_visitor.render),  # issue 14, item 4
        ("retrain_pickup", retrain_pickup.render),
        ("api_latency", api),
        ("against_commit", against_commit.render),
        ("concurrency", concurrency.render),
        ("serving_memory", serving_memory.render),
        ("experiment_serving", experiment_serving.render),  # issue 14, item 3
        ("experiment_guard", experiment_guard.render),  # issue 14, item 3
        ("import_online_retail", import_online_retail.render),
        ("offers", offers),
        ("targeting", targeting.render),  # issue 12, item 4
        ("sweep", sweep.render),
        ("money", money.render),  # issue 12, item 3
        ("reliability", reliability.render),
        ("backtest_kinds", backtest_kinds.render),
        ("campaign_store", campaign_store.render),  # issue 12, item 5
        ("webhooks", webhooks.render),
        ("segments", segments.render),  # issue 12, item 1
        ("segments_online_retail", segments_online_retail.render),
        ("lifecycle_sweep", lifecycle_sweep.render),  # issue 12, item 2
        ("console_marketing", console_marketing.render),  # issue 13, item 2
        ("console_pages", console_pages.render),  # issue 13, items 2 and 3
        ("clv", clv.render),  # issue 13, item 1
        ("loyalty", loyalty.render),  # issue 13, item 1
        ("feedback_overhead", feedback_overhead.render),  # issue 14, target 1
        ("new_arrivals", new_arrivals.render),  # issue 14, item 4
        ("simulator", simulator.render),  # issue 14, item 5
        ("capacity", capacity.render),  # issue 15, item 7 (and docs/scaling.md)
        ("replicas", replicas.render),  # issue 15, item 5
        ("eval_scale", eval_scale.render),  # issue 15, item 2
        ("ann_libraries", ann_libraries.render),  # issue 15, item 4
        ("ann_index", ann_index.render),  # issue 15, item 4
    ):
        doc = _load(name)
        if doc is not None:
            parts += render(doc)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
