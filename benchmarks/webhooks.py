"""Webhook delivery through a receiver outage: every event delivered once it returns, none
lost, the order per coupon kept (issue 12, item 6).

For each database (SQLite, PostgreSQL): a fresh one; a real service (``python -m service``
with two workers, so two senders claim from one outbox) with webhooks on at their default
backoff (2 s doubled up to 600 s, 20 tries) and a 5 s expiry scan; a real receiver process
that checks every signature and appends what it got, in arrival order, to a file. Coupons are
issued through the API (a user signs up, views 11 products, is evaluated) at a steady pace and
every second one is redeemed; ``coupon.expiring`` follows from the scan (here the built-in
coupon lives 1 h and the lead time is 0.99 h, so it is written 36 s after the issue). After
``--up`` seconds the receiver is killed (SIGKILL) and stays down ``--down`` seconds while
coupons go on being issued and redeemed; then it is started again on the same port and the
producing stops. Measured: events in the outbox
against distinct event ids received (signed), duplicates, whether each coupon's events
arrived in the outbox's order, and the time from the receiver's return until the last event
arrived (the drain, bounded by the backoff wait in progress when it came back).

Run: ``python -m benchmarks.webhooks`` (about 3 minutes per database). The machine is shared
with other agents: the pace reached and the drain time move with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, ROOT, WORK, save, this_command
from benchmarks.harness import BACKENDS, Server, free_port, fresh_database
from benchmarks.offers import MARKETING_KEY, call, uncapped_campaigns

# coupon.expiring within the run: coupons of 1 h, announced 0.99 h before they expire (a lead
# must be shorter than a coupon's life for it to be announced at all)
COUPON_TTL_HOURS = 1
EXPIRING_LEAD_HOURS = 0.99


def _campaigns(folder: Path) -> Path:
    """The benchmarks' uncapped built-in campaign, with coupons of ``COUPON_TTL_HOURS``."""
    path = uncapped_campaigns(folder)
    path.write_text(path.read_text() + f"coupon_ttl_hours = {COUPON_TTL_HOURS}\n")
    return path


SECRET = "bench-webhook-secret-0123456789"
FRONTEND_KEY = "bench-frontend-key-0123456789"
ADMIN_KEY = "bench-admin-key-0123456789abc"
CAMPAIGN = "new_user_high_intent"


# --- the receiver (a process of its own: ``python -m benchmarks.webhooks receive``) -----------


def receive(port: int, out: Path) -> None:
    """Serve POSTs on ``port``: check the signature, append one JSON line per request."""
    from service.delivery.events import SIGNATURE_HEADER, verify

    lock = threading.Lock()
    sink = out.open("a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signed = verify(SECRET, self.headers.get(SIGNATURE_HEADER, ""), raw, time.time())
            doc = json.loads(raw)
            line = {"id": doc["id"], "type": doc["type"], "signed": signed, "at": time.time()}
            with lock:
                sink.write(json.dumps(line) + "\n")
            self.send_response(200 if signed else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def start_receiver(port: int, out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.webhooks", "receive", str(port), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except Exception as exc:  # 501 for a GET means it listens
            if "501" in str(exc):
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the receiver did not start")


# --- the producer ------------------------------------------------------------------------


class Producer(threading.Thread):
    """Issues coupons through the API at ``per_second`` and redeems every second one."""

    def __init__(self, port: int, per_second: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port, self.per_second, self.prefix = port, per_second, prefix
        self.stop_event = threading.Event()
        self.issued = 0
        self.redeemed = 0
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        started = time.monotonic()
        while not self.stop_event.is_set():
            n += 1
            try:
                self._one(f"{self.prefix}-{n}")
            except Exception as exc:  # counted, not fatal: the figures say what happened
                self.errors.append(str(exc)[:200])
            pause = started + n / self.per_second - time.monotonic()
            if pause > 0:
                self.stop_event.wait(pause)

    def _one(self, user: str) -> None:
        now = time.time()
        signed_up = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
        call(self.port, "PUT", f"/v1/users/{user}", FRONTEND_KEY, {"signed_up_at": signed_up})
        views = [{"user_id": user, "type": "view", "item_id": f"i{k}"} for k in range(11)]
        call(self.port, "POST", "/v1/events", FRONTEND_KEY, {"events": views})
        status, answer, _ = call(
            self.port, "POST", "/v1/offers/evaluate", FRONTEND_KEY, {"user_id": user}
        )
        coupon = answer.get("coupon") if status == 200 else None
        if coupon is None:
            return  # held out
        self.issued += 1
        if self.issued % 2 == 0:
            status, _, _ = call(
                self.port,
                "POST",
                f"/v1/coupons/{coupon['code']}/redeem",
                FRONTEND_KEY,
                {
                    "user_id": user,
                    "order_id": f"o-{user}",
                    "order_amount": "40.00",
                    "currency": "EUR",
                },
            )
            if status == 200:
                self.redeemed += 1


# --- one database ------------------------------------------------------------------------


def outbox(url: str) -> list[tuple[int, str, str, str, str]]:
    """(id, event id, type, coupon, state) of every outbox event, in id order."""
    from sqlalchemy import create_engine, select

    from service.tables import webhook_events as e

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = select(e.c.id, e.c.event_id, e.c.type, e.c.coupon_ref, e.c.state)
            return [
                (int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]))
                for r in conn.execute(query.order_by(e.c.id))
            ]
    finally:
        engine.dispose()


def attempts(url: str) -> int:
    from sqlalchemy import create_engine, func, select

    from service.tables import webhook_deliveries

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(webhook_deliveries)).scalar_one()
            )
    finally:
        engine.dispose()


