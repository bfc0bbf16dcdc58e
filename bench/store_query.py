"""Time the session manager's store answering listings and stats over many flows.

    python bench/store_query.py [--flows 100000] [--body 2000] [--batch 128]
                                [--backend sqlite|postgresql|both] [--db PATH] [--postgres URL]

Builds a store with one session of ``--flows`` flows (response bodies of
random size up to twice ``--body`` bytes), ingested ``--batch`` at a time as
the proxy ships them, and reports the CPU each flow cost to store (in this
process, and in a throwaway PostgreSQL server's processes).  Then it
times each query: the first run, and the median of the next five.  A query
the store pushes down to SQL reads only the summary columns; one with a
residual (``~b``, ``~h``) decodes every candidate flow, and is shown for
comparison.

With ``--backend postgresql`` or ``both`` (the default), the same flows go
into PostgreSQL too: the database ``--postgres`` names, or else a throwaway
local server started the way the tests start one (tests/pgcluster.py:
Debian's server, fsync off).  Ingest is also timed for the same batches sent
again (a replay after a lost acknowledgement: every flow a conflict), and
the query times are printed side by side.
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
from typing import Any

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


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of a local PostgreSQL server so far: every live process of it, and those it has reaped."""
    if postmaster is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:  # utime, stime, and its reaped children's
            total += sum(int(v) for v in fields[11:15]) / tick
        elif ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def build(path: str, count: int, body_size: int, batch_size: int, postmaster: int | None = None) -> tuple[Any, int]:
    """Ingest ``count`` flows in batches as the proxy ships them; report the CPU each flow cost
    (and, for a local PostgreSQL server, the server's)."""
    store = open_store(path)
    session_id = store.create_session("bench")["id"]
    rnd = random.Random(1)
    flows = [packed_flow(i, rnd, body_size) for i in range(count)]
    server_before = server_cpu(postmaster)
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    longest = 0.0  # the CPU of the costliest call: how long the store can hold a CPU at once
    for first in range(0, count, batch_size):
        batch = [(i + 1, [session_id], flows[i]) for i in range(first, min(count, first + batch_size))]
        call = time.process_time()
        store.ingest("bench", batch)
        longest = max(longest, time.process_time() - call)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    server = (server_cpu(postmaster) - server_before) / count * 1e6
    stored = store.get_session(session_id)["flow_count"]
    if stored != count:
        raise SystemExit(f"the store holds {stored} of {count} flows: ingest rejected some")
    size = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
    user, system = ((after.ru_utime - cpu.ru_utime) / count * 1e6, (after.ru_stime - cpu.ru_stime) / count * 1e6)
    backend = store.health()["backend"]
    print(f"{backend}: ingested {count} flows in batches of {batch_size} in {elapsed:.1f} s ({count / elapsed:.0f}/s),"
          f" CPU per flow in this process {user:.1f} us user + {system:.1f} us system,"
          f" longest call {longest * 1e3:.1f} ms CPU" + (f", store {size / 1e6:.0f} MB" if size else "")
          + (f", server CPU per flow {server:.1f} us" if postmaster is not None else ""))
    # The same batches again, as after a lost acknowledgement: nothing new may be stored.
    replay = [(i + 1, [session_id], flows[i]) for i in range(count)]
    started = time.perf_counter()
    for first in range(0, count, batch_size):
        store.ingest("bench", replay[first : first + batch_size])
    elapsed = time.perf_counter() - started
    if store.get_session(session_id)["flow_count"] != count:
        raise SystemExit("a replayed batch stored flows twice")
    print(f"{backend}: replayed the same {count} flows in {elapsed:.1f} s ({count / elapsed:.0f}/s), none stored twice")
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


def run_queries(store: Any, session_id: int) -> list[tuple[str, float, float, int | None]]:
    rows = []
    for label, kwargs in QUERIES:
        result: list[Any] = []
        first, median = measure(lambda: result.append(store.list_flows(session_id, **kwargs)))
        rows.append((label, first, median, result[-1][1]))
    first, median = measure(lambda: store.stats(session_id))
    rows.append(("stats", first, median, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=2000, help="mean response body size in bytes")
    parser.add_argument("--batch", type=int, default=128, help="flows per ingest call (one transaction)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database (default: a throwaway local server)")
    options = parser.parse_args()
    databases = []
    cluster = None
    if options.backend in ("sqlite", "both"):
        databases.append(options.db or os.path.join(tempfile.mkdtemp(prefix="store-bench-"), "capture.sqlite"))
    if options.backend in ("postgresql", "both"):
        if options.postgres:
            databases.append(options.postgres)
        else:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
            import pgcluster

            reason = pgcluster.missing_reason()
            if reason is not None:
                raise SystemExit(f"no PostgreSQL to measure: {reason}")
            cluster = pgcluster.Cluster()
            cluster.start()
            databases.append(cluster.create_database())
    try:
        results = []
        for database in databases:
            postmaster = cluster.pid if cluster is not None and database.startswith("postgresql:") else None
            store, session_id = build(database, options.flows, options.body, options.batch, postmaster)
            results.append((store.health()["backend"], run_queries(store, session_id)))
            store.close()
    finally:
        if cluster is not None:
            cluster.remove()
    header = f"{'query':40}" + "".join(f" {name + ' first':>17} {name + ' median':>17}" for name, _ in results)
    print(header + f" {'total':>7}")
    for i, (label, *_rest) in enumerate(results[0][1]):
        line = f"{label:40}"
        for _, rows in results:
            line += f" {rows[i][1]:14.1f} ms {rows[i][2]:14.1f} ms"
        total = results[0][1][i][3]
        print(line + (f" {total:7}" if total is not None else ""))


if __name__ == "__main__":
    main()
