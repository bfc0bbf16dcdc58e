"""Origin streams for HTTP/2 client connections: HTTP/2 origin connections shared by all of them.

``H2Pool`` (one per proxy, beside the HTTP/1.1 ``UpstreamPool``, both on
the one ``Connector``, so TLS verification and any chained proxy are the
same for every connection it holds) keeps HTTP/2 connections by origin
(host, port, TLS server name).  Each carries streams from any number of
client connections, up to the origin's SETTINGS_MAX_CONCURRENT_STREAMS;
when every connection to an origin is full another is opened (at most
``max_per_origin``), and beyond that a stream waits its turn, bounded in
number and in time.  A connection the origin sent GOAWAY takes no new
streams while the ones it accepted finish; one without streams for
``idle_timeout`` seconds is closed, and so is the longest idle one when
more than ``max_idle`` are idle at once (many distinct origins); a closed
connection is forgotten at once.  ``close_all`` ends them all when the
proxy stops.

``AlpnOrigins`` is one HTTP/2 client connection's view: the TLS layer
connects to the origin before finishing the client's handshake (offering
what the client offered) unless the pool already holds an HTTP/2
connection there, so the client is given the protocol the origin chose,
and that first link is handed here.  An origin that chose HTTP/1.1 is
remembered; streams towards it take exclusive HTTP/1.1 connections from
the ``UpstreamPool`` instead (each request translated by the Exchange).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer, error
from twisted.python.failure import Failure

from capture.upstream.connector import Connector, OriginLink
from capture.upstream.h2_client import H2ClientConnection, H2ClientStream
from capture.upstream.http1_client import Http1Client
from capture.upstream.pool import UpstreamPool

ALPN_BOTH = (b"h2", b"http/1.1")

OriginKey = tuple[str, int, str]  # host, port, TLS server name


class OriginsBusy(Exception):
    """Every stream the origin allows is taken and too many wait already."""


class H2Pool:
    """HTTP/2 connections to origins, shared by the streams of every client connection."""

    def __init__(self, reactor: Any, connector: Connector, h1_pool: UpstreamPool, limits: Any,
                 idle_timeout: float = 60.0, max_per_origin: int = 4, max_waiting: int = 1024,
                 max_known_h1: int = 4096, max_idle: int = 1024) -> None:
        self.reactor = reactor
        self.connector = connector
        self.h1_pool = h1_pool
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.max_per_origin = max_per_origin
        self.max_waiting = max_waiting
        # A stream waits for a free slot at most as long as a connection may take to open.
        self.wait_timeout = float(limits.connect_timeout)
        self.max_known_h1 = max_known_h1
        self.max_idle = max_idle
        self._links: dict[OriginKey, list[H2ClientConnection]] = {}
        self._connecting: dict[OriginKey, int] = {}
        self._waiting: dict[OriginKey, deque[tuple[defer.Deferred, Any]]] = {}
        self._h1: dict[OriginKey, None] = {}  # origins that chose HTTP/1.1, oldest first
        self._idle: dict[H2ClientConnection, Any] = {}  # longest idle first

    # -- what client connections ask ----------------------------------------------

    def has_room(self, key: OriginKey) -> bool:
        """An HTTP/2 connection to the origin can take a stream now (no need to connect first)."""
        return self._with_room(key) is not None

    def acquire(self, key: OriginKey) -> defer.Deferred:
        """A stream to the origin, or None when it speaks only HTTP/1.1; waits (bounded) while all are full."""
        if key in self._h1:
            return defer.succeed(None)
        stream = self._open(key)
        if stream is not None:
            return defer.succeed(stream)
        waiting = self._waiting.setdefault(key, deque())
        if len(waiting) >= self.max_waiting:
            return defer.fail(OriginsBusy(f"{key[0]}:{key[1]} has every HTTP/2 stream in use and "
                                          f"{self.max_waiting} more waiting"))
        d: defer.Deferred = defer.Deferred()
        waiting.append((d, self.reactor.callLater(self.wait_timeout, self._waited_too_long, key, d)))
        self._serve(key)
        return d

    def adopt(self, key: OriginKey, link: OriginLink) -> None:
        """A link connected for ``key``: shared when it speaks HTTP/2; else remembered, and the link pooled."""
        if link.alpn != b"h2":
            self._note_h1(key)
            self.h1_pool.release(Http1Client(link, ("https", key[0], key[1], key[2], b"http/1.1"), self.limits))
            self._serve(key)  # streams waiting for it go to HTTP/1.1
            return
        connection = H2ClientConnection(link, self.limits)
        connection.on_change = lambda: self._changed(key, connection)
        self._links.setdefault(key, []).append(connection)
        self._start_idle(connection)
        self._serve(key)

    def close_all(self) -> None:
        """The proxy stops: GOAWAY and close on every origin connection (streams still open fail)."""
        for connections in list(self._links.values()):
            for connection in list(connections):
                connection.close()

    # -- inside ---------------------------------------------------------------------

    def _with_room(self, key: OriginKey) -> H2ClientConnection | None:
        links = self._links.get(key)
        if not links:
            return None
        live = [c for c in links if c.accepting]
        if len(live) != len(links):
            if live:
                self._links[key] = live
            else:
                del self._links[key]
        for connection in live:
            if connection.has_room():
                return connection
        return None

    def _open(self, key: OriginKey) -> H2ClientStream | None:
        connection = self._with_room(key)
        if connection is None:
            return None
        timer = self._idle.pop(connection, None)
        if timer is not None and timer.active():
            timer.cancel()
        return connection.open_stream()

    def _serve(self, key: OriginKey) -> None:
        """Give waiting streams the free slots; open another connection if they still wait."""
        waiting = self._waiting.get(key)
        while waiting:
            if key in self._h1:
                d, timer = waiting.popleft()
                timer.cancel()
                d.callback(None)
                continue
            stream = self._open(key)
            if stream is None:
                break
            d, timer = waiting.popleft()
            timer.cancel()
            d.callback(stream)
        if not waiting:
            self._waiting.pop(key, None)
            return
        live = len(self._links.get(key, ())) + self._connecting.get(key, 0)
        if self._connecting.get(key, 0) == 0 and live < self.max_per_origin:
            self._connect(key)

    def _connect(self, key: OriginKey) -> None:
        self._connecting[key] = self._connecting.get(key, 0) + 1
        host, port, name = key
        d = self.connector.connect(host, port, name, ALPN_BOTH)
        d.addCallbacks(lambda link: self._connected(key, link), lambda failure: self._connect_failed(key, failure))

    def _connected(self, key: OriginKey, link: OriginLink) -> None:
        self._connect_done(key)
        self.adopt(key, link)

    def _connect_failed(self, key: OriginKey, failure: Failure) -> None:
        self._connect_done(key)
        if self._links.get(key):
            return  # the others will free slots
        waiting = self._waiting.pop(key, deque())
        for d, timer in waiting:
            timer.cancel()
            d.errback(failure)

    def _connect_done(self, key: OriginKey) -> None:
        left = self._connecting.get(key, 1) - 1
        if left:
            self._connecting[key] = left
        else:
            self._connecting.pop(key, None)

    def _waited_too_long(self, key: OriginKey, d: defer.Deferred) -> None:
        waiting = self._waiting.get(key, deque())
        for i, (candidate, _) in enumerate(waiting):
            if candidate is d:
                del waiting[i]
                break
        if not waiting:
            self._waiting.pop(key, None)
        d.errback(Failure(error.TimeoutError(f"every HTTP/2 stream to {key[0]}:{key[1]} stayed in use")))

    def _changed(self, key: OriginKey, connection: H2ClientConnection) -> None:
        """A stream of ``connection`` ended, or it went away: serve waiters, mind idleness."""
        if connection.accepting and not connection.active:
            self._start_idle(connection)
        elif not connection.accepting:
            timer = self._idle.pop(connection, None)
            if timer is not None and timer.active():
                timer.cancel()
            links = self._links.get(key)
            if links is not None and connection in links:
                links.remove(connection)
                if not links:
                    del self._links[key]
        self._serve(key)

    def _start_idle(self, connection: H2ClientConnection) -> None:
        old = self._idle.pop(connection, None)
        if old is not None and old.active():
            old.cancel()
        self._idle[connection] = self.reactor.callLater(self.idle_timeout, self._idle_expired, connection)
        while len(self._idle) > self.max_idle:
            oldest = next(iter(self._idle))
            self._idle.pop(oldest).cancel()
            oldest.close()

    def _idle_expired(self, connection: H2ClientConnection) -> None:
        self._idle.pop(connection, None)
        if not connection.active:
            connection.close()

    def _note_h1(self, key: OriginKey) -> None:
        self._h1.pop(key, None)
        self._h1[key] = None
        while len(self._h1) > self.max_known_h1:
            del self._h1[next(iter(self._h1))]


class AlpnOrigins:
    """Hands out origin streams for one HTTP/2 client connection's exchanges (``capture.http.streams.Pool``)."""

    def __init__(self, shared: H2Pool) -> None:
        self.shared = shared
        self.pool = shared.h1_pool

    def adopt(self, link: OriginLink, server_name: str) -> None:
        """The link opened before the client's handshake: HTTP/2 is shared, HTTP/1.1 goes to the pool."""
        self.shared.adopt((link.host, link.port, server_name), link)

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> defer.Deferred:
        if scheme != "https":
            return self.pool.acquire(scheme, host, port, server_name)
        d = self.shared.acquire((host, port, server_name or host))
        return d.addCallback(lambda stream: stream if stream is not None
                             else self.pool.acquire(scheme, host, port, server_name))

    def release(self, stream: Any) -> None:
        """HTTP/1.1 connections go back to the pool; an HTTP/2 stream needs nothing."""
        if not isinstance(stream, H2ClientStream):
            self.pool.release(stream)
