"""Open-loop HTTP load at a constant rate over keep-alive connections (no coordinated omission).

Request i is due at start + i / rate; its latency runs from that due time to the last byte of
the response, so a slow server is charged for the queue it causes. Prints one JSON object.
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
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        if status >= 400:
            errors.append(status)
    writer.close()


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
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[int] = []
    workers = [
        asyncio.create_task(_connection(host, port, queue, latencies, errors))
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
    return {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--paths-file", required=True, help="one request path per line")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    args = parser.parse_args()
    paths = [p for p in Path(args.paths_file).read_text().splitlines() if p]
    headers = dict(h.split(": ", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(args.host, args.port, paths, args.rate, args.seconds, args.connections, headers)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
