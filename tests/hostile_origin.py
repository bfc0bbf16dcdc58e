"""A scriptable origin for tests/test_hostile_http.py, run as its own process.

Written on the standard library's sockets so that it can send what no real
server would.  ``python tests/hostile_origin.py`` prints ``PORT <n>`` once it
listens on 127.0.0.1, then answers each connection once and closes it:

    /case/NAME   the raw bytes of tests/hostile/responses/NAME.http; the
                 marker ``{PAUSE}`` in a file splits it, with PAUSE seconds
                 between the parts (so a head can arrive before its body)
    anything else  a 404
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

RESPONSES = Path(__file__).resolve().parent / "hostile" / "responses"
PAUSE = 0.3
MAX_HEAD = 65536


def read_request(conn: socket.socket) -> tuple[str, str] | None:
    """Method and target of the request on ``conn``, its body (Content-Length only) read and dropped."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece or len(data) > MAX_HEAD:
            return None
        data += piece
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    remaining = length - len(rest)
    while remaining > 0:
        piece = conn.recv(min(remaining, 65536))
        if not piece:
            break
        remaining -= len(piece)
    return parts[0], parts[1]


def answer(path: str) -> list[bytes]:
    """The parts of the reply to ``path``."""
    name = path[len("/case/"):] if path.startswith("/case/") else ""
    file = RESPONSES / f"{name}.http"
    if not name or "/" in name or name.startswith(".") or not file.is_file():
        return [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"]
    return file.read_bytes().split(b"{PAUSE}")


def serve(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        try:
            request = read_request(conn)
            if request is None:
                return
            parts = answer(request[1])
            for i, part in enumerate(parts):
                if i:
                    time.sleep(PAUSE)
                conn.sendall(part)
            # Half-close and drain, so the proxy reads every byte before the socket goes (no RST).
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(2)
            while conn.recv(65536):
                pass
        except OSError:
            pass


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
