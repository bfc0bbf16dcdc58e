"""The WebSocket relay and handshake negotiation, without sockets: real wsproto peers on both sides."""

from __future__ import annotations

import zlib

import pytest
from wsproto.connection import CLIENT, SERVER, Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from capture.http import websocket
from capture.messages import WebSocketClose
from capture.http.websocket import HandshakeError, Relay

KEY = [(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")]


class Pair:
    """A client peer, a relay and an origin peer, with the wires between them carried by hand."""

    def __init__(self, client_deflate: bool = False, server_deflate: bool = False, limit: int = 1 << 20,
                 max_message: int = 1 << 20, omit_server: bool = False) -> None:
        self.now = 100.0
        # Negotiated as on the wire: the client's offer, the proxy's offer upstream, the origin's answer.
        client_ext, server_ext = PerMessageDeflate(), PerMessageDeflate()
        request = list(KEY)
        if client_deflate:
            request.append((b"Sec-WebSocket-Extensions", b"permessage-deflate; " + client_ext.offer().encode()))
        response = []
        upstream = websocket.origin_request_headers(request)
        offer = [v for n, v in upstream if n == b"Sec-WebSocket-Extensions"]
        if server_deflate:
            if not offer:  # the origin wants deflate though the client did not: offered by hand
                offer = [b"permessage-deflate; " + PerMessageDeflate().offer().encode()]
                request.append((b"Sec-WebSocket-Extensions", offer[0]))
            response.append((b"Sec-WebSocket-Extensions", b"permessage-deflate; " + server_ext.accept(offer[0].decode()).encode()))
        headers, sides = websocket.complete_handshake(request, response)
        if not client_deflate:
            sides = ([], sides[1])
        accepted = [v for n, v in headers if n == b"Sec-WebSocket-Extensions"]
        if accepted:
            client_ext.finalize(accepted[0].decode())
        self.client = Connection(CLIENT, [client_ext] if client_deflate else [])
        self.origin = Connection(SERVER, [server_ext] if server_deflate else [])
        self.relay = Relay(sides, limit, max_message, lambda: self.now, omit_server)
        assert [bool(side) for side in sides] == [client_deflate, server_deflate]
        self.messages = []
        self.closed = {"client": False, "server": False}

    def send(self, from_client: bool, *events) -> list:
        """Send events from one peer through the relay; the events the other peer sees."""
        peer = self.client if from_client else self.origin
        data = b"".join(peer.send(event) for event in events)
        return self.feed(from_client, data)

    def feed(self, from_client: bool, data: bytes) -> list:
        self.relay.receive(from_client, data)
        to_peer = bytearray()
        back = bytearray()
        steps = 0
        while self.relay.pending(from_client):
            steps += 1
            out = self.relay.step(from_client)
            to_peer += out.to(from_client)
            back += out.to(not from_client)
            self.messages.extend(out.messages)
            self.closed["client"] |= out.close_client
            self.closed["server"] |= out.close_server
        self.steps = steps
        receiver = self.origin if from_client else self.client
        sender = self.client if from_client else self.origin
        if back:
            sender.receive_data(bytes(back))
            self.back = list(sender.events())
        else:
            self.back = []
        if receiver.state is ConnectionState.CLOSED:
            return []
        receiver.receive_data(bytes(to_peer))
        return list(receiver.events())


def test_text_and_binary_pass_and_are_recorded():
    """Messages reach the other side unchanged, each recorded with direction, type, content and time."""
    pair = Pair()
    assert pair.send(True, TextMessage("héllo")) == [TextMessage("héllo")]
    pair.now = 101.0
    assert pair.send(False, BytesMessage(b"\x00\xff")) == [BytesMessage(b"\x00\xff")]
    first, second = pair.messages
    assert (first.from_client, first.type, first.content, first.size, first.truncated, first.time) == \
        (True, "text", "héllo".encode(), 6, False, 100.0)
    assert (second.from_client, second.type, second.content, second.time) == (False, "binary", b"\x00\xff", 101.0)


def test_fragments_are_forwarded_as_they_come():
    """A fragmented message passes fragment by fragment; it is recorded once, whole, when it ends."""
    pair = Pair()
    got = pair.send(True, BytesMessage(b"abc", message_finished=False))
    assert got == [BytesMessage(b"abc", message_finished=False)] and pair.messages == []
    pair.send(True, BytesMessage(b"def", message_finished=True))
    assert [m.content for m in pair.messages] == [b"abcdef"]


def test_capture_limit_cuts_the_record_not_the_message():
    """Past the capture limit the record is truncated (true size kept); the message passes whole."""
    pair = Pair(limit=4)
    assert pair.send(True, TextMessage("ééééé")) == [TextMessage("ééééé")]
    (message,) = pair.messages
    assert message.content == "éé".encode() and message.size == 10 and message.truncated


def test_no_capture_records_nothing():
    """With a capture limit of 0 (no session wants the flow) messages pass and nothing is kept."""
    pair = Pair(limit=0)
    assert pair.send(True, TextMessage("x")) == [TextMessage("x")]
    assert pair.messages == []


@pytest.mark.parametrize("server_deflate", [False, True])
def test_omitted_server_messages_pass_whole_and_are_recorded_without_content(server_deflate):
    """With omit_server the origin's messages reach the client whole; the record keeps
    direction, type, size and time, no content, and says it was omitted; the client's are kept."""
    pair = Pair(client_deflate=server_deflate, server_deflate=server_deflate, omit_server=True)
    assert pair.send(True, TextMessage("question")) == [TextMessage("question")]
    pair.now = 101.0
    assert pair.send(False, TextMessage("secret answer")) == [TextMessage("secret answer")]
    assert pair.send(False, BytesMessage(b"\x00" * 3000)) == [BytesMessage(b"\x00" * 3000)]
    assert pair.send(False, BytesMessage(b"")) == [BytesMessage(b"")]
    client, text, binary, empty = pair.messages
    assert (client.content, client.omitted, client.truncated) == (b"question", False, False)
    assert [(m.from_client, m.type, m.content, m.size, m.time, m.omitted) for m in (text, binary)] == [
        (False, "text", b"", 13, 101.0, True), (False, "binary", b"", 3000, 101.0, True)]
    assert text.truncated and binary.truncated  # their bytes are not all stored, as for a cut message
    assert (empty.size, empty.omitted, empty.truncated) == (0, True, False)


def test_ping_and_pong_are_relayed():
    """A ping crosses to the other side and its pong comes back the same way."""
    pair = Pair()
    assert pair.send(True, Ping(b"p1")) == [Ping(b"p1")]
    assert pair.send(False, Pong(b"p1")) == [Pong(b"p1")]
    assert pair.messages == []


@pytest.mark.parametrize("from_client", [True, False])
def test_close_handshake_relayed_both_ways(from_client):
    """A close from either side reaches the other; its answer comes back; who closed is recorded."""
    pair = Pair()
    assert pair.send(from_client, CloseConnection(4001, "bye")) == [CloseConnection(4001, "bye")]
    assert not pair.relay.finished
    assert pair.send(not from_client, CloseConnection(4001, "bye")) == [CloseConnection(4001, "bye")]
    assert pair.relay.finished and pair.closed == {"client": True, "server": True}
    assert pair.relay.close == WebSocketClose(4001, "bye", "client" if from_client else "server")


def test_close_without_code():
    """An empty close frame is relayed as one and recorded without a code."""
    pair = Pair()
    assert pair.feed(True, b"\x88\x80abcd") == [CloseConnection(1005, "")]  # masked, no payload
    assert pair.relay.close == WebSocketClose(None, "", "client")


def test_connection_lost_tells_the_other_side():
    """A side that drops its connection: the other gets 1001, the record says 1006 and who dropped."""
    pair = Pair()
    out = pair.relay.connection_lost(False)
    pair.client.receive_data(bytes(out.to_client))
    assert [type(e) for e in pair.client.events()] == [CloseConnection]
    assert out.close_client and pair.relay.close == WebSocketClose(1006, "connection lost without a close frame",
                                                                   "server")


def joined(events: list) -> list:
    """Fragments joined into whole messages, as an application reads them."""
    whole, parts = [], []
    for event in events:
        parts.append(event.data)
        if event.message_finished:
            whole.append(type(event)(type(parts[0])().join(parts)))
            parts = []
    return whole


def test_deflate_on_client_side_only():
    """The client compresses with the proxy, the origin does not: both see plain messages, stored decompressed."""
    pair = Pair(client_deflate=True)
    text = "abc" * 1000
    assert joined(pair.send(True, TextMessage(text))) == [TextMessage(text)]
    assert joined(pair.send(False, TextMessage(text))) == [TextMessage(text)]
    assert [m.content for m in pair.messages] == [text.encode()] * 2


def test_deflate_on_origin_side_only():
    """The origin compresses with the proxy and the client does not."""
    pair = Pair(server_deflate=True)
    assert joined(pair.send(False, BytesMessage(b"z" * 5000))) == [BytesMessage(b"z" * 5000)]
    assert pair.messages[0].content == b"z" * 5000


def bomb(size: int) -> bytes:
    """A permessage-deflate binary frame, masked, inflating to ``size`` zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(b"\0" * size) + compressor.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    length = len(body)
    header = bytes([0xC2]) + (bytes([0x80 | 127]) + length.to_bytes(8, "big") if length > 65535 else
                              bytes([0x80 | 126]) + length.to_bytes(2, "big") if length > 125 else
                              bytes([0x80 | length]))
    return header + mask + masked


def test_deflate_bomb_is_cut_in_bounded_steps():
    """A message inflating past the bound ends the socket with 1009; no step inflates more than a bounded amount."""
    pair = Pair(client_deflate=True, max_message=1 << 20)
    seen_out = []
    pair.relay.receive(True, bomb(64 << 20))
    while pair.relay.pending(True):
        out = pair.relay.step(True)
        seen_out.append(len(out.to_server))
    assert max(seen_out) < 2 << 20
    assert pair.relay.close == WebSocketClose(1009, f"message larger than {1 << 20} bytes once inflated", "proxy")
    assert pair.relay.finished


def test_protocol_errors_close_both_sides():
    """An unmasked client frame (and a bad opcode) closes both sides; the offender hears the error."""
    for frame, code in ((b"\x81\x02hi", 1002), (b"\x83\x80abcd", 1002)):
        pair = Pair()
        pair.feed(True, frame)
        assert pair.relay.close.code == code and pair.relay.close.closed_by == "proxy"
        assert pair.closed == {"client": True, "server": True}
        assert isinstance(pair.back[0], CloseConnection) and pair.back[0].code == code


def test_origin_request_and_handshake_per_side():
    """The origin is offered the proxy's own deflate; each side gets its own agreement."""
    request = [(b"Host", b"h"), *KEY, (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits")]
    upstream = websocket.origin_request_headers(request)
    assert (b"Connection", b"Upgrade") in upstream and (b"Upgrade", b"websocket") in upstream
    offers = [v for n, v in upstream if n == b"Sec-WebSocket-Extensions"]
    assert len(offers) == 1 and offers[0].startswith(b"permessage-deflate")
    headers, (client_ext, server_ext) = websocket.complete_handshake(request, [(b"Sec-WebSocket-Accept", b"x")])
    assert len(client_ext) == 1 and server_ext == []
    assert [v for n, v in headers if n == b"Sec-WebSocket-Extensions"][0].startswith(b"permessage-deflate")
    headers, (client_ext, server_ext) = websocket.complete_handshake(
        KEY, [(b"Sec-WebSocket-Accept", b"x")])
    assert client_ext == [] and server_ext == [] and not any(n == b"Sec-WebSocket-Extensions" for n, _ in headers)


def test_origin_accepting_what_was_not_offered_fails():
    """An origin that answers with an extension nobody offered fails the handshake."""
    with pytest.raises(HandshakeError):
        websocket.complete_handshake(KEY, [(b"Sec-WebSocket-Extensions", b"permessage-deflate")])
    with pytest.raises(HandshakeError):
        websocket.complete_handshake(
            [*KEY, (b"Sec-WebSocket-Extensions", b"permessage-deflate")], [(b"Sec-WebSocket-Extensions", b"x-foo")])


def test_upgrade_requested():
    """Only a GET with Upgrade: websocket and Connection: upgrade is a WebSocket handshake."""
    headers = [(b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"WebSocket")]
    assert websocket.upgrade_requested(b"GET", headers)
    assert not websocket.upgrade_requested(b"POST", headers)
    assert not websocket.upgrade_requested(b"GET", [(b"Upgrade", b"h2c"), (b"Connection", b"upgrade")])
    assert not websocket.upgrade_requested(b"GET", [(b"Upgrade", b"websocket")])