def received(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_backend(
    url: str, up: float, down: float, pace: float, drain_limit: float
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="webhooks-", dir=WORK))
    got = folder / "received.jsonl"
    receiver_port = free_port()
    receiver = start_receiver(receiver_port, got)
    env = {
        "RECOFFER_DATABASE_URL": url,
        "RECOFFER_MODEL_DIR": str(folder / "models"),
        "RECOFFER_FRONTEND_KEYS": FRONTEND_KEY,
        "RECOFFER_MARKETING_KEYS": MARKETING_KEY,
        "RECOFFER_ADMIN_KEYS": ADMIN_KEY,
        "RECOFFER_LOG_LEVEL": "ERROR",
        "RECOFFER_ACCESS_LOG": "false",
        "RECOFFER_CAMPAIGNS_FILE": str(_campaigns(folder)),
        "RECOFFER_WEBHOOK_EXPIRING_LEAD_HOURS": str(EXPIRING_LEAD_HOURS),
        "RECOFFER_WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/hooks",
        "RECOFFER_WEBHOOK_SECRET": SECRET,
        "RECOFFER_WEBHOOK_EXPIRING_SCAN_SECONDS": "5",
    }
    (folder / "models").mkdir()

    def command(port: int) -> list[str]:
        return [PYTHON, "-m", "service", "--workers", "2", "--port", str(port)]

    try:
        with Server(env, command=command, stop_seconds=60) as server:
            producer = Producer(server.port, pace, "hook")
            producer.start()
            time.sleep(up)
            receiver.send_signal(signal.SIGKILL)
            receiver.wait()
            down_at = time.monotonic()
            before_outage = len(received(got))
            time.sleep(down)
            produced_at_return = len(outbox(url))
            receiver = start_receiver(receiver_port, got)
            back_at = time.monotonic()
            producer.stop_event.set()
            producer.join()
            last_event = None
            deadline = back_at + drain_limit
            while time.monotonic() < deadline:
                events = outbox(url)
                ids = {r[1] for r in events}
                got_ids = {r["id"] for r in received(got) if r["signed"]}
                if ids <= got_ids and all(r[4] == "delivered" for r in events):
                    last_event = time.monotonic()
                    break
                time.sleep(0.25)
            # the expiry scan may still add events of coupons issued at the very end: let
            # it run once more, then take the final count
            time.sleep(6)
            drained_again = time.monotonic() + 60
            while time.monotonic() < drained_again:
                events = outbox(url)
                if all(r[4] == "delivered" for r in events):
                    break
                time.sleep(0.25)
            tries = attempts(url)
    finally:
        receiver.kill()
        receiver.wait()
    events = outbox(url)
    lines = received(got)
    signed = [r for r in lines if r["signed"]]
    distinct = {r["id"] for r in signed}
    produced = {r[1] for r in events}
    position = {r[1]: (r[3], r[0]) for r in events}  # event id -> (coupon, outbox id)
    seen: dict[str, list[int]] = defaultdict(list)
    first: set[str] = set()
    for r in signed:
        if r["id"] in first or r["id"] not in position:
            continue
        first.add(r["id"])
        coupon, outbox_id = position[r["id"]]
        seen[coupon].append(outbox_id)
    out_of_order = sum(1 for ids in seen.values() if ids != sorted(ids))
    by_type: dict[str, int] = defaultdict(int)
    for event in events:
        by_type[event[2]] += 1
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "pace_per_second": pace,
        "up_seconds": up,
        "down_seconds": round(back_at - down_at, 1),
        "coupons_issued": producer.issued,
        "coupons_redeemed": producer.redeemed,
        "producer_errors": len(producer.errors),
        "events_produced": len(produced),
        "events_by_type": dict(by_type),
        "events_received_before_outage": before_outage,
        "events_produced_by_return": produced_at_return,
        "events_received_distinct": len(distinct & produced),
        "events_lost": len(produced - distinct),
        "unknown_received": len(distinct - produced),
        "deliveries_received": len(signed),
        "duplicates": len(signed) - len(distinct),
        "bad_signatures": len(lines) - len(signed),
        "attempts_logged": tries,
        "coupons_checked_for_order": len(seen),
        "coupons_out_of_order": out_of_order,
        "drain_seconds": None if last_event is None else round(last_event - back_at, 1),
        "undelivered_at_end": sum(1 for r in events if r[4] != "delivered"),
    }


