"""Origin streams for one HTTP/2 client connection: one shared HTTP/2 connection when the origin speaks it.

The TLS layer connects to the origin before finishing the client's
handshake (offering what the client offered), so the client is given the
protocol the origin chose; that first link is handed here.  Every stream
of the client connection then gets a stream on the same HTTP/2 connection
to the origin; if the origin speaks only HTTP/1.1, or the HTTP/2
connection went away, streams take exclusive HTTP/1.1 connections from the
shared pool instead (each request translated by the Exchange).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from capture.upstream.connector import Connector, OriginLink
from capture.upstream.h2_client import H2ClientConnection, H2ClientStream
from capture.upstream.http1_client import Http1Client
from capture.upstream.pool import UpstreamPool

ALPN_BOTH = (b"h2", b"http/1.1")


class AlpnOrigins:
    """Hands out origin streams for one client connection's exchanges (``capture.http.streams.Pool``)."""

    def __init__(self, connector: Connector, pool: UpstreamPool, limits: Any) -> None:
        self.connector = connector
        self.pool = pool
        self.limits = limits
        self.h2: H2ClientConnection | None = None
        self._h2_key: tuple[str, int, str] | None = None
        self._connecting: list[defer.Deferred] | None = None
        self._speaks_h1 = False  # the origin chose HTTP/1.1: no point offering h2 again

    def adopt(self, link: OriginLink, scheme: str, server_name: str) -> None:
        """The link opened before the client's handshake: HTTP/2 is shared, HTTP/1.1 goes to the pool."""
        if link.alpn == b"h2":
            self.h2 = H2ClientConnection(link, self.limits)
            self._h2_key = (link.host, link.port, server_name)
        else:
            self._speaks_h1 = True
            self.pool.release(Http1Client(link, (scheme, link.host, link.port, server_name, b"http/1.1"), self.limits))

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> defer.Deferred:
        name = server_name or host
        h2 = self.h2
        if h2 is not None and h2.accepting and self._h2_key == (host, port, name):
            return defer.succeed(h2.open_stream())
        if scheme != "https" or self._speaks_h1:
            return self.pool.acquire(scheme, host, port, server_name)
        d: defer.Deferred = defer.Deferred()
        if self._connecting is not None:
            self._connecting.append(d)
            return d
        self._connecting = [d]
        connecting = self.connector.connect(host, port, name, ALPN_BOTH)
        connecting.addCallbacks(lambda link: self._connected(link, scheme, name), self._failed)
        return d

    def _connected(self, link: OriginLink, scheme: str, name: str) -> None:
        waiting, self._connecting = self._connecting or [], None
        self.adopt(link, scheme, name)
        for d in waiting:
            if self.h2 is not None and self.h2.accepting:
                d.callback(self.h2.open_stream())
            else:
                self.pool.acquire(scheme, link.host, link.port, name).chainDeferred(d)

    def _failed(self, failure: Failure) -> None:
        waiting, self._connecting = self._connecting or [], None
        for d in waiting:
            d.errback(failure)

    def release(self, stream: Any) -> None:
        """HTTP/1.1 connections go back to the pool; an HTTP/2 stream needs nothing."""
        if not isinstance(stream, H2ClientStream):
            self.pool.release(stream)
