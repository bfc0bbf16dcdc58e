"""A TCP listener several proxy processes share, with SO_REUSEPORT.

Each process binds its own socket to the same address and the kernel
spreads new connections across them; a worker that dies takes only its own
socket with it.
"""

from __future__ import annotations

import socket
from typing import Any


def parse_tcp(description: str) -> tuple[int, str, int]:
    """(family, interface, port) of a tcp:/tcp6: endpoint string; ValueError for anything else."""
    parts = description.split(":")
    kind = parts[0]
    if kind not in ("tcp", "tcp6") or len(parts) < 2:
        raise ValueError("several workers need a tcp: or tcp6: listen endpoint")
    port = int(parts[1])
    options = dict(part.split("=", 1) for part in parts[2:] if "=" in part)
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = options.get("interface", "::" if family == socket.AF_INET6 else "0.0.0.0")
    return family, interface, port


def listen(reactor: Any, description: str, factory: Any, port: int | None = None, backlog: int = 1024) -> Any:
    """Bind (SO_REUSEPORT) and hand the socket to the reactor; ``port`` overrides the endpoint's."""
    family, interface, configured = parse_tcp(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, configured if port is None else port))
        sock.listen(backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate
