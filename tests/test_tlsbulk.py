"""Tests for capture.tlsbulk: real TLS (OpenSSL both sides) over an in-memory pipe.

The end-to-end suites move large bodies through the appliance over sockets;
here the transport's own promises are checked where each can be seen: one
delivery per socket read rather than per record, bounded, in order, and
everything delivered before the close.
"""

from __future__ import annotations

import hashlib

import pytest
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient

from capture.tls.verify import ServerConnection
from capture.tls.bulk import MAX_DELIVERY, BulkTLSFactory
from certs import OriginCA, UnverifiedClient

RECORD = 16 * 1024


class Recorder(Protocol):
    """Keeps every delivery, and when the connection ended relative to them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: object = None) -> None:
        self.events.append(("lost", reason))

    @property
    def deliveries(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "data"]

    @property
    def received(self) -> bytes:
        return b"".join(self.deliveries)


@pytest.fixture(scope="module")
def server_context(tmp_path_factory) -> SSL.Context:
    cert, key = OriginCA(tmp_path_factory.mktemp("bulk")).issue("server", ["localhost"])
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_file(str(cert))
    context.use_privatekey_file(str(key))
    return context


@pytest.fixture
def tls_pair(server_context):
    """(client app, server app, client TLS transport, pump), handshake done."""
    clock = Clock()
    server_app, client_app = Recorder(), Recorder()
    server_factory = BulkTLSFactory(ServerConnection(server_context), False, Factory.forProtocol(lambda: server_app),
                                    clock=clock)
    client_factory = BulkTLSFactory(UnverifiedClient(), True, Factory.forProtocol(lambda: client_app), clock=clock)
    client, _server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None), clock=clock,
    )
    return client_app, server_app, client, pump


def pump_all(pump, rounds: int = 50) -> None:
    for _ in range(rounds):
        if not pump.pump():
            break


def test_a_large_write_arrives_whole_in_few_bounded_deliveries(tls_pair) -> None:
    """1 MiB in one write is 64 records; it arrives in deliveries of at most MAX_DELIVERY, not one per record."""
    _client_app, server_app, client, pump = tls_pair
    body = bytes(range(256)) * 4096  # 1 MiB
    client.write(body)
    pump_all(pump)
    assert hashlib.sha256(server_app.received).digest() == hashlib.sha256(body).digest()
    sizes = [len(d) for d in server_app.deliveries]
    assert max(sizes) <= MAX_DELIVERY
    assert len(sizes) < len(body) // RECORD
    assert len(sizes) >= len(body) // MAX_DELIVERY


def test_small_large_and_sequence_writes_keep_their_order(tls_pair) -> None:
    """A large write sends what small writes gathered before it first; writeSequence is one write."""
    _client_app, server_app, client, pump = tls_pair
    client.write(b"first ")
    client.write(b"L" * 100_000)
    client.write(b" middle ")
    client.writeSequence([b"seq-a ", b"S" * 40_000, b" seq-b"])
    client.write(b" last")
    pump_all(pump)
    assert server_app.received == b"first " + b"L" * 100_000 + b" middle seq-a " + b"S" * 40_000 + b" seq-b last"


def test_everything_sent_before_a_close_is_delivered_before_connection_lost(tls_pair) -> None:
    """Data followed at once by close_notify: all of it reaches the protocol, then the connection ends."""
    client_app, server_app, client, pump = tls_pair
    body = b"x" * 300_000
    client.write(body)
    client.loseConnection()
    pump_all(pump)
    kinds = [kind for kind, _ in server_app.events]
    assert kinds[-1] == "lost" and kinds.count("lost") == 1
    assert server_app.received == body


def test_both_directions_at_once(tls_pair) -> None:
    """Each side writes large bodies while it receives them."""
    client_app, server_app, client, pump = tls_pair
    server = server_app.transport
    up, down = b"u" * 500_000, b"d" * 700_000
    client.write(up)
    server.write(down)
    pump_all(pump)
    assert server_app.received == up
    assert client_app.received == down
