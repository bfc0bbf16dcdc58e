"""The raw tunnel layer: bytes relayed both ways untouched, recorded as one tunnel flow when it ends.

Used after CONNECT for anything that is neither TLS to intercept nor plain
HTTP, and for TLS passed through.  The origin side is an origin link from
the shared connector (so a chained proxy is asked to CONNECT there too).
Each side's transport is the other's producer.  Hosted as described in
``capture.layers.host``.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from capture.layers.host import LayerHost
from capture.upstream.connector import OriginLink
from capture.upstream.errors import describe_connect_error


class RawTunnel:
    """Relays bytes both ways untouched; records one tunnel flow when it ends."""

    def __init__(self, host: LayerHost, target_host: str, port: int, start: float, tls_name: str | None = None) -> None:
        self.host = host
        self.target_host = target_host
        self.port = port
        self.start = start
        self.tls_name = tls_name
        self.up = 0
        self.down = 0
        self.link: OriginLink | None = None
        self._pending: list[bytes] = []
        self._recorded = False
        services = host.services
        self._reactor = services.reactor
        self._idle_timeout = services.settings.proxy.idle_timeout
        self._idle = self._reactor.callLater(self._idle_timeout, self._idle_expired)
        host.pause("connect")
        d = services.connector.connect(target_host, port, raw=True)
        d.addCallbacks(self._connected, self._failed)

    def _idle_expired(self) -> None:
        """Nothing crossed the tunnel for idle_timeout seconds: close both sides."""
        if self.link is not None:
            self.link.transport.loseConnection()
        self.host.transport.loseConnection()

    def _touch(self) -> None:
        if self._idle.active():
            self._idle.reset(self._idle_timeout)

    def data_received(self, data: bytes) -> None:
        self.up += len(data)
        self._touch()
        if self.link is None:
            self._pending.append(data)
        else:
            self.link.transport.write(data)

    def connection_lost(self, reason: Failure | None) -> None:
        if self._idle.active():
            self._idle.cancel()
        if self.link is not None:
            self.link.transport.loseConnection()
        self._record("")

    def close_when_idle(self) -> None:
        """A tunnel is never idle to us: it ends with the drain's grace."""

    def _connected(self, link: OriginLink) -> None:
        self.host.resume("connect")
        if self.host.closing:
            link.transport.loseConnection()
            return
        self.link = link
        link.handler = _OriginSide(self)
        for data in self._pending:
            link.transport.write(data)
        self._pending = []
        link.transport.registerProducer(self.host.transport, True)
        self.host.transport.registerProducer(link.transport, True)

    def _failed(self, failure: Failure) -> None:
        self.host.resume("connect")
        _, message = describe_connect_error(failure, self.target_host, self.port)
        self._record(message)
        self.host.transport.loseConnection()

    def downstream(self, data: bytes) -> None:
        self.down += len(data)
        self._touch()
        self.host.transport.write(data)

    def upstream_closed(self) -> None:
        self.host.transport.loseConnection()
        self._record("")

    def _record(self, error: str) -> None:
        if self._recorded:
            return
        self._recorded = True
        host = self.host
        host.services.recorder.tunnel(host.client, host.client_port, "https" if self.tls_name else "tcp",
                                      self.tls_name or self.target_host, self.port, self.start,
                                      self._reactor.seconds(), self.up, self.down, error)


class _OriginSide:
    """The origin link's handler: its bytes go to the client."""

    def __init__(self, tunnel: RawTunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        self.tunnel.downstream(data)

    def connection_lost(self, reason: Failure | None) -> None:
        self.tunnel.upstream_closed()
