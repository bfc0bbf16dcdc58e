#!/usr/bin/env python3
"""The proxy's instructions per request, capture on and off, counted by callgrind.

Requests per second on a shared 2-CPU machine drift by a third within one
run, which hides a change of a few per cent in what recording costs.  An
instruction count does not drift: this runs the appliance's proxy under
valgrind's callgrind, sends the same keep-alive requests through it with a
session capturing and then paused, and reports user-space instructions per
request for each (``--scenario``: HTTP/1.1 keep-alive over plain HTTP, or
intercepted HTTPS over HTTP/2 with the streams multiplexed on one
connection, as ``bench/run.py``'s ``h2-mux-10``).  It counts nothing in the kernel and says nothing about
cache misses, so it guides work on the proxy's own code; the throughput
figures still come from ``bench/run.py``.

Under callgrind the proxy runs about fifty times slower, so the shipper's
flush delay is stretched by as much: batches to the session manager stay
as large as at full speed.

    python bench/instructions.py [--scenario http-ka|h2-mux] [--requests 3000] [--top 25]

Needs valgrind (``apt-get install valgrind``) and what ``bench/run.py`` needs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402 - the harness's origin, appliance and load generator

# The flush delay at full speed is 20 ms; this keeps batches near their size there.
SLOW_FLUSH_DELAY = 0.5
# scenario: (scheme, HTTP/2)
SCENARIOS = {"http-ka": ("http", False), "h2-mux": ("https", True)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests counted each way (default 3000)")
    parser.add_argument("--scenario", choices=SCENARIOS, default="http-ka",
                        help="http-ka: plain HTTP/1.1 keep-alive; h2-mux: HTTPS over HTTP/2, multiplexed (default http-ka)")
    parser.add_argument("--connections", type=int, default=10,
                        help="keep-alive connections, or with h2-mux streams on one connection (default 10)")
    parser.add_argument("--top", type=int, default=0, help="also list the N functions whose cost grew most with capture on")
    return parser.parse_args(argv)


def total(profile: Path) -> int:
    for line in profile.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise harness.BenchError(f"no totals in {profile}")


def by_function(profile: Path) -> dict[str, int]:
    """Exclusive instructions per function, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", str(profile)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*?:(\S+)", line)
        if match:
            name = match.group(2)
            found[name] = found.get(name, 0) + int(match.group(1).replace(",", ""))
    return found


def measure(args: argparse.Namespace, tmp: Path, children: harness.Children) -> dict[str, Any]:
    bench = harness.Bench(argparse.Namespace(seconds=5, quick=False, big_mib=1, load_cpus="1"), children, tmp)
    bench.start_origin()
    out = tmp / "callgrind.out"

    def under_callgrind(argv: list[str]) -> list[str]:
        at = argv.index(sys.executable)
        script = argv.index("-c", at) + 1
        argv = list(argv)
        argv[script] = f"import capture.shipper as s; s.FLUSH_DELAY = {SLOW_FLUSH_DELAY}\n" + argv[script]
        argv[at:at] = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        return argv

    # A proxy under valgrind takes a while to start.
    capture = harness.Capture(children, tmp, bench.origin_ca, "0", 1, "1", wrap=under_callgrind, ready_timeout=900)
    pid = str(capture.proxy_pids()[0])
    scheme, http2 = SCENARIOS[args.scenario]
    url = bench.url(scheme, "1k.bin")

    def load(requests: int) -> dict[str, Any]:
        _, proc = bench.loadgen(capture, url, args.connections, requests=requests, http2=http2)
        result = bench.finish_loadgen(proc, 3600)
        if result["errors"]:
            raise harness.BenchError(f"{result['errors']} of {requests} requests failed")
        return result

    def counted(label: str) -> Path:
        subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True, timeout=60)
        load(args.requests)
        subprocess.run(["callgrind_control", f"--dump={label}", pid], check=True, capture_output=True, timeout=60)
        subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True, timeout=60)
        dumps = sorted(tmp.glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        return dumps[-1]

    load(1000)  # warm: connections open, caches filled
    on = counted("capture-on")
    capture.api("POST", f"/api/sessions/{capture.session}/pause")
    load(500)
    off = counted("capture-off")
    # The count with capture on means something only if every flow of it was recorded.
    if capture.drain(120) is None or capture.flow_count() != 1000 + args.requests:
        raise harness.BenchError(f"{capture.flow_count()} flows stored, {1000 + args.requests} expected")
    result = {
        "scenario": args.scenario, "requests": args.requests, "connections": args.connections,
        "capture_on": round(total(on) / args.requests), "capture_off": round(total(off) / args.requests),
    }
    result["recording"] = result["capture_on"] - result["capture_off"]
    result["off_over_on"] = round(result["capture_off"] / result["capture_on"], 3)
    if args.top:
        grown = by_function(on), by_function(off)
        names = set(grown[0]) | set(grown[1])
        rows = sorted(((grown[0].get(n, 0) - grown[1].get(n, 0)) / args.requests, n) for n in names)
        result["grew_most"] = [[round(cost), name] for cost, name in reversed(rows[-args.top:])]
    return result


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found\nhint: apt-get install valgrind", file=sys.stderr)
            return 2
    harness.build_loadgen()
    tmp = Path(tempfile.mkdtemp(prefix="capture-instructions-"))
    children = harness.Children()
    try:
        result = measure(args, tmp, children)
    except harness.BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    grew = result.pop("grew_most", [])
    print(json.dumps(result))
    print(f"\ninstructions per request: capture on {result['capture_on']:,}, off {result['capture_off']:,}; "
          f"recording {result['recording']:,} ({result['off_over_on']:.1%} off/on)")
    for cost, name in grew:
        print(f"{cost:>9,}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
