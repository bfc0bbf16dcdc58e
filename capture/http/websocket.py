"""WebSocket through the proxy, sans-I/O: the upgrade's extension negotiation and the message relay.

The proxy is a WebSocket server to the client and a client to the origin,
each side with its own ``wsproto`` connection, so each side negotiates
permessage-deflate with the proxy on its own terms: the origin is offered
compression exactly when the client asked for it, and each side's
parameters are agreed separately.  Messages pass frame by frame as they
come (a fragment is forwarded without waiting for the rest of its
message); what is recorded is each whole message, decompressed, up to the
capture limit.

Nothing here touches a socket.  The I/O side hands received bytes to
:meth:`Relay.receive`, calls :meth:`Relay.step` while the other side's
transport takes more, and writes what each :class:`Output` holds.  A side
that negotiated deflate is parsed ``INFLATE_SLICE`` bytes per step, so one
step can never inflate more than about a thousand times that: a
decompression bomb costs bounded memory per step, and a message that
inflates past ``max_message`` ends the socket with 1009 (message too big).
"""

from __future__ import annotations

from typing import Callable

from wsproto.connection import CLIENT, SERVER, Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from capture.messages import WebSocketClose, WebSocketMessage

# Compressed bytes parsed at a time on a deflate side: deflate inflates at most ~1032x.
INFLATE_SLICE = 1024
MESSAGE_TOO_BIG = 1009
GOING_AWAY = 1001
ABNORMAL = 1006

Headers = list[tuple[bytes, bytes]]
#: Each side's negotiated extensions: (towards the client, towards the origin).
Sides = tuple[list[Extension], list[Extension]]


class HandshakeError(ValueError):
    """The origin's 101 does not complete the handshake the proxy offered."""


def upgrade_requested(method: bytes, headers: Headers) -> bool:
    """Is this a WebSocket opening handshake (RFC 6455 4.1)?"""
    if method != b"GET":
        return False
    upgrade = connection = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"upgrade":
            upgrade = upgrade or any(token.strip().lower() == b"websocket" for token in value.split(b","))
        elif lowered == b"connection":
            connection = connection or any(token.strip().lower() == b"upgrade" for token in value.split(b","))
    return upgrade and connection


def deflate_offered(headers: Headers) -> str | None:
    """The client's first permessage-deflate offer, or None."""
    for offer in _extension_values(headers):
        if offer.split(";", 1)[0].strip().lower() == PerMessageDeflate.name:
            return offer
    return None


def origin_request_headers(headers: Headers) -> Headers:
    """The upgrade request as the origin gets it: the client's end-to-end headers, the proxy's own extension offer.

    ``headers`` are already stripped of hop-by-hop fields; the Upgrade and
    Connection fields the handshake needs are put back.
    """
    out = [(n, v) for n, v in headers if n.lower() != b"sec-websocket-extensions"]
    if deflate_offered(headers) is not None:
        offer = f"{PerMessageDeflate.name}; {PerMessageDeflate().offer()}"  # offer() holds the parameters only
        out.append((b"Sec-WebSocket-Extensions", offer.encode("ascii")))
    out.append((b"Connection", b"Upgrade"))
    out.append((b"Upgrade", b"websocket"))
    return out


def complete_handshake(request_headers: Headers, response_headers: Headers) -> tuple[Headers, Sides]:
    """The 101's headers as the client gets them, and each side's extensions.

    ``response_headers`` are the origin's end-to-end headers; HandshakeError
    when the origin accepted an extension the proxy never offered.
    """
    server_extensions: list[Extension] = []
    offered = deflate_offered(request_headers) is not None
    for accepted in _extension_values(response_headers):
        name = accepted.split(";", 1)[0].strip().lower()
        if name != PerMessageDeflate.name or not offered or server_extensions:
            raise HandshakeError(f"origin accepted a WebSocket extension that was not offered: {accepted!r}")
        extension = PerMessageDeflate()
        try:
            extension.finalize(accepted)
        except ValueError:
            raise HandshakeError(f"origin sent bad permessage-deflate parameters: {accepted!r}") from None
        server_extensions.append(extension)
    out = [(n, v) for n, v in response_headers if n.lower() != b"sec-websocket-extensions"]
    client_extensions: list[Extension] = []
    offer = deflate_offered(request_headers)
    if offer is not None:
        extension = PerMessageDeflate()
        try:
            accepted = extension.accept(offer)
        except ValueError:
            accepted = None  # parameters we cannot honour: the client side goes uncompressed
        if accepted is not None:
            client_extensions.append(extension)
            # accept() answers with the parameters only, or True when there are none.
            value = PerMessageDeflate.name if accepted in (True, "") else f"{PerMessageDeflate.name}; {accepted}"
            out.append((b"Sec-WebSocket-Extensions", value.encode("ascii")))
    out.append((b"Connection", b"Upgrade"))
    out.append((b"Upgrade", b"websocket"))
    return out, (client_extensions, server_extensions)


