"""What every client connection shares: settings, the connector and pool, the recorder, admission and policy.

The layers reach it as ``host.services``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from capture.autopass import AutoPassthrough
from capture.config import Settings
from capture.envproxy import chained_proxy
from capture.http.exchange import TunnelTarget
from capture.layers.host import LayerHost
from capture.proxy.connection import ClientConnection
from capture.proxy.stack import LayerStack
from capture.record.recorder import Recorder
from capture.shipper import Shipper
from capture.tls.ca import CertificateAuthority
from capture.tls.verify import UpstreamTLS
from capture.upstream.alpn_pool import H2Pool
from capture.upstream.connector import Connector
from capture.upstream.pool import UpstreamPool

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "0.0.0.0", "::", socket.gethostname().lower()}


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns)


class ProxyFactory(Factory):
    """What every client connection shares: settings, pool, recorder, own ports."""

    noisy = False

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        shipper: Shipper,
        reactor: Any,
        pool: Any = None,
        ca: CertificateAuthority | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings
        self.shipper = shipper
        self.reactor = reactor
        self.ca = ca
        self.limits = settings.limits
        if connector is None:
            tls = UpstreamTLS(settings.tls.verify_upstream, settings.tls.upstream_ca)
            connector = Connector(reactor, tls, chained_proxy(settings.proxy), timeout=settings.limits.connect_timeout)
        self.connector = connector
        if pool is None:
            pool = UpstreamPool(reactor, connector, settings.limits, idle_timeout=settings.proxy.idle_timeout)
        self.pool = pool
        # HTTP/2 origin connections, shared by every client connection's streams.
        self.h2_pool = H2Pool(reactor, connector, pool, settings.limits, idle_timeout=settings.proxy.idle_timeout)
        self.recorder = Recorder(shipper, settings.capture.redact)
        self.layers = LayerStack()
        self.own_ports: set[int] = set()
        self.proxy_port = 0  # the proxy listener's port, for onboarding pages
        self.refused = 0  # clients outside [proxy] allow
        self.connections = 0
        self.over_limit = 0  # connections closed at once because max_connections were open
        self.clients: set[ClientConnection] = set()
        self.draining = False
        # (client address, host) pairs tunnelled untouched after the client rejected our certificate.
        self.auto_passthrough = AutoPassthrough(shipper, reactor, settings.tls.auto_passthrough)
        self._allowed: dict[str, bool] = {}

    def buildProtocol(self, addr: Any) -> ClientConnection:
        return ClientConnection(self)

    def allowed(self, client: str) -> bool:
        verdict = self._allowed.get(client)
        if verdict is None:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            verdict = any(address in net for net in self.settings.proxy.allow)
            if len(self._allowed) < 65536:
                self._allowed[client] = verdict
        return verdict

    def passes_through(self, client: str, name: str, host: str) -> bool:
        """Should this TLS tunnel be relayed untouched instead of intercepted?"""
        patterns = self.settings.tls.passthrough
        if patterns and (host_matches(name, patterns) or host_matches(host, patterns)):
            return True
        return self.auto_passthrough.passes(client, name)

    def tls_failed(self, host: LayerHost, target: TunnelTarget, name: str, reason: Failure | None,
                   timed_out: bool = False) -> None:
        """An intercepted handshake did not finish: record it; capture.autopass decides about passthrough."""
        if timed_out:  # the client is still there, it just never finished: no reason to pass its host through
            self._record_tls(host, target, name, f"TLS handshake for {name} timed out: the client never finished it")
            return
        self.auto_passthrough.handshake_failed(host.client, name, host.start, reason,
                                               lambda message: self._record_tls(host, target, name, message))

    def closed_before_request(self, host: LayerHost, target: TunnelTarget, name: str) -> None:
        """The client closed an intercepted connection without sending a request."""
        self.auto_passthrough.closed_before_request(host.client, name, host.start,
                                                    lambda message: self._record_tls(host, target, name, message))

    def request_seen(self, host: LayerHost, name: str) -> None:
        """The first request on an intercepted connection: the client accepted our certificate."""
        self.auto_passthrough.request_seen(host.client, name)

    def _record_tls(self, host: LayerHost, target: TunnelTarget, name: str, message: str) -> None:
        self.log.info("{client}: {message}", client=host.client, message=message)
        self.recorder.tunnel(host.client, host.client_port, "https", name, target.port, host.start,
                             self.reactor.seconds(), 0, 0, message)

    def listening_on(self, port: int) -> None:
        """Our own proxy port: for onboarding pages, and to refuse requests that loop back."""
        self.own_ports.add(port)
        self.proxy_port = port

    def counters(self) -> dict[str, int]:
        return {
            "refused_clients": self.refused,
            "client_connections": self.connections,
            "connections_over_limit": self.over_limit,
        }

    def drain(self, grace: float) -> defer.Deferred:
        """Stop: close idle client connections now, busy ones after their exchange, all within ``grace``;
        then the HTTP/2 origin connections."""
        self.draining = True
        for client in list(self.clients):
            client.close_when_idle()
        d: defer.Deferred = defer.Deferred()

        def check(deadline: float) -> None:
            if self.clients and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.05, check, deadline)
                return
            for client in list(self.clients):
                client.transport.abortConnection()
            self.h2_pool.close_all()  # origins hear GOAWAY rather than a dropped connection
            d.callback(None)

        check(self.reactor.seconds() + grace)
        return d

    def is_self(self, host: str, port: int) -> bool:
        """Would this target loop back into one of our own listeners?"""
        if port not in self.own_ports:
            return False
        if host in _LOCAL_NAMES:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or address.is_unspecified

