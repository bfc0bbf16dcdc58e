"""The WebSocket bridge on StringTransports: bytes relayed, back-pressure, closing, the end reported once."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from capture.messages import WebSocketClose
from capture.http.websocket import Relay
from capture.layers.websocket import CLOSE_TIMEOUT, Side, WebSocketBridge


class Rig:
    """A bridge between two StringTransports, with wsproto peers to make and read the frames."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client_transport, self.server_transport = StringTransport(), StringTransport()
        self.client, self.origin = Connection(CLIENT), Connection(SERVER)
        self.messages, self.ends = [], []
        relay = Relay(([], []), 1 << 20, 1 << 20, self.reactor.seconds)
        self.bridge = WebSocketBridge(relay, Side(self.client_transport), Side(self.server_transport), self.reactor,
                                      self.messages.extend, self.ends.append)

    def received(self, transport: StringTransport, peer: Connection) -> list:
        peer.receive_data(transport.value())
        transport.clear()
        return list(peer.events())


def test_bytes_relayed_both_ways_and_recorded():
    """Frames from each side reach the other's transport; messages are reported as they complete."""
    rig = Rig()
    rig.bridge.start(rig.client.send(TextMessage("early")), b"")
    rig.bridge.data(False, rig.origin.send(BytesMessage(b"\x01")))
    assert rig.received(rig.server_transport, rig.origin) == [TextMessage("early")]
    assert rig.received(rig.client_transport, rig.client) == [BytesMessage(b"\x01")]
    assert [(m.from_client, m.content) for m in rig.messages] == [(True, b"early"), (False, b"\x01")]


def test_a_full_reader_pauses_the_writer_and_its_backlog():
    """When the client's transport asks its producer to pause, the origin is no longer read, nor its backlog stepped."""
    rig = Rig()
    rig.bridge.start(b"", b"")
    rig.client_transport.producer.pauseProducing()  # the client's write buffer is full
    assert rig.server_transport.producerState == "paused"
    rig.bridge.data(False, rig.origin.send(TextMessage("held")))
    assert rig.client_transport.value() == b"" and rig.bridge.relay.pending(False)
    rig.client_transport.producer.resumeProducing()
    assert rig.server_transport.producerState == "producing"
    assert rig.received(rig.client_transport, rig.client) == [TextMessage("held")]


def test_close_handshake_closes_both_and_reports_the_end_once():
    """A close answered by the other side closes both transports; the end comes once both are gone."""
    rig = Rig()
    rig.bridge.start(b"", b"")
    rig.bridge.data(True, rig.client.send(CloseConnection(1000, "bye")))
    rig.received(rig.server_transport, rig.origin)
    rig.bridge.data(False, rig.origin.send(CloseConnection(1000, "bye")))
    assert rig.client_transport.disconnecting and rig.server_transport.disconnecting
    rig.bridge.lost(True)
    assert rig.ends == []
    rig.bridge.lost(False)
    rig.bridge.lost(False)
    assert rig.ends == [WebSocketClose(1000, "bye", "client")]


def test_a_side_that_never_answers_the_close_is_cut():
    """If the origin never answers a close, both connections are aborted after CLOSE_TIMEOUT."""
    rig = Rig()
    rig.bridge.start(b"", b"")
    rig.bridge.data(True, rig.client.send(CloseConnection(1000)))
    rig.reactor.advance(CLOSE_TIMEOUT - 0.1)
    assert not (rig.client_transport.disconnected or rig.server_transport.disconnected)
    rig.reactor.advance(0.1)
    assert rig.client_transport.disconnected and rig.server_transport.disconnected  # aborted


def test_dropped_connection_closes_the_other_side():
    """The origin's connection dropping: the client hears 1001 and is closed; the end says 1006 by the server."""
    rig = Rig()
    rig.bridge.start(b"", b"")
    rig.bridge.lost(False)
    (close,) = rig.received(rig.client_transport, rig.client)
    assert isinstance(close, CloseConnection) and close.code == 1001
    assert rig.client_transport.disconnecting
    rig.bridge.lost(True)
    assert rig.ends[0].code == 1006 and rig.ends[0].closed_by == "server"
