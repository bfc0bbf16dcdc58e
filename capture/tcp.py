"""What every TCP connection of the proxy gets, client side and origin side."""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper

# Bytes asked of the kernel per read. Twisted asks for 64 KiB, so a large body
# costs a round of Python calls (parser, capture, the write on the other side)
# per 64 KiB; 256 KiB reads move 100 MiB bodies 20 to 60 % faster (bench/README.md).
# Twisted also takes it as the bytes a connection buffers before it pauses
# its producer, so it bounds memory per transfer too.
READ_SIZE = 256 * 1024


def tune(transport: Any) -> None:
    """No Nagle delay, and large reads, for the TCP connection under ``transport`` (TLS or not)."""
    transport.setTcpNoDelay(True)
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if isinstance(transport, Connection):
        transport.bufferSize = READ_SIZE
