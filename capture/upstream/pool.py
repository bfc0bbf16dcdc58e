"""Origin connections kept for reuse, keyed by origin and ALPN protocol, bounded in number and age.

An HTTP/1.1 connection carries one exchange at a time: it is taken out of
the pool while it does and put back (``release``) when the response ended
cleanly.  The pool connects through the one ``Connector``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from twisted.internet import defer

from capture.upstream.connector import Connector
from capture.upstream.http1_client import Http1Client, PoolKey


class UpstreamPool:
    """Idle keep-alive HTTP/1.1 connections by (scheme, host, port, server name, ALPN)."""

    def __init__(
        self,
        reactor: Any,
        connector: Connector,
        limits: Any,
        idle_timeout: float = 60.0,
        max_idle_per_host: int = 128,
        max_idle: int = 1024,
    ) -> None:
        self._reactor = reactor
        self.connector = connector
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.max_idle_per_host = max_idle_per_host
        self.max_idle = max_idle
        self._idle: dict[PoolKey, list[tuple[Http1Client, Any]]] = defaultdict(list)
        self._idle_count = 0

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> defer.Deferred:
        """A ready Http1Client: the most recently used idle one, or a new one.

        ``server_name`` is the name to send as SNI and verify (for HTTPS): the
        client's SNI when it sent one, else the host.
        """
        key = (scheme, host, port, server_name or host, b"http/1.1")
        idle = self._idle.get(key)
        if idle:
            client, timer = idle.pop()
            self._idle_count -= 1
            timer.cancel()
            client.on_lost = None
            return defer.succeed(client)
        d = self.connector.connect(host, port, key[3] if scheme == "https" else None)
        return d.addCallback(lambda link: Http1Client(link, key, self.limits))

    def release(self, client: Http1Client) -> None:
        """Keep a connection for reuse, or close it if it cannot be reused."""
        idle = self._idle[client.key]
        if not client.reusable or len(idle) >= self.max_idle_per_host or self._idle_count >= self.max_idle:
            client.transport.loseConnection()
            return
        client.transport.resumeProducing()
        timer = self._reactor.callLater(self.idle_timeout, client.transport.loseConnection)
        idle.append((client, timer))
        self._idle_count += 1
        client.on_lost = self._forget

    def _forget(self, client: Http1Client) -> None:
        idle = self._idle.get(client.key, [])
        for i, (candidate, timer) in enumerate(idle):
            if candidate is client:
                timer.active() and timer.cancel()
                del idle[i]
                self._idle_count -= 1
                break
        if not idle:
            self._idle.pop(client.key, None)
