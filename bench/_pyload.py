"""Fallback load generator when `wrk` is unavailable: asyncio keep-alive HTTP/1.1 clients.

`python -m bench._pyload --url URL --connections N --duration S` with the bodies file, path, key and
pause before each request in BENCH_BODIES / BENCH_AUTH / BENCH_DELAY_MS (as for the wrk script). Prints the same BENCH_JSON line.
It costs far more CPU than wrk; `bench._load` measures and reports how much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from urllib.parse import urlsplit


async def _client(host, port, path, bodies, cursor, deadline, key, lat, errors, statuses, delay_s):
    reader, writer = await asyncio.open_connection(host, port)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    try:
        while time.perf_counter() < deadline:
            if delay_s:
                await asyncio.sleep(delay_s)
            body = bodies[cursor[0] % len(bodies)]
            cursor[0] += 1
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            started = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length, retry_after = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                retry_after = retry_after or name.lower() == "retry-after"
            await reader.readexactly(length)
            lat.append(time.perf_counter() - started)
            code = status_line.split()[1]
            if not code.startswith(b"2"):
                errors[0] += 1
            kind = code.decode() if code in (b"200", b"429") else "other"
            statuses[kind] += 1
            statuses["429_without_retry_after"] += code == b"429" and not retry_after
    finally:
        writer.close()


async def _main(url: str, connections: int, duration: float, bodies: list[bytes]) -> dict:
    parts = urlsplit(url)
    lat: list[float] = []
    errors, cursor = [0], [0]
    statuses = {"200": 0, "429": 0, "429_without_retry_after": 0, "other": 0}
    delay_s = float(os.environ.get("BENCH_DELAY_MS") or 0) / 1000
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(
        _client(parts.hostname, parts.port, parts.path, bodies, cursor, deadline, os.environ.get("BENCH_AUTH"),
                lat, errors, statuses, delay_s) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in lat) or [0.0]

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    return {"requests": len(lat), "duration_s": elapsed, "bytes": 0, "connect_errors": 0, "read_errors": 0,
            "write_errors": 0, "status_errors": errors[0], "timeouts": 0, "wraps": int(cursor[0] > len(bodies)),
            "lat_mean_ms": statistics.fmean(ms), "lat_p50_ms": pct(50), "lat_p90_ms": pct(90),
            "lat_p99_ms": pct(99), "lat_max_ms": ms[-1], "statuses": statuses}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    with open(os.environ["BENCH_BODIES"], "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    print("BENCH_JSON " + json.dumps(run(_main(a.url, a.connections, a.duration, bodies))), flush=True)


if __name__ == "__main__":
    main()