def _extension_values(headers: Headers) -> list[str]:
    values = []
    for name, value in headers:
        if name.lower() == b"sec-websocket-extensions":
            values.extend(piece.strip() for piece in value.decode("latin-1").split(",") if piece.strip())
    return values


class Output:
    """What one step of the relay asks of the I/O side, in this order."""

    __slots__ = ("to_client", "to_server", "messages", "close_client", "close_server")

    def __init__(self) -> None:
        self.to_client = bytearray()
        self.to_server = bytearray()
        self.messages: list[WebSocketMessage] = []
        self.close_client = False  # write what is pending, then close that transport
        self.close_server = False

    def to(self, from_client: bool) -> bytearray:
        """The bytes bound for the other side of a sender."""
        return self.to_server if from_client else self.to_client


class _Side:
    """One WebSocket peer of the proxy, and the message it is sending."""

    __slots__ = ("from_client", "connection", "inflates", "inbox", "kind", "chunks", "stored", "size",
                 "closed", "gone")

    def __init__(self, from_client: bool, extensions: list[Extension]) -> None:
        self.from_client = from_client
        self.connection = Connection(SERVER if from_client else CLIENT, extensions)
        self.inflates = bool(extensions)
        self.inbox = bytearray()
        self.kind = ""
        self.chunks: list[bytes] = []
        self.stored = 0
        self.size = 0
        self.closed = False  # its transport should be closed (or is)
        self.gone = False  # its transport is gone

    def send(self, event: object, out: bytearray) -> None:
        """Queue an event towards this peer, if its state still takes one."""
        try:
            out += self.connection.send(event)
        except LocalProtocolError:
            pass  # it already closed: what it would have been sent goes nowhere