def render(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    out = [
        "## Webhooks: delivery through a 60 s receiver outage",
        "",
        f"Measured {doc['date']} on {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}, with `{doc['command']}`. "
        "The machine is shared with other agents (its load moves the pace and the drain).",
        "",
        "A real service (`python -m service --workers 2`: two senders on one outbox) with "
        "webhooks at their default backoff (2 s doubled up to 600 s, jitter) and a 5 s expiry "
        "scan; a real receiver process checking every signature. Coupons are issued through "
        "the API at a steady pace (every second one redeemed); the receiver is killed after "
        f"{doc['up_seconds']:g} s, stays down (`down s`, at least 60) while issuing and "
        "redeeming go on, then comes back on the same port. `drain` is the time from its "
        "return until the last event arrived: an event written as the outage began has "
        "failed five or six times when the receiver returns and waits up to 64 s (the default "
        "backoff) before its next try, so the drain is about that wait, plus the poll and the "
        "writes of each try on this loaded machine; a lower "
        "`RECOFFER_WEBHOOK_BACKOFF_MAX_SECONDS` shortens it.",
        "",
        "| database | down s | coupons issued / redeemed | events (issued / redeemed / "
        "expiring) | received (distinct) | lost | duplicates | bad signatures | coupons in "
        "order | tries logged | drain s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    ok = True
    for backend, r in doc["backends"].items():
        t = r["events_by_type"]
        types = " / ".join(
            str(t.get(k, 0)) for k in ("coupon.issued", "coupon.redeemed", "coupon.expiring")
        )
        in_order = r["coupons_checked_for_order"] - r["coupons_out_of_order"]
        out.append(
            f"| {backend} | {r['down_seconds']:g} | {r['coupons_issued']} / "
            f"{r['coupons_redeemed']} | "
            f"{r['events_produced']} ({types}) | {r['events_received_distinct']} | "
            f"{r['events_lost']} | {r['duplicates']} | {r['bad_signatures']} | "
            f"{in_order} of {r['coupons_checked_for_order']} | {r['attempts_logged']} | "
            f"{r['drain_seconds']} |"
        )
        ok &= r["events_lost"] == 0 and r["coupons_out_of_order"] == 0
        ok &= r["undelivered_at_end"] == 0 and r["drain_seconds"] is not None
        ok &= r["down_seconds"] >= 60
    verdict = "**met**" if ok else "**not met**"
    out += [
        "",
        "- Target: with the receiver down for 60 s, every event delivered once it returns, "
        f"none lost, the order per coupon kept: {verdict}.",
        "- Duplicates are allowed (at least once; the receiver deduplicates by event id): "
        "an event whose answer was lost when the receiver was killed is sent again.",
        "",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    serve = sub.add_parser("receive", help="(internal) the receiver process")
    serve.add_argument("port", type=int)
    serve.add_argument("out", type=Path)
    parser.add_argument("--up", type=float, default=10.0, help="seconds before the outage")
    parser.add_argument("--down", type=float, default=60.0, help="seconds of outage")
    parser.add_argument("--pace", type=float, default=4.0, help="users evaluated per second")
    parser.add_argument("--drain-limit", type=float, default=300.0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    if args.what == "receive":
        receive(args.port, args.out)
        return
    results: dict[str, Any] = {}
    for backend in [b for b in BACKENDS if b in args.backends.split(",")]:
        with fresh_database(backend, "webhooks") as url:
            if url is None:
                continue
            print(f"{backend}: running ({args.up:g} s up, {args.down:g} s down)", flush=True)
            results[backend] = run_backend(url, args.up, args.down, args.pace, args.drain_limit)
            print(json.dumps(results[backend]), flush=True)
    first: dict[str, Any] = next(iter(results.values()), {})
    save(
        "webhooks",
        this_command(),
        {
            "up_seconds": args.up,
            "down_seconds": first.get("down_seconds", args.down),
            "backends": results,
        },
    )


if __name__ == "__main__":
    main()
