"""Time the session manager's store answering listings and stats over many flows.

    python bench/store_query.py [--flows 100000] [--body 2000] [--batch 128] [--db PATH]

Builds a store with one session of ``--flows`` flows (response bodies of
random size up to twice ``--body`` bytes), ingested ``--batch`` at a time as
the proxy ships them, and reports the CPU each flow cost to store.  Then it
times each query: the first run, and the median of the next five.  A query
the store pushes down to SQL reads only the summary columns; one with a
residual (``~b``, ``~h``) decodes every candidate flow, and is shown for
comparison.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capture.flow import Flow, Message  # noqa: E402
from capture.sessiond.store import open_store  # noqa: E402

T0 = 1_700_000_000.0
HOSTS = ["example.com", "api.example.com", "cdn.example.org", "static.test", "login.test", "metrics.test"]
METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE", "OPTIONS"]
STATUSES = [200] * 10 + [201, 204, 301, 304, 404, 404, 500, 502, 0]
TYPES = [b"application/json", b"text/html; charset=utf-8", b"image/png", b"text/css", b"application/javascript"]


def packed_flow(i: int, rnd: random.Random, body_size: int) -> bytes:
    status = rnd.choice(STATUSES)
    host = rnd.choice(HOSTS)
    path = rnd.choice(["/api/items/", "/static/app", "/img/logo", "/login", "/v2/users/"]) + str(i)
    body = os.urandom(rnd.randint(0, 2 * body_size)) if body_size else b""
    response = None
    if status:
        response = Message(((b"Content-Type", rnd.choice(TYPES)), (b"Server", b"bench")), body, len(body), False)
    start = T0 + i * 0.01
    return Flow(
        client=f"10.0.0.{rnd.randint(1, 40)}",
        client_port=rnd.randint(30000, 60000),
        scheme="https",
        host=host,
        port=443,
        method=rnd.choice(METHODS),
        path=path,
        request=Message(((b"Host", host.encode()),), b"", 0, False),
        status=status,
        response=response,
        start=start,
        request_done=start + 0.001,
        response_start=start + 0.01 if status else None,
        end=start + rnd.random(),
        error="" if status else "connection reset",
    ).pack()


def build(path: str, count: int, body_size: int, batch_size: int) -> tuple[Store, int]:
    """Ingest ``count`` flows in batches as the proxy ships them; report the CPU each flow cost."""
    store = open_store(path)
    session_id = store.create_session("bench")["id"]
    rnd = random.Random(1)
    flows = [packed_flow(i, rnd, body_size) for i in range(count)]
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    longest = 0.0  # the CPU of the costliest call: how long the store can hold a CPU at once
    for first in range(0, count, batch_size):
        batch = [(i + 1, [session_id], flows[i]) for i in range(first, min(count, first + batch_size))]
        call = time.process_time()
        store.ingest("bench", batch)
        longest = max(longest, time.process_time() - call)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    stored = store.get_session(session_id)["flow_count"]
    if stored != count:
        raise SystemExit(f"the store holds {stored} of {count} flows: ingest rejected some")
    size = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
    user, system = ((after.ru_utime - cpu.ru_utime) / count * 1e6, (after.ru_stime - cpu.ru_stime) / count * 1e6)
    print(f"ingested {count} flows in batches of {batch_size} in {elapsed:.1f} s ({count / elapsed:.0f}/s),"
          f" CPU per flow {user:.1f} us user + {system:.1f} us system, longest call {longest * 1e3:.1f} ms CPU,"
          f" store {size / 1e6:.0f} MB")
    return store, session_id


QUERIES = [
    ("no filter", {}),
    ("no filter, offset 50000", {"offset": 50000}),
    ("~m POST", {"filter": "~m POST"}),
    ("~d example", {"filter": "~d example"}),
    ("~c 404", {"filter": "~c 404"}),
    ("~src 10.0.0.5", {"filter": "~src 10.0.0.5"}),
    ("~u /api/", {"filter": "~u /api/"}),
    ("~m POST & ~c 201 & ~d api", {"filter": "~m POST & ~c 201 & ~d api"}),
    ("!~a & ~s", {"filter": "!~a & ~s"}),
    ("~ts json | ~e", {"filter": "~ts json | ~e"}),
    ("~u 'items/[0-9]+7$'", {"filter": "~u 'items/[0-9]+7$'"}),
    ("sort=status", {"sort": "status"}),
    ("sort=duration desc", {"sort": "duration", "order": "desc"}),
    ("sort=size desc", {"sort": "size", "order": "desc"}),
    ("~m POST sort=size desc", {"filter": "~m POST", "sort": "size", "order": "desc"}),
    ("residual: ~hs bench & ~c 500", {"filter": "~hs bench & ~c 500"}),
    ("residual: ~b zzz (decodes all)", {"filter": "~b zzz"}),
]


def measure(call, runs: int = 5) -> tuple[float, float]:
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return first * 1000, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=2000, help="mean response body size in bytes")
    parser.add_argument("--batch", type=int, default=128, help="flows per ingest call (one transaction)")
    parser.add_argument("--db", help="store file (default: a temporary one)")
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="store-bench-")
    path = options.db or os.path.join(directory, "capture.sqlite")
    store, session_id = build(path, options.flows, options.body, options.batch)
    print(f"{'query':40} {'first ms':>9} {'median ms':>10} {'total':>7}")
    for label, kwargs in QUERIES:
        result = []
        first, median = measure(lambda: result.append(store.list_flows(session_id, **kwargs)))
        print(f"{label:40} {first:9.1f} {median:10.1f} {result[-1][1]:7}")
    first, median = measure(lambda: store.stats(session_id))
    print(f"{'stats':40} {first:9.1f} {median:10.1f}")
    store.close()


if __name__ == "__main__":
    main()
