"""HTTP/1 message heads and framing for a forwarding proxy; no I/O.

Parsing itself is llhttp (through ``httptools``): C speed and strict about
the ambiguities request smuggling lives on.  What is here is what a proxy
adds on top: the request target, hop-by-hop headers, framing decisions and
serialising heads in one piece with header order and case kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1, plus the proxy-only ones a proxy consumes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    408: b"Request Timeout",
    413: b"Content Too Large",
    404: b"Not Found",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}


class BadResponse(Exception):
    """An origin's response the proxy will not relay: the client gets a 502."""


class BadRequest(Exception):
    """A request the proxy refuses before forwarding; ``status`` says how."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: scheme, host, port and the origin-form path."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port == default else f"{host}:{self.port}"
        return text.encode("idna" if not text.isascii() else "ascii")


def parse_target(raw: bytes) -> Target:
    """The absolute-form target of a proxied request (RFC 9112 3.2.2)."""
    try:
        text = raw.decode("ascii")
        parts = urlsplit(text)
        port = parts.port
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("malformed request target") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("a proxy request needs an absolute http:// URL")
    if "@" in parts.netloc:
        raise BadRequest("userinfo is not allowed in the request target")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if port == 0:
        raise BadRequest("port 0 is not a valid target")
    default = 443 if scheme == "https" else 80
    return Target(scheme, parts.hostname.lower(), default if port is None else port, path)


def parse_authority(raw: bytes) -> tuple[str, int]:
    """host and port of a CONNECT target (authority-form, RFC 9112 3.2.3)."""
    try:
        text = raw.decode("ascii")
        parts = urlsplit("//" + text)
        port = parts.port
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("malformed CONNECT target") from None
    if not parts.hostname or port is None or port == 0 or parts.path or "@" in text:
        raise BadRequest("CONNECT needs host:port")
    return parts.hostname.lower(), port


def connection_tokens(headers: Headers) -> set[bytes]:
    """Lower-cased tokens of every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def end_to_end(headers: Headers, keep: frozenset[bytes] = frozenset()) -> Headers:
    """Headers without hop-by-hop ones (and those named by Connection), order kept.

    ``keep`` names hop-by-hop headers the caller re-uses as they are (framing).
    """
    drop = (HOP_BY_HOP | connection_tokens(headers)) - keep
    return [(n, v) for n, v in headers if n.lower() not in drop]


def forbidden_connection_options(headers: Headers) -> set[bytes]:
    """Headers a Connection option names that frame the message or say where it goes.

    Removing them as hop-by-hop would change how the next hop reads the
    message (a smuggling trick), so a message naming them is refused.
    """
    return connection_tokens(headers) & {b"content-length", b"transfer-encoding", b"host"}


def check_connection_options(headers: Headers) -> None:
    named = forbidden_connection_options(headers)
    if named:
        raise BadRequest(f"Connection names {b', '.join(sorted(named)).decode()}, which must not be removed")


def request_framing(headers: Headers, version: str = "1.1") -> str:
    """'length', 'chunked' or 'none' for a request, refusing ambiguous framing."""
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    encodings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if encodings:
        if version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)")
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if b",".join(encodings).strip().lower() != b"chunked":
            raise BadRequest("unsupported Transfer-Encoding")
        return "chunked"
    if lengths:
        if len({v.strip() for v in lengths}) != 1:
            raise BadRequest("conflicting Content-Length values")
        return "length"
    return "none"


def response_framing(headers: Headers, status: int, head_request: bool) -> str:
    """'none', 'length', 'chunked' or 'close' for a response (RFC 9112 6.3)."""
    if head_request or status < 200 or status in (204, 304):
        return "none"
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if codings:
        # Only a list that ends in one chunked frames the body; anything else cannot be relayed faithfully.
        listed = [c.strip().lower() for c in b",".join(codings).split(b",")]
        if listed[-1] != b"chunked" or listed.count(b"chunked") != 1:
            raise BadResponse(f"unsupported Transfer-Encoding in the response: {b', '.join(listed).decode('latin-1')}")
        return "chunked"
    for name, _ in headers:
        if name.lower() == b"content-length":
            return "length"
    return "close"


def with_host(headers: Headers, authority: bytes) -> Headers:
    """Replace Host with the target's authority (RFC 9112 3.2.2), in place of the first one."""
    out: Headers = []
    placed = False
    for name, value in headers:
        if name.lower() == b"host":
            if not placed:
                out.append((name, authority))
                placed = True
            continue
        out.append((name, value))
    if not placed:
        out.insert(0, (b"Host", authority))
    return out


def host_header(headers: Headers) -> str:
    """The first Host header's value, lower-cased ('' for none)."""
    for name, value in headers:
        if name.lower() == b"host":
            return value.decode("latin-1").lower()
    return ""


def request_head(method: bytes, path: bytes, headers: Headers) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, path)]
    lines.extend(b"%s: %s" % pair for pair in headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def response_head(version: bytes, status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/%s %d %s" % (version, status, reason)]
    lines.extend(b"%s: %s" % pair for pair in headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def error_parts(status: int, message: str) -> tuple[int, bytes, Headers, bytes]:
    """(status, reason, headers, body) of a short plain-text response the proxy itself sends."""
    body = message.encode("utf-8") + b"\n"
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    return status, REASONS.get(status, b"Error"), headers, body


def whole_response(status: int, reason: bytes, headers: Headers, body: bytes, close: bool, head: bool) -> bytes:
    """A complete HTTP/1.1 response in one piece (no body for a HEAD request)."""
    if close:
        headers = headers + [(b"Connection", b"close")]
    return response_head(b"1.1", status, reason, headers) + (b"" if head else body)


def error_response(status: int, message: str, close: bool = True, head: bool = False) -> bytes:
    """A short plain-text response the proxy itself sends (no body for a HEAD request)."""
    status, reason, headers, body = error_parts(status, message)
    return whole_response(status, reason, headers, body, close, head)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for writeSequence (no copy of data)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def last_chunk(trailers: Headers) -> bytes:
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % pair for pair in trailers) + b"\r\n"
