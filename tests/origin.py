"""A small HTTP/1.1 origin server for the end-to-end tests, run as its own process.

Written on the standard library so it shares no code with the proxy under
test.  ``python tests/origin.py [CERT KEY]`` prints ``PORT <n>`` once it listens on
127.0.0.1 (HTTPS when given a certificate and key) and serves until killed.

    /bytes?n=N          N deterministic bytes (see ``pattern``) with Content-Length
    /chunked?n=N        the same bytes, chunked
    /close?n=N          the same bytes, delimited by closing the connection (HTTP/1.0 style)
    /status/CODE        an empty response with that status
    /static/NAME.EXT    a small body typed by its extension (image/png for .png, ...)
    /set-cookie?a=1     sets each query parameter as a cookie
    /echo               JSON: method, path, ordered headers, body size and sha256
    /reset              no answer: the connection is reset at once
    /early              413 at once, without reading the request body; then a half-close, draining it
    /__log              JSON: every request seen so far (method, path, client port)
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import socket
import sys
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BLOCK = 64 * 1024


def pattern(n: int) -> bytes:
    """The first ``n`` bytes of the deterministic body the origin serves."""
    block = bytes(range(256)) * (BLOCK // 256)
    return (block * (n // BLOCK + 1))[:n]


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    block = pattern(BLOCK)
    for _ in range(n // BLOCK):
        digest.update(block)
    digest.update(block[: n % BLOCK])
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server writes a head and then its body: with Nagle on, the body of a small
    # response waits for the proxy's delayed ACK, 40 ms a request.
    disable_nagle_algorithm = True
    log_lock = threading.Lock()
    seen: list[dict] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self) -> None:
        with self.log_lock:
            self.seen.append({"method": self.command, "path": self.path, "client_port": self.client_address[1]})

    def _body(self) -> tuple[int, str]:
        """Read the request body (Content-Length or chunked); return size and sha256."""
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if length == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(length)
                self.rfile.readline()
                digest.update(data)
                size += len(data)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, BLOCK))
                if not data:
                    break
                digest.update(data)
                size += len(data)
                remaining -= len(data)
        return size, digest.hexdigest()

    def _send_pattern(self, n: int, mode: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "length":
            self.send_header("Content-Length", str(n))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        block = pattern(BLOCK)
        sent = 0
        while sent < n:
            piece = block[: min(BLOCK, n - sent)]
            if mode == "chunked":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            sent += len(piece)
        if mode == "chunked":
            self.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n")

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        n = int(query.get("n", ["0"])[0])
        if url.path == "/__log":
            with self.log_lock:
                return self._json(200, list(self.seen))
        self._record()
        if url.path == "/reset":  # drops the connection with a reset, answering nothing
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if url.path == "/early":  # refuses an upload before reading it, as many servers do
            body = b"too large"
            self.send_response(413)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            # Close as careful servers do: a plain close with the upload unread would send a
            # reset, which can destroy the answer before the proxy reads it.
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(5)
            try:
                while self.connection.recv(65536):
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        size, sha = self._body()
        if url.path == "/bytes":
            return self._send_pattern(n, "length")
        if url.path == "/chunked":
            return self._send_pattern(n, "chunked")
        if url.path == "/close":
            return self._send_pattern(n, "close")
        if url.path.startswith("/static/"):
            body = b"static " + url.path.encode()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(url.path)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        if url.path == "/set-cookie":
            self.send_response(200)
            for name, values in query.items():
                self.send_header("Set-Cookie", f"{name}={values[0]}; Path=/; HttpOnly")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path.startswith("/status/"):
            self.send_response(int(url.path.rsplit("/", 1)[1]))
            self.send_header("X-Origin", "yes")
            if int(url.path.rsplit("/", 1)[1]) not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = [[k, v] for k, v in self.headers.raw_items()]
        return self._json(200, {"method": self.command, "path": self.path, "headers": headers, "size": size, "sha256": sha})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if len(sys.argv) == 3:  # origin.py CERT KEY: serve HTTPS with that certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