class Relay:
    """Both WebSocket peers of one socket through the proxy.

    ``capture_limit`` bytes of each message are recorded (0: record nothing);
    with ``omit_server`` the origin's messages are recorded without their
    content, which is never held (``omitted``: no session captures responses).
    ``max_message`` bounds a message's decompressed size on a side that
    negotiated permessage-deflate; ``clock`` gives message times.
    """

    def __init__(self, sides: Sides, capture_limit: int, max_message: int, clock: Callable[[], float],
                 omit_server: bool = False) -> None:
        self.client = _Side(True, sides[0])
        self.server = _Side(False, sides[1])
        self.capture_limit = capture_limit
        self.omit_server = omit_server
        self.max_message = max_message
        self.clock = clock
        self.close: WebSocketClose | None = None  # the first close seen, from whichever side

    @property
    def finished(self) -> bool:
        """Both sides are done: both transports may be closed."""
        return self.client.closed and self.server.closed

    def receive(self, from_client: bool, data: bytes) -> None:
        """Bytes read from a side; parsed by :meth:`step`."""
        side = self._side(from_client)
        if not side.closed:
            side.inbox += data

    def pending(self, from_client: bool) -> bool:
        """Has that side bytes not parsed yet?"""
        return bool(self._side(from_client).inbox)

    def step(self, from_client: bool) -> Output:
        """Parse the next piece of what a side sent and relay what it holds."""
        out = Output()
        side = self._side(from_client)
        if side.closed:
            side.inbox.clear()
            return out
        if side.inflates:
            data = bytes(side.inbox[:INFLATE_SLICE])
            del side.inbox[:INFLATE_SLICE]
        else:
            data = bytes(side.inbox)
            side.inbox.clear()
        side.connection.receive_data(data)
        for event in side.connection.events():
            self._event(side, event, out)
            if side.closed:
                side.inbox.clear()
                break
        return out

    def connection_lost(self, from_client: bool) -> Output:
        """A side's transport is gone: the other side is told its peer went away."""
        out = Output()
        side, other = self._side(from_client), self._side(not from_client)
        side.gone = side.closed = True
        side.inbox.clear()
        if self.close is None:
            self.close = WebSocketClose(ABNORMAL, "connection lost without a close frame", _name(side))
        if not other.closed:
            reason = "the client went away" if from_client else "the origin went away"
            other.send(CloseConnection(GOING_AWAY, reason), out.to(from_client))
            self._close_side(other, out)
        return out

    def shutdown(self) -> Output:
        """The appliance is stopping: both sides hear the proxy is going away, and are closed."""
        out = Output()
        reason = "the proxy is shutting down"
        if self.close is None:
            self.close = WebSocketClose(GOING_AWAY, reason, "proxy")
        for side in (self.client, self.server):
            if not side.closed:
                side.send(CloseConnection(GOING_AWAY, reason), out.to(not side.from_client))
                self._close_side(side, out)
        return out

    # -- internals -------------------------------------------------------------------

    def _side(self, from_client: bool) -> _Side:
        return self.client if from_client else self.server

    def _event(self, side: _Side, event: object, out: Output) -> None:
        other = self._side(not side.from_client)
        forward = out.to(side.from_client)
        if isinstance(event, (TextMessage, BytesMessage)):
            self._data(side, other, event, out)
        elif isinstance(event, Ping):
            other.send(Ping(event.payload), forward)
        elif isinstance(event, Pong):
            other.send(Pong(event.payload), forward)
        elif isinstance(event, CloseConnection):
            if side.connection.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                self._peer_closed(side, other, event, out)
            else:  # wsproto reports a frame it could not parse as a close it wants to send
                self._fail(side, int(event.code), event.reason or "protocol error", out)

    def _data(self, side: _Side, other: _Side, event: TextMessage | BytesMessage, out: Output) -> None:
        text = isinstance(event, TextMessage)
        payload = event.data.encode("utf-8") if text else bytes(event.data)
        if not side.kind:
            side.kind = "text" if text else "binary"
        side.size += len(payload)
        if side.inflates and side.size > self.max_message:
            self._fail(side, MESSAGE_TOO_BIG, f"message larger than {self.max_message} bytes once inflated", out)
            return
        omitted = self.omit_server and not side.from_client
        if side.stored < self.capture_limit and not omitted:
            piece = payload[: self.capture_limit - side.stored]
            side.chunks.append(piece)
            side.stored += len(piece)
        other.send(TextMessage(event.data, message_finished=event.message_finished) if text
                   else BytesMessage(payload, message_finished=event.message_finished), out.to(side.from_client))
        if event.message_finished:
            if self.capture_limit:
                content = b"".join(side.chunks)
                truncated = side.size > len(content)
                if truncated and side.kind == "text":
                    content = content.decode("utf-8", "ignore").encode("utf-8")  # no half character at the cut
                out.messages.append(WebSocketMessage(side.from_client, side.kind, content, side.size, truncated,
                                                     self.clock(), omitted))
            side.kind = ""
            side.chunks = []
            side.stored = side.size = 0

    def _peer_closed(self, side: _Side, other: _Side, event: CloseConnection, out: Output) -> None:
        """A close frame from a peer: relayed to the other, whose answer comes back the same way."""
        code = int(event.code)
        if self.close is None:
            self.close = WebSocketClose(None if code == CloseReason.NO_STATUS_RCVD else code,
                                        event.reason or "", _name(side))
        # An empty close is relayed empty: wsproto writes no code for NO_STATUS_RCVD itself, not for 1005.
        relayed = CloseReason.NO_STATUS_RCVD if code == CloseReason.NO_STATUS_RCVD else code
        other.send(CloseConnection(relayed, event.reason or None), out.to(side.from_client))
        if side.connection.state is ConnectionState.CLOSED:
            self._close_side(side, out)  # it answered our close: the handshake is over on its side
        if other.connection.state is ConnectionState.CLOSED:
            self._close_side(other, out)

    def _fail(self, side: _Side, code: int, reason: str, out: Output) -> None:
        """A side broke the protocol (or a bound): both are closed, the offender with the error's code."""
        other = self._side(not side.from_client)
        if self.close is None:
            self.close = WebSocketClose(code, reason, "proxy")
        side.send(CloseConnection(code, reason), out.to(not side.from_client))
        blame = "the client" if side.from_client else "the origin"
        other.send(CloseConnection(GOING_AWAY, f"{blame} broke the WebSocket protocol"[:120]), out.to(side.from_client))
        self._close_side(side, out)
        self._close_side(other, out)

    def _close_side(self, side: _Side, out: Output) -> None:
        if side.closed and side.gone:
            return
        side.closed = True
        side.inbox.clear()
        if side.from_client:
            out.close_client = True
        else:
            out.close_server = True


def _name(side: _Side) -> str:
    return "client" if side.from_client else "server"
