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
    for name, render in (
        ("train_online_retail", quality),
        ("train_synthetic", synthetic),
        ("api_latency", api),
    ):
        doc = _load(name)
        if doc is not None:
            parts += render(doc)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
