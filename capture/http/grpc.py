"""The order in which a gRPC call's messages pass, counted from the bytes as they go by.

A gRPC body is a run of length-prefixed messages (a flag byte and a
4-byte big-endian length, then the message).  The stored bodies say the
order within each direction, not how the two directions interleaved in a
streaming call; ``MessageOrder`` notes, as the bytes pass, which
direction each message came from and when, so the flow detail can list
them as they happened.  Sans-I/O: fed bytes and times by the exchange.
"""

from __future__ import annotations

MAX_ENTRIES = 10_000  # messages noted per call; later ones are listed after, each direction in its order


def is_grpc(content_type: str | None) -> bool:
    """``application/grpc`` and its ``+proto`` (or other) forms; gRPC-Web is framed apart."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/grpc" or media.startswith("application/grpc+")


def is_grpc_request(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers (as received) open a gRPC call."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return is_grpc(value.decode("latin-1"))
    return False


class PrefixCounter:
    """The messages that begin in one direction's bytes, however the bytes are cut."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # the part of a 5-byte prefix seen so far
        self._skip = 0  # message bytes still to pass before the next prefix

    def feed(self, data: bytes) -> int:
        """How many message prefixes these bytes complete."""
        count = 0
        offset = 0
        end = len(data)
        while offset < end:
            if self._skip:
                step = min(self._skip, end - offset)
                self._skip -= step
                offset += step
                continue
            take = 5 - len(self._head)
            self._head += data[offset: offset + take]
            offset += take
            if len(self._head) == 5:
                self._skip = int.from_bytes(self._head[1:], "big")
                self._head = b""
                count += 1
        return count


class MessageOrder:
    """Which way each message of a call went, and when, in the order they passed."""

    __slots__ = ("entries", "_request", "_response")

    def __init__(self) -> None:
        self.entries: list[tuple[bool, float]] = []
        self._request = PrefixCounter()
        self._response = PrefixCounter()

    def feed(self, from_client: bool, data: bytes, now: float) -> None:
        count = (self._request if from_client else self._response).feed(data)
        room = MAX_ENTRIES - len(self.entries)
        if count and room > 0:
            self.entries.extend([(from_client, now)] * min(count, room))
