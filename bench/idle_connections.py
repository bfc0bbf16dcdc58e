"""Open N idle client connections to a running appliance and report its RSS.

    python bench/idle_connections.py --proxy 127.0.0.1:8080 --pid PID [--count 2000]

Each connection sends half a request head (so it is an open, parsed
connection, not only an accepted socket) and then waits. The appliance's
VmRSS is read from /proc before, with all of them open, and after they close.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="127.0.0.1:8080")
    parser.add_argument("--pid", type=int, required=True, help="the twistd process")
    parser.add_argument("--count", type=int, default=2000)
    options = parser.parse_args()
    host, port = options.proxy.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, options.count + 256), hard))
    before = rss_kib(options.pid)
    sockets = []
    for _ in range(options.count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sockets.append(sock)
    time.sleep(2)
    with_open = rss_kib(options.pid)
    for sock in sockets:
        sock.close()
    time.sleep(2)
    after = rss_kib(options.pid)
    print(json.dumps({"connections": options.count, "rss_before_mb": round(before / 1024, 1),
                      "rss_open_mb": round(with_open / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                      "per_connection_kb": round((with_open - before) / options.count, 1)}))


if __name__ == "__main__":
    main()
