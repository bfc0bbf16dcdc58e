"""WebSocket echo load through a proxy, for bench/websocket.py.

Usage: ``wsload.py URL PROXY CONNECTIONS SECONDS SIZE``.  Each connection
sends a binary message of SIZE bytes and waits for its echo, in a loop, for
SECONDS; prints one JSON line: echoes, messages (both directions), the
rate, latency percentiles and errors.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from websockets.asyncio.client import connect


async def one(url: str, proxy: str, deadline: float, payload: bytes, latencies: list[float], errors: list[str]) -> int:
    echoes = 0
    try:
        async with connect(url, proxy=proxy, compression=None, max_size=None, ping_interval=None) as ws:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                await ws.send(payload)
                if await ws.recv() != payload:
                    errors.append("echo differs")
                    break
                latencies.append(time.perf_counter() - sent)
                echoes += 1
    except Exception as e:  # counted and reported, the other connections go on
        errors.append(f"{type(e).__name__}: {e}")
    return echoes


async def main(url: str, proxy: str, connections: int, seconds: float, size: int) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic()
    counts = await asyncio.gather(*(one(url, proxy, start + seconds, b"\x5a" * size, latencies, errors)
                                    for _ in range(connections)))
    elapsed = time.monotonic() - start
    echoes = sum(counts)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    print(json.dumps({
        "echoes": echoes, "messages": 2 * echoes, "seconds": round(elapsed, 3),
        "messages_per_s": round(2 * echoes / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 3), "p99_ms": round(quantiles[98] * 1000, 3),
        "errors": len(errors), "first_error": errors[0] if errors else None,
    }), flush=True)


if __name__ == "__main__":
    url, proxy, connections, seconds, size = sys.argv[1:6]
    asyncio.run(main(url, proxy, int(connections), float(seconds), int(size)))
