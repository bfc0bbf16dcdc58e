"""Which layer follows which: the one place the proxy's layers are wired together.

    ClientConnection (TCP)
      Http1Server                    proxied HTTP/1 requests; CONNECT goes on to:
        Sniffer                      the tunnel's first bytes decide:
          RawTunnel                  anything else, and TLS passed through
          Http1Server(tunnel)        plain HTTP inside the tunnel
          TLSInterception            a ClientHello: TLS ends here; inside it, on a SecureHost,
            Http1Server(tunnel)      what ALPN chose: http/1.1 (or nothing),
            H2Server                 or h2, its streams' origins from AlpnOrigins
      WebSocketLayer               after any Http1Server relays a 101 to a WebSocket upgrade

Layers ask the stack (``host.services.layers``) for the next layer, so no
layer imports another and each can be tested with a stack of its own.
"""

from __future__ import annotations

from typing import Any

from capture.http.exchange import TunnelTarget
from capture.layers.h2_server import H2Server
from capture.layers.host import LayerHost
from capture.layers.http1_server import Http1Server
from capture.layers.sniff import Sniffer
from capture.layers.tls import TLSInterception
from capture.layers.tunnel import RawTunnel
from capture.layers.websocket import WebSocketLayer
from capture.tls.hello import ClientHello
from capture.upstream.alpn_pool import AlpnOrigins


class LayerStack:
    """Builds each next layer for a host."""

    def first(self, host: LayerHost) -> Http1Server:
        return Http1Server(host)

    def after_connect(self, host: LayerHost, target_host: str, port: int) -> Sniffer:
        return Sniffer(host, target_host, port)

    def plain_http(self, host: LayerHost, target: TunnelTarget) -> Http1Server:
        host.tunnel = target
        return Http1Server(host)

    def raw_tunnel(self, host: LayerHost, target_host: str, port: int, start: float,
                   tls_name: str | None = None) -> RawTunnel:
        return RawTunnel(host, target_host, port, start, tls_name)

    def intercept(self, host: LayerHost, target: TunnelTarget, name: str, context: Any,
                  hello: ClientHello) -> TLSInterception:
        return TLSInterception(host, target, name, context, b"h2" in hello.alpn)

    def websocket(self, host: LayerHost, link: Any, relay: Any, on_messages: Any, on_end: Any) -> WebSocketLayer:
        """The layer after an accepted WebSocket upgrade, relaying between ``host`` and the origin ``link``."""
        return WebSocketLayer(host, link, relay, on_messages, on_end)

    def secure(self, inner: LayerHost, target: TunnelTarget, alpn: bytes,
               origins: AlpnOrigins | None) -> Http1Server | H2Server:
        """The layer inside intercepted TLS, once the handshake chose ``alpn``."""
        if alpn == b"h2":
            return H2Server(inner, origins or AlpnOrigins(inner.services.h2_pool))
        return Http1Server(inner)
