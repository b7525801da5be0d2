"""Open-loop HTTP load at a constant rate over keep-alive connections (no coordinated omission).

Request i is due at start + i / rate; its latency runs from that due time to the last byte of
the response, so a slow server is charged for the queue it causes. Prints one JSON object.

Requests are GETs of ``--paths-file`` (one path a line), or any method with a JSON body from
``--requests-file`` (one ``{"method", "path", "body"}`` object a line). ``--group-field NAME``
reads NAME from each JSON response and adds counts and percentiles per value under "groups".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path

import numpy as np


async def _connection(
    host: str,
    port: int,
    queue: asyncio.Queue[tuple[float, bytes] | None],
    latencies: list[float],
    errors: list[int],
    group_field: str | None = None,
    labels: list[str] | None = None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    while (job := await queue.get()) is not None:
        due, request = job
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        if status >= 400:
            errors.append(status)
        if group_field is not None and labels is not None:
            labels.append(_label(body, group_field, status))
    writer.close()


def _label(body: bytes, field: str, status: int) -> str:
    """The response's ``field`` (parsed after the latency was taken), or ``http_<status>``."""
    if status >= 400:
        return f"http_{status}"
    try:
        return str(json.loads(body)[field])
    except (ValueError, KeyError, TypeError):
        return "unparsed"


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
    }


async def run(
    host: str,
    port: int,
    paths: list[str],
    rate: float,
    seconds: float,
    connections: int,
    headers: dict[str, str],
) -> dict[str, object]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode() for p in paths]
    return await run_requests(host, port, requests, rate, seconds, connections)


def encode_request(
    host: str, method: str, path: str, body: object, headers: dict[str, str]
) -> bytes:
    """One HTTP/1.1 request with a JSON body (none when ``body`` is None)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body is None:
        return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def run_requests(
    host: str,
    port: int,
    requests: list[bytes],
    rate: float,
    seconds: float,
    connections: int,
    group_field: str | None = None,
) -> dict[str, object]:
    """Send ``rate * seconds`` of ``requests`` (cycling) open loop; latency percentiles."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[int] = []
    labels: list[str] = []
    workers = [
        asyncio.create_task(_connection(host, port, queue, latencies, errors, group_field, labels))
        for _ in range(connections)
    ]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    cycle = itertools.cycle(requests)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, next(cycle)))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    result: dict[str, object] = {
        "rate": rate,
        "requests": len(latencies),
        "achieved_rate": len(latencies) / elapsed,
        "errors": len(errors),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
    }
    if group_field is not None:
        result["p95_ms"] = float(np.percentile(ms, 95))
        by_label: dict[str, list[float]] = {}
        for label, latency in zip(labels, latencies, strict=True):
            by_label.setdefault(label, []).append(latency)
        result["groups"] = {
            label: {"requests": len(values), **_percentiles(values)}
            for label, values in sorted(by_label.items())
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--paths-file", help="one request path per line (GET)")
    what.add_argument(
        "--requests-file", help='one JSON object per line: {"method", "path", "body"}'
    )
    parser.add_argument("--group-field", help="report percentiles per value of this field")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.paths_file:
        paths = [p for p in Path(args.paths_file).read_text().splitlines() if p]
        requests = [encode_request(args.host, "GET", p, None, headers) for p in paths]
    else:
        lines = [json.loads(line) for line in Path(args.requests_file).read_text().splitlines()]
        requests = [
            encode_request(args.host, r["method"], r["path"], r.get("body"), headers) for r in lines
        ]
    result = asyncio.run(
        run_requests(
            args.host,
            args.port,
            requests,
            args.rate,
            args.seconds,
            args.connections,
            args.group_field,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
