"""An HTTP/2 (and HTTP/1.1) origin over TLS for the end-to-end tests: hypercorn serving a small ASGI app.

``python tests/h2_origin.py CERT KEY`` prints ``PORT <n>`` once it listens
on 127.0.0.1 and serves until killed.  ALPN offers h2 and http/1.1.

    /bytes?n=N          N deterministic bytes (tests/origin.py's ``pattern``), Content-Length set
    /stream?n=N         the same bytes in 64 KiB pieces, no Content-Length
    /echo               JSON: method, HTTP version, ordered headers, body size and sha256, and the client's
                        port (which TCP connection the request came on)
    /sse?name=X         Server-Sent Events: "one", then waits until /release?name=X, then "two" and ends
    /release?name=X     lets the waiting /sse?name=X go on
    /trailers           a body, then the trailer x-checksum
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sys
from pathlib import Path
from urllib.parse import parse_qs

from hypercorn.asyncio import serve
from hypercorn.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from origin import BLOCK, pattern  # noqa: E402

_waiting: dict[str, asyncio.Event] = {}


def _event(name: str) -> asyncio.Event:
    return _waiting.setdefault(name, asyncio.Event())


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/bytes":
        body = pattern(int(query.get("n", "0")))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        n = int(query.get("n", "0"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        block = pattern(BLOCK)
        sent = 0
        while sent < n:
            piece = block[: min(BLOCK, n - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < n})
        if n == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/echo":
        body = await _body(receive)
        answer = json.dumps({
            "method": scope["method"], "http_version": scope["http_version"],
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "client_port": (scope.get("client") or ("", 0))[1],
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})
    elif path == "/sse":
        name = query.get("name", "")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        try:
            await asyncio.wait_for(_event(name).wait(), 30)
        except asyncio.TimeoutError:
            pass
        await send({"type": "http.response.body", "body": b"data: two\n\n"})
    elif path == "/release":
        _event(query.get("name", "")).set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"with trailers\n"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile, config.keyfile = cert, key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = "-"
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
