#!/usr/bin/env python3
"""WebSocket echo through the appliance, every message stored, optionally beside mitmdump in the same run.

    python bench/websocket.py [--quick] [--peer] [--connections N] [--seconds S] [--size BYTES]

Run with a Python that has ``websockets`` (the project's virtual
environment).  It starts bench/wsecho.py as the origin, the appliance with
a session recording everything (and mitmdump with --peer, from the virtual
environment bench/run.py keeps), pins the proxy to one core and the load
generator (bench/wsload.py) and origin to another, drives N sockets each
sending a message and waiting for its echo, and prints one JSON line per
tool: messages per second through the proxy (both directions), latency
percentiles, the proxy's CPU (also per message: where the load generator
is the bottleneck, the better gauge) and peak memory.  For the appliance it then
waits until every message is stored and fails if one is missing.
Processes are started and stopped through bench/run.py's helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: processes, the appliance, mitmdump)

BENCH = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per tool (a smoke check)")
    p.add_argument("--peer", action="store_true", help="also run against mitmdump and print the ratio")
    p.add_argument("--connections", type=int, default=10, help="sockets at once (default 10)")
    p.add_argument("--seconds", type=float, help="seconds of load per tool (default 10, --quick 2)")
    p.add_argument("--size", type=int, default=128, help="bytes per message (default 128)")
    p.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the proxy (default 0; '' = no pinning)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for the load generator and origin (default 1)")
    return p.parse_args(argv)


def stored_messages(capture: run.Capture) -> int:
    """Messages the appliance has stored in its session, over every WebSocket flow."""
    flows = capture.api("GET", f"/api/sessions/{capture.session}/flows?filter=~websocket&limit=1000")["flows"]
    return sum(capture.api("GET", f"/api/flows/{f['id']}/messages?limit=1")["total"] for f in flows)


def measure(proxy: Any, args: argparse.Namespace, children: run.Children, tmp: Path, origin_port: int) -> dict[str, Any]:
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    pids = proxy.proxy_pids()
    sampler = run.Sampler(pids, proxy if isinstance(proxy, run.Capture) else None)
    sampler.start()
    ticks = run.cpu_ticks(pids)
    argv = [sys.executable, str(BENCH / "wsload.py"), f"ws://127.0.0.1:{origin_port}/echo",
            f"http://127.0.0.1:{proxy.port}", str(args.connections), str(seconds), str(args.size)]
    load = children.start("wsload", run.pinned(args.load_cpus, argv), stdout=subprocess.PIPE,
                          stderr=open(tmp / "wsload.err", "w"))
    out, _ = load.communicate(timeout=seconds + 120)
    children.procs = [(n, p) for n, p in children.procs if p is not load]
    cpu_s = (run.cpu_ticks(pids) - ticks) / run.CLK_TCK
    sampler.finish()
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise run.BenchError(f"wsload printed no result: {(tmp / 'wsload.err').read_text()[-500:]}") from None
    result.update(scenario=f"ws-echo-{args.connections}", tool=proxy.tool, size=args.size,
                  proxy_cpu_s=round(cpu_s, 2), peak_rss_mb=round(sampler.rss_max_kb / 1024, 1),
                  proxy_cpu_us_per_message=round(cpu_s * 1e6 / result["messages"], 1) if result["messages"] else None)
    if isinstance(proxy, run.Capture):
        start = time.monotonic()
        while time.monotonic() - start < 120:
            stored = stored_messages(proxy)
            if stored >= result["messages"]:
                break
            time.sleep(0.5)
        result["stored_messages"] = stored
        result["store_lag_s"] = round(time.monotonic() - start, 2)
        if stored != result["messages"]:
            raise run.BenchError(f"{stored} of {result['messages']} messages stored")
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        args.proxy_cpus = args.load_cpus = ""
    args.proxy_cpus = args.proxy_cpus or None
    args.load_cpus = args.load_cpus or None
    children = run.Children()
    tmp = Path(tempfile.mkdtemp(prefix="capture-wsbench-"))
    results = []
    status = 0
    try:
        origin_ca, _cert, _key = run.make_origin_pki(tmp)
        origin_port = run.free_port()
        origin = children.start("wsecho", run.pinned(args.load_cpus, [sys.executable, str(BENCH / "wsecho.py"),
                                                                      str(origin_port)]), log=tmp / "wsecho.log")
        run.wait_port(origin_port, origin, 30, "wsecho", tmp / "wsecho.log")
        tools = ["capture"] + (["mitmdump"] if args.peer else [])
        for tool in tools:
            if tool == "capture":
                proxy: Any = run.Capture(children, tmp, origin_ca, args.proxy_cpus, 1)
            else:
                proxy = run.Mitmdump(children, tmp, origin_ca, args.proxy_cpus, run.ensure_mitmdump())
            try:
                result = measure(proxy, args, children, tmp, origin_port)
            finally:
                proxy.stop()
            results.append(result)
            print(json.dumps(result), flush=True)
        if len(results) == 2 and results[1]["messages_per_s"]:
            ours, peer = results
            line = {"scenario": ours["scenario"], "capture/mitmdump": round(ours["messages_per_s"] / peer["messages_per_s"], 2)}
            if ours["proxy_cpu_us_per_message"] and peer["proxy_cpu_us_per_message"]:
                line["mitmdump/capture_cpu_per_message"] = round(
                    peer["proxy_cpu_us_per_message"] / ours["proxy_cpu_us_per_message"], 2)
            print(json.dumps(line))
    except run.BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
