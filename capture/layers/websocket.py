"""The WebSocket layer: a WebSocket between two transports, the I/O half of :mod:`capture.http.websocket`.

Once the origin's 101 has been relayed, the HTTP/1 server layer switches
its host to a ``WebSocketLayer`` (built by the stack) and the origin link's
handler becomes the layer's origin side: both connections' bytes go to the
bridge (:meth:`WebSocketBridge.data`), their ends to
:meth:`WebSocketBridge.lost`.  The bridge steps the relay and writes what it
says.  Hosted as described in :mod:`capture.layers.host`.

Back-pressure: each side's transport has a producer registered for the
bytes the other side sends it.  When the client's write buffer fills,
Twisted pauses that producer and the bridge stops reading the origin, and
stops stepping what it has already read from it; it resumes when the
buffer drains.  So a slow reader slows the writer down, and the proxy holds
at most one read per side plus one step's output.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from capture.http.websocket import Output, Relay
from capture.messages import WebSocketClose, WebSocketMessage

# Seconds a side may take to answer a close (or drain) before both connections are cut.
CLOSE_TIMEOUT = 10.0


class Side:
    """One connection as the bridge drives it: write, close, and pause or resume its reading."""

    def __init__(self, transport: Any, pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.pause = pause or transport.pauseProducing
        self.resume = resume or transport.resumeProducing


@implementer(IPushProducer)
class _Sender:
    """Registered on one side's transport: pauses the other side, whose bytes fill this one."""

    def __init__(self, bridge: WebSocketBridge, from_client: bool) -> None:
        self.bridge = bridge
        self.from_client = from_client

    def pauseProducing(self) -> None:
        self.bridge.blocked(self.from_client, True)

    def resumeProducing(self) -> None:
        self.bridge.blocked(self.from_client, False)

    def stopProducing(self) -> None:
        """The transport is gone; ``lost`` tells the bridge."""


class WebSocketBridge:
    """Relays one WebSocket between the client's and the origin's connections.

    ``on_messages(messages)`` is called with each step's recorded messages;
    ``on_end(close)`` once, when both connections are gone.
    """

    def __init__(self, relay: Relay, client: Side, server: Side, reactor: Any,
                 on_messages: Callable[[list[WebSocketMessage]], None],
                 on_end: Callable[[WebSocketClose], None]) -> None:
        self.relay = relay
        self._sides = {True: client, False: server}
        self._reactor = reactor
        self._on_messages = on_messages
        self._on_end = on_end
        self._blocked = {True: False, False: False}
        self._gone = {True: False, False: False}
        self._closing = {True: False, False: False}
        self._ended = False
        self._close_timer: Any = None
        # The bytes a side sends are written to the other side's transport.
        server.transport.registerProducer(_Sender(self, True), True)
        client.transport.registerProducer(_Sender(self, False), True)

    def start(self, client_bytes: bytes, server_bytes: bytes) -> None:
        """Begin relaying, with what each side sent before the hand-over."""
        for side in (True, False):
            self._sides[side].resume()
        if client_bytes:
            self.data(True, client_bytes)
        if server_bytes:
            self.data(False, server_bytes)

    def data(self, from_client: bool, data: bytes) -> None:
        """Bytes read from one side."""
        self.relay.receive(from_client, data)
        self._pump(from_client)

    def lost(self, from_client: bool) -> None:
        """One side's connection is gone."""
        if self._gone[from_client]:
            return
        self._gone[from_client] = True
        self._closing[from_client] = True
        if not self._gone[not from_client]:
            self._apply(self.relay.connection_lost(from_client))
        self._check_end()

    def shutdown(self) -> None:
        """The appliance is stopping: close both sides with 1001."""
        if not self._ended:
            self._apply(self.relay.shutdown())

    def blocked(self, from_client: bool, paused: bool) -> None:
        """The other side's write buffer filled (or drained): stop (or go on) reading this side."""
        if self._blocked[from_client] == paused or self._gone[from_client]:
            return
        self._blocked[from_client] = paused
        if paused:
            self._sides[from_client].pause()
        else:
            self._sides[from_client].resume()
            self._pump(from_client)

    # -- internals --------------------------------------------------------------------

    def _pump(self, from_client: bool) -> None:
        relay = self.relay
        while relay.pending(from_client) and not self._blocked[from_client] and not self._closing[from_client]:
            self._apply(relay.step(from_client))

    def _apply(self, out: Output) -> None:
        for side, data in ((True, out.to_client), (False, out.to_server)):
            if data and not self._gone[side]:
                self._sides[side].transport.write(bytes(data))
        if out.messages:
            self._on_messages(out.messages)
        if out.close_client:
            self._close(True)
        if out.close_server:
            self._close(False)
        if self._close_timer is None and self.relay.close is not None and not self._ended:
            self._close_timer = self._reactor.callLater(CLOSE_TIMEOUT, self._close_timed_out)

    def _close(self, side: bool) -> None:
        """Write what is pending to that side, then close it."""
        if self._closing[side]:
            return
        self._closing[side] = True
        transport = self._sides[side].transport
        if transport.producer is not None:
            transport.unregisterProducer()
        self._sides[side].resume()  # a paused reader would never see its peer's close
        transport.loseConnection()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        for side in (True, False):
            if not self._gone[side]:
                self._sides[side].transport.abortConnection()

    def _check_end(self) -> None:
        if self._ended or not (self._gone[True] and self._gone[False]):
            return
        self._ended = True
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self._on_end(self.relay.close or WebSocketClose(None, "", "proxy"))


class _OriginSide:
    """The origin link's handler once the link carries a WebSocket."""

    def __init__(self, bridge: WebSocketBridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes) -> None:
        self.bridge.data(False, data)

    def connection_lost(self, reason: Any) -> None:
        self.bridge.lost(False)


class WebSocketLayer:
    """What a client connection hosts after its upgrade: the client's side of the bridge.

    ``link`` is the origin link (``capture.upstream.connector.OriginLink``)
    that carried the upgrade; from here on its bytes come to the bridge too.
    """

    def __init__(self, host: Any, link: Any, relay: Relay, on_messages: Callable[[list[WebSocketMessage]], None],
                 on_end: Callable[[WebSocketClose], None]) -> None:
        client = Side(host.transport, lambda: host.pause("websocket"), lambda: host.resume("websocket"))
        self.bridge = WebSocketBridge(relay, client, Side(link.transport), host.services.reactor, on_messages, on_end)
        link.handler = _OriginSide(self.bridge)

    def start(self, client_bytes: bytes, origin_bytes: bytes) -> None:
        """Relay what each side sent before the hand-over, then go on as bytes come."""
        self.bridge.start(client_bytes, origin_bytes)

    def data_received(self, data: bytes) -> None:
        self.bridge.data(True, data)

    def connection_lost(self, reason: Any) -> None:
        self.bridge.lost(True)

    def close_when_idle(self) -> None:
        self.bridge.shutdown()
