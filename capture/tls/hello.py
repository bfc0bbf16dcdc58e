"""Sans-I/O sniffing of the first bytes a client sends inside a CONNECT tunnel.

The proxy must decide, before answering with TLS or not, whether the client
speaks TLS, plain HTTP or something else, and for TLS which host it asked
for (SNI) and which protocols it offers (ALPN).  Everything here takes bytes
and returns values; the proxy keeps the buffer and calls again when more
bytes arrive.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["NEED_MORE", "MAX_HELLO", "ClientHello", "classify", "parse_client_hello"]

# Both functions return None when the bytes so far cannot decide yet; this
# name lets callers say so: ``if result is NEED_MORE``.
NEED_MORE = None

# A ClientHello larger than this is refused rather than buffered (real ones
# are under 2 KiB, a few KiB with post-quantum key shares).
MAX_HELLO = 64 * 1024

_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_MAX_RECORD = 2**14
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43

_HTTP_METHODS = tuple(
    m + b" " for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT")
)


def classify(data: bytes) -> str | None:
    """``"tls"``, ``"http"`` or ``"other"`` for the first bytes of a tunnel, or
    None (NEED_MORE) while they could still become more than one of those."""
    if not data:
        return NEED_MORE
    if data[0] == _RECORD_HANDSHAKE:
        if len(data) < 2:
            return NEED_MORE
        return "tls" if data[1] == 3 else "other"
    undecided = False
    for token in _HTTP_METHODS:
        if data.startswith(token):
            return "http"
        if token.startswith(data):
            undecided = True
    return NEED_MORE if undecided else "other"


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the proxy needs from a ClientHello.

    ``versions`` is the supported_versions extension when present (TLS 1.3
    clients, GREASE values included), else the legacy client_version alone.
    """

    sni: str | None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = ()


class _Reader:
    """Bounds-checked reads over one buffer; every overrun is a ValueError."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise ValueError(f"ClientHello truncated in {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def take_all(self) -> bytes:
        return self.take(self.remaining(), "vector")

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("!H", self.take(2, what))[0]

    def vector(self, length_size: int, what: str) -> _Reader:
        """A sub-reader over a length-prefixed vector, consuming it here."""
        n = self.u8(what) if length_size == 1 else self.u16(what)
        if n > self.end - self.pos:
            raise ValueError(f"ClientHello {what} length {n} runs past its end")
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise ValueError(f"ClientHello {what} has {self.end - self.pos} stray bytes")


def _handshake_bytes(data: bytes) -> bytes | None:
    """The ClientHello handshake message (header included) reassembled from
    the TLS records at the start of ``data``, or None while incomplete.

    Headers are checked as soon as they arrive, so garbage fails fast rather
    than being buffered.
    """
    message = bytearray()
    pos = 0
    while True:
        header = data[pos : pos + 5]
        if header[:1] and header[0] != _RECORD_HANDSHAKE:
            raise ValueError(f"not a TLS handshake record (content type {header[0]})")
        if header[1:2] and header[1] != 3:
            raise ValueError(f"not a TLS record (version major {header[1]})")
        if len(header) < 5:
            return NEED_MORE
        (length,) = struct.unpack_from("!H", header, 3)
        if length == 0 or length > _MAX_RECORD:
            raise ValueError(f"bad TLS record length {length}")
        fragment = data[pos + 5 : pos + 5 + length]
        message += fragment
        if len(message) >= 1 and message[0] != _HANDSHAKE_CLIENT_HELLO:
            raise ValueError(f"not a ClientHello (handshake type {message[0]})")
        if len(message) >= 4:
            body_length = int.from_bytes(message[1:4], "big")
            if body_length + 4 > MAX_HELLO:
                raise ValueError(f"ClientHello of {body_length} bytes is too large")
            if len(message) >= body_length + 4:
                return bytes(message[: body_length + 4])
        if len(fragment) < length:
            return NEED_MORE
        pos += 5 + length


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of ``data`` (which may span several TLS
    records), None (NEED_MORE) while incomplete, or ValueError when the bytes
    are not a well-formed ClientHello."""
    message = _handshake_bytes(bytes(data))
    if message is NEED_MORE:
        return NEED_MORE
    r = _Reader(message, 4)
    legacy_version = r.u16("client_version")
    if legacy_version >> 8 != 3:
        raise ValueError(f"ClientHello version {legacy_version:#06x} is not TLS")
    r.take(32, "random")
    session_id = r.vector(1, "session_id")
    if session_id.remaining() > 32:
        raise ValueError("ClientHello session_id longer than 32 bytes")
    ciphers = r.vector(2, "cipher_suites")
    if ciphers.remaining() < 2 or ciphers.remaining() % 2:
        raise ValueError("ClientHello cipher_suites has a bad length")
    if r.vector(1, "compression_methods").remaining() < 1:
        raise ValueError("ClientHello has no compression methods")

    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    if r.remaining() == 0:  # no extensions at all: legal before TLS 1.3
        return ClientHello(sni=sni, alpn=alpn, versions=versions)
    extensions = r.vector(2, "extensions")
    r.expect_end("message")
    seen: set[int] = set()
    while extensions.remaining():
        ext_type = extensions.u16("extension type")
        body = extensions.vector(2, "extension")
        if ext_type in seen:
            raise ValueError(f"ClientHello repeats extension {ext_type}")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _parse_sni(body)
        elif ext_type == _EXT_ALPN:
            alpn = _parse_alpn(body)
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            versions = _parse_versions(body)
    return ClientHello(sni=sni, alpn=alpn, versions=versions)


def _parse_sni(body: _Reader) -> str | None:
    names = body.vector(2, "server_name list")
    body.expect_end("server_name extension")
    host: str | None = None
    while names.remaining():
        name_type = names.u8("server_name type")
        raw = names.vector(2, "server_name").take_all()
        if name_type != 0:
            continue  # no other name types are defined; skip them
        if host is not None:
            raise ValueError("ClientHello has two host names in server_name")
        if not raw:
            raise ValueError("ClientHello has an empty server_name")
        if any(b <= 0x20 or b >= 0x7F for b in raw):
            raise ValueError("ClientHello server_name is not a printable ASCII host name")
        host = raw.decode("ascii").lower()
    return host


def _parse_alpn(body: _Reader) -> tuple[bytes, ...]:
    protocols = body.vector(2, "ALPN list")
    body.expect_end("ALPN extension")
    offered = []
    while protocols.remaining():
        name = protocols.vector(1, "ALPN protocol").take_all()
        if not name:
            raise ValueError("ClientHello offers an empty ALPN protocol name")
        offered.append(name)
    if not offered:
        raise ValueError("ClientHello has an empty ALPN list")
    return tuple(offered)


def _parse_versions(body: _Reader) -> tuple[int, ...]:
    listed = body.vector(1, "supported_versions list")
    body.expect_end("supported_versions extension")
    if listed.remaining() < 2 or listed.remaining() % 2:
        raise ValueError("ClientHello supported_versions has a bad length")
    return tuple(listed.u16("supported_versions") for _ in range(listed.remaining() // 2))
