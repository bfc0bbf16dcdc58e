"""A minimal forward proxy to chain the appliance to, as a lab's corporate proxy would be.

``python tests/chain_proxy.py LOG [USER:PASSWORD]`` prints ``PORT <n>``,
appends ``METHOD TARGET`` for every request it serves to LOG, answers 407
when credentials are set and not given, and closes each connection after one
exchange.  Standard library only, so it shares no code with the appliance.
"""

from __future__ import annotations

import base64
import socket
import socketserver
import sys
import threading
from urllib.parse import urlsplit


def pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Handler(socketserver.BaseRequestHandler):
    log_path = ""
    credentials: bytes | None = None

    def handle(self) -> None:
        client = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = [line for line in lines[1:] if not line.lower().startswith((b"proxy-authorization:", b"connection:", b"proxy-connection:"))]
        if self.credentials is not None:
            expected = b"proxy-authorization: basic " + base64.b64encode(self.credentials).lower()
            if not any(line.lower() == expected for line in lines[1:]):
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
        with open(self.log_path, "a") as log:
            log.write(f"{method.decode()} {target.decode()}\n")
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=30)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
        else:
            url = urlsplit(target.decode())
            upstream = socket.create_connection((url.hostname, url.port or 80), timeout=30)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            upstream.sendall(b"\r\n".join([b"%s %s HTTP/1.1" % (method, path.encode()), *headers, b"Connection: close", b"", b""]) + rest)
        relay = threading.Thread(target=pipe, args=(client, upstream), daemon=True)
        relay.start()
        pipe(upstream, client)
        relay.join(30)
        upstream.close()


def main() -> None:
    Handler.log_path = sys.argv[1]
    if len(sys.argv) > 2:
        Handler.credentials = sys.argv[2].encode()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
