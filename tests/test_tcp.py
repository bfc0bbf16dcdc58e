"""Tests for capture.tcp: the settings every proxy connection gets, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import MemoryReactor

from capture import tcp
from capture.tls.bulk import BulkTLSFactory
from certs import UnverifiedClient


class Reads(Protocol):
    def __init__(self) -> None:
        self.reads: list[int] = []

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(len(data))


@pytest.fixture
def pair():
    """Two ends of a real loopback TCP connection; the first can hold a few MiB unread."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.socket()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        ours.connect(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_plain_connection_reads_large_blocks_without_nagle(pair):
    """One read takes up to READ_SIZE bytes, not Twisted's 64 KiB, and Nagle is off."""
    ours, theirs = pair
    protocol = Reads()
    connection = Connection(ours, protocol, MemoryReactor())
    protocol.makeConnection(connection)
    assert not nodelay(ours)

    tcp.tune(connection)

    assert nodelay(ours)
    theirs.sendall(b"x" * (tcp.READ_SIZE + 1024))  # on loopback, queued at our end once this returns
    for _ in range(100):
        if sum(protocol.reads) == tcp.READ_SIZE + 1024:
            break
        connection.doRead()
    assert sum(protocol.reads) == tcp.READ_SIZE + 1024
    assert max(protocol.reads) > 64 * 1024
    assert max(protocol.reads) <= tcp.READ_SIZE


def test_tls_wrapped_connection_tunes_the_socket_underneath(pair):
    """Given the TLS transport a protocol sees, the TCP connection under it is the one tuned."""
    ours, _ = pair
    connection = Connection(ours, None, MemoryReactor())
    tls = BulkTLSFactory(UnverifiedClient(), True, Factory.forProtocol(Protocol)).buildProtocol(None)
    connection.protocol = tls
    tls.makeConnection(connection)

    tcp.tune(tls)

    assert nodelay(ours)
    assert connection.bufferSize == tcp.READ_SIZE
    assert "bufferSize" not in vars(tls)  # set on the socket's connection, not on the wrapper
