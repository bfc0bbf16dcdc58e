"""The layer right after ``CONNECT``: holds the first bytes until they say what the tunnel carries.

A TLS ClientHello is intercepted (or passed through, for hosts on the
passthrough list and clients that rejected our certificate), plain HTTP
goes to an HTTP/1 server layer with the tunnel as its target, anything
else (or silence: a server-speaks-first protocol) to a raw tunnel.  The
stack (``host.services.layers``) builds the chosen layer; this one then
switches to it with the bytes it held.  Hosted as described in
``capture.layers.host``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from capture.http.exchange import TunnelTarget
from capture.layers.host import LayerHost
from capture.tls import hello as tlshello

FIRST_BYTES_TIMEOUT = 3.0  # then assume a server-speaks-first protocol


class Sniffer:
    """Holds the first bytes of a tunnel until they say what it carries."""

    log = Logger()

    def __init__(self, host: LayerHost, target_host: str, port: int) -> None:
        self.host = host
        self.services = host.services
        self.target_host = target_host
        self.port = port
        self.buffer = b""
        self._hello_started = False
        self.start = self.services.reactor.seconds()
        self._timer = self.services.reactor.callLater(FIRST_BYTES_TIMEOUT, self._silent)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        kind = tlshello.classify(self.buffer)
        if kind is None:
            return
        layers = self.services.layers
        if kind == "tls":
            try:
                hello = tlshello.parse_client_hello(self.buffer)
            except ValueError as e:
                self._cancel_timer()
                self._record(0, f"malformed TLS ClientHello: {e}")
                self.host.abort()
                return
            if hello is None:
                self._hello_started = True
                return
            self._cancel_timer()
            self._tls(hello)
        elif kind == "http":
            self._cancel_timer()
            self.host.switch(layers.plain_http(self.host, TunnelTarget("http", self.target_host, self.port)), self.buffer)
        else:
            self._cancel_timer()
            self.host.switch(layers.raw_tunnel(self.host, self.target_host, self.port, self.start), self.buffer)

    def connection_lost(self, reason: Failure | None) -> None:
        self._cancel_timer()

    def close_when_idle(self) -> None:
        """Not yet a request to wait for; the drain's grace ends it."""

    def _record(self, up: int, error: str) -> None:
        host = self.host
        self.services.recorder.tunnel(host.client, host.client_port, "tcp", self.target_host, self.port, self.start,
                                      self.services.reactor.seconds(), up, 0, error)

    def _silent(self) -> None:
        if self._hello_started:  # a ClientHello that never finished: not something to relay
            self._record(len(self.buffer), "TLS ClientHello cut short: the client stopped sending")
            self.host.abort()
            return
        # Nothing, or not enough to tell: a protocol where the server speaks first.
        self.host.switch(self.services.layers.raw_tunnel(self.host, self.target_host, self.port, self.start),
                         self.buffer)

    def _cancel_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _tls(self, hello: tlshello.ClientHello) -> None:
        services = self.services
        name = hello.sni or self.target_host
        if services.passes_through(self.host.client, name, self.target_host):
            self.host.switch(services.layers.raw_tunnel(self.host, self.target_host, self.port, self.start, name),
                             self.buffer)
            return
        context = services.ca.cached(name)
        if context is not None:
            self._intercept(hello, name, context)
            return
        # Minting signs a certificate: keep it off the reactor thread.
        self.host.pause("mint")
        d = deferToThread(services.ca.context_for, name)
        d.addCallbacks(lambda context: self._intercept(hello, name, context), self._mint_failed)
        d.addBoth(lambda _: self.host.resume("mint"))

    def _intercept(self, hello: tlshello.ClientHello, name: str, context: Any) -> None:
        if self.host.closing:
            return
        target = TunnelTarget("https", self.target_host, self.port, hello.sni)
        self.host.switch(self.services.layers.intercept(self.host, target, name, context, hello), self.buffer)

    def _mint_failed(self, failure: Failure) -> None:
        self.log.failure("cannot mint a certificate for {host}", failure, host=self.target_host)
        self.host.transport.abortConnection()
