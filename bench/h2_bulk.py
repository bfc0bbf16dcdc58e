#!/usr/bin/env python3
"""One big download and one big upload over HTTP/2 through the appliance, capture on: memory, time, what is kept.

    python bench/h2_bulk.py [--mib 1024] [--http1.1] [--keep]

Standard library and the curl command line only; the origin, the appliance
and process handling are bench/run.py's.  ``curl --http2`` fetches a sparse
file of ``--mib`` MiB from nginx (``listen ... ssl http2``) through the
proxy, then sends one as a PUT to nginx's ``/upload`` (which reads the whole
body before answering), with a session recording everything.  For each
transfer it prints one JSON line: seconds, MB/s, the proxy's and the session
manager's peak RSS growth (``VmHWM`` reset through ``/proc/PID/clear_refs``
before the transfer, and RSS sampled every 50 ms), the HTTP version curl
and the flow saw, and what the flow stored (sizes on the wire, bytes kept,
truncated).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: the origin, the appliance, process handling)
from run import MIB, BenchError, Capture, Children, mem_kb, reset_peak  # noqa: E402

CURL_OUT = "%{http_version} %{http_code} %{size_download} %{size_upload} %{time_total}"


def curl(bench: run.Bench, proxy: Capture, url: str, http: str, upload: Path | None, timeout: float) -> dict[str, Any]:
    """One transfer with the curl command line; its figures as curl reports them."""
    argv = ["curl", "--silent", "--show-error", "--proxy", f"http://127.0.0.1:{proxy.port}",
            "--cacert", str(proxy.cacert), "--http2" if http == "2" else "--http1.1",
            "--output", "/dev/null", "--write-out", CURL_OUT, "--max-time", str(int(timeout))]
    if upload is not None:
        argv += ["--upload-file", str(upload), "--header", "Expect:"]
    argv.append(url)
    try:
        done = subprocess.run(run.pinned(bench.args.load_cpus, argv), capture_output=True, text=True,
                              timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"curl ran past {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"curl failed ({done.returncode}): {done.stderr.strip()[:300]}")
    version, status, down, up, total = done.stdout.split()
    return {"curl_http_version": version, "status": int(status), "downloaded": int(float(down)),
            "uploaded": int(float(up)), "seconds": float(total)}


def last_flow(proxy: Capture, path: str) -> dict[str, Any] | None:
    """The detail of the session's newest flow for ``path``, once the session manager has it."""
    page = proxy.api("GET", f"/api/sessions/{proxy.session}/flows?filter=" + f"~u%20{path}&order=desc&limit=1")
    flows = page.get("flows") or []
    return proxy.api("GET", f"/api/flows/{flows[0]['id']}") if flows else None


def transfer(bench: run.Bench, proxy: Capture, name: str, url: str, http: str, upload: Path | None,
             size: int) -> dict[str, Any]:
    pids = proxy.proxy_pids()
    manager = proxy.sessiond_pid()
    rss = sum(mem_kb(p, "VmRSS") for p in pids)
    manager_rss = mem_kb(manager, "VmRSS") if manager else 0
    peak_reset = reset_peak(pids + ([manager] if manager else []))
    sampler = run.Sampler(pids, proxy)
    manager_sampler = run.Sampler([manager], None) if manager else None
    sampler.start()
    if manager_sampler:
        manager_sampler.start()
    started = time.monotonic()
    try:
        figures = curl(bench, proxy, url, http, upload, timeout=1800)
    finally:
        sampler.finish()
        if manager_sampler:
            manager_sampler.finish()
    wall = time.monotonic() - started
    hwm = sum(mem_kb(p, "VmHWM") for p in pids)
    peak = max(hwm if peak_reset else 0, sampler.rss_max_kb)
    result: dict[str, Any] = {"transfer": name, "http": http, "mib": size // MIB, **figures,
                              "mb_per_s": round(size / 1e6 / max(figures["seconds"], 1e-9), 1),
                              "wall_s": round(wall, 2),
                              "proxy_rss_before_mb": round(rss / 1024, 1),
                              "proxy_peak_rss_growth_mb": round((peak - rss) / 1024, 1)}
    if manager:
        manager_peak = max(mem_kb(manager, "VmHWM") if peak_reset else 0, manager_sampler.rss_max_kb)
        result["sessiond_peak_rss_growth_mb"] = round((manager_peak - manager_rss) / 1024, 1)
    drained = proxy.drain(120)
    result["drain_s"] = round(drained, 2) if drained is not None else None
    flow = last_flow(proxy, url.rsplit("/", 1)[1])
    if flow is None:
        result["flow"] = None
    else:
        side = flow["request"] if upload is not None else flow["response"]
        result["flow"] = {"http_version": flow["http_version"], "status": flow["status"],
                          "size": side["size"], "stored": side["stored_size"], "truncated": side["truncated"]}
    if upload is not None:
        lines = (bench.tmp / "upload.log").read_text().splitlines() if (bench.tmp / "upload.log").exists() else []
        result["origin_received_ok"] = bool(lines) and int(lines[-1].split()[0]) >= size \
            and lines[-1].split()[1] == "200"
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=1024, help="MiB per transfer (default 1024)")
    p.add_argument("--http1.1", dest="http1", action="store_true", help="also run both transfers over HTTP/1.1")
    p.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the appliance (default 0; '' = none)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for curl and nginx (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    args = p.parse_args(argv)
    if not 1 <= args.mib <= 8192:
        p.error("--mib must be in 1..8192")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not shutil.which("curl"):
        print("h2_bulk: the curl command line is needed", file=sys.stderr)
        return 1
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        args.proxy_cpus = args.load_cpus = ""
    args.proxy_cpus, args.load_cpus = args.proxy_cpus or None, args.load_cpus or None
    # What run.Bench reads from its options; the body is --mib big.
    args.seconds, args.quick, args.big_mib = 1.0, False, args.mib

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="capture-h2bulk-"))
    status = 0
    try:
        bench = run.Bench(args, children, tmp)
        bench.start_origin()
        body = tmp / "upload.bin"
        with open(body, "wb") as f:
            f.truncate(bench.big)  # sparse: read back as zeros
        proxy = Capture(children, tmp, bench.origin_ca, args.proxy_cpus, 1)
        try:
            curl(bench, proxy, bench.url("https", "1k.bin"), "2", None, 60)  # leaf certificate, pools
            if proxy.drain(60) is None:
                raise BenchError("the warm-up flow was not stored within 60 s")
            big = f"{bench.big // MIB}m.bin"
            for http in ["2"] + (["1.1"] if args.http1 else []):
                for name, url, upload in (("download", bench.url("https", big), None),
                                          ("upload", bench.url("https", "upload"), body)):
                    print(json.dumps(transfer(bench, proxy, name, url, http, upload, bench.big)), flush=True)
            print(json.dumps({"after": True, "proxy_rss_mb": round(sum(mem_kb(p, "VmRSS")
                                                                         for p in proxy.proxy_pids()) / 1024, 1),
                              "dropped_flows": proxy.status()["dropped_flows"]}), flush=True)
        finally:
            proxy.stop()
    except BenchError as e:
        print(f"h2_bulk: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("h2_bulk: interrupted; stopping everything", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if args.keep:
            print(f"h2_bulk: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
