"""A TLS transport that moves large bodies in large blocks.

Twisted's TLS transport hands its protocol the plaintext of each TLS record
(16 KiB at most) in a call of its own, and sends a write 16 KiB at a time,
each piece followed by a read of OpenSSL's outgoing buffer and a socket
write.  Through a proxy each of those calls is repeated on the other side,
so a large body pays Python's per-call price several times per record.
Here the plaintext of every record one socket read completed goes to the
protocol in one call, a large write goes to OpenSSL in one pass, and the
outgoing buffer is drained in large blocks: about 15 % more HTTPS
throughput for large bodies (bench/README.md).  Errors, shutdown and
producers behave as in Twisted's transport, and small writes are still
gathered per reactor turn.
"""

from __future__ import annotations

from typing import Iterable

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

# Writes this large skip the per-turn gathering of small writes.
LARGE_WRITE = 16 * 1024
# At most this much plaintext is gathered for one delivery.
MAX_DELIVERY = 256 * 1024
# One record's plaintext is at most 16 KiB: the buffer for each read of one.
RECORD_READ = 32 * 1024
# Ciphertext is taken from OpenSSL's outgoing buffer in blocks of this size.
SEND_BLOCK = 128 * 1024


class BulkTLSTransport(BufferingTLSTransport):
    """Twisted's TLS transport, with one call per socket read and per large write.

    ``alpn_choice``, set before the connection is made, is the protocol the
    server side selects by ALPN when the client offers it (``capture.tls.ca``).
    """

    alpn_choice: bytes | None = None

    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: object, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self.write = self._write_any  # type: ignore[method-assign]

    def _write_any(self, data: bytes) -> None:
        if len(data) < LARGE_WRITE:
            self._aggregator.write(data)
            return
        self._aggregator.flush()  # what was gathered goes first
        if self.disconnecting and self._producer is None:
            return
        self._write(data)

    def writeSequence(self, sequence: Iterable[bytes]) -> None:
        self.write(b"".join(sequence))

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        sent, size = 0, len(view)
        send = self._tlsConnection.send
        while sent < size:
            try:
                sent += send(view[sent:])
            except WantReadError:  # the peer must speak first (renegotiation): keep the rest
                self._bufferedWrite(bytes(view[sent:]))
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        read = self._tlsConnection.bio_read
        while True:
            try:
                data = read(SEND_BLOCK)
            except WantReadError:
                return
            self.transport.write(data)

    def _flushReceiveBIO(self) -> None:
        recv = self._tlsConnection.recv
        gathered: list[bytes] = []
        size = 0
        while not self._lostTLSConnection:
            try:
                data = recv(RECORD_READ)
            except WantReadError:
                break
            except ZeroReturnError:  # the peer's close_notify: deliver what came before it, then end
                self._deliver(gathered)
                gathered, size = [], 0
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._deliver(gathered)
                gathered, size = [], 0
                self._tlsShutdownFinished(Failure())
            else:
                gathered.append(data)
                size += len(data)
                if size >= MAX_DELIVERY:
                    self._deliver(gathered)
                    gathered, size = [], 0
        self._deliver(gathered)
        self._flushSendBIO()

    def _deliver(self, gathered: list[bytes]) -> None:
        if gathered and not self._aborted:
            ProtocolWrapper.dataReceived(self, gathered[0] if len(gathered) == 1 else b"".join(gathered))


class BulkTLSFactory(TLSMemoryBIOFactory):
    """A TLSMemoryBIOFactory whose connections use BulkTLSTransport."""

    protocol = BulkTLSTransport
    noisy = False
