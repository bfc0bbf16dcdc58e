"""HTTP/2 header rules for a proxy, and what translating between HTTP/2 and HTTP/1.1 takes; no I/O.

HTTP/2 field names are lower case and connection-specific fields are
forbidden (RFC 9113 8.2.2), so headers going out over HTTP/2 are lowered
and stripped of them; ``te`` passes only as ``trailers``.  ``outgoing`` is
the whole of that: ``h2``'s own normalisation and validation of what we
send are off (``OUTBOUND``), since everything sent was either validated as
it came in over HTTP/2 or parsed by the HTTP/1 parser, and checking it
twice cost a fifth of an HTTP/2 request's instructions.  Fields that must
stay out of HPACK's compression context (credentials, short cookies, and
whatever the sender marked never-indexed) keep out of ours.  A request from
an HTTP/2 client to an HTTP/1.1 origin joins its cookie fields (8.2.3) and
is refused when it needs what HTTP/1.1 cannot carry faithfully.
"""

from __future__ import annotations

from hpack import HeaderTuple, NeverIndexedHeaderTuple

Headers = list[tuple[bytes, bytes]]

CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"host",
     b"proxy-authorization", b"proxy-authenticate"}
)

# Kept out of the compression context whatever their value; cookies only while short (guessable).
SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})
SHORT_COOKIE = 20

# H2Configuration keywords for connections whose outgoing fields all come through ``outgoing``.
OUTBOUND = {"validate_outbound_headers": False, "normalize_outbound_headers": False}


def outgoing(headers: Headers) -> Headers:
    """Regular fields as HTTP/2 sends them: lower case, no connection-specific ones, ``te`` only as trailers."""
    drop = CONNECTION_SPECIFIC
    for name, value in headers:
        if name.lower() == b"connection":
            drop = drop | {token.strip().lower() for token in value.split(b",")}
    out: Headers = []
    for header in headers:
        name, value = header
        lowered = name.lower()
        if lowered in drop or lowered.startswith(b":"):
            continue
        if lowered == b"te" and value.strip().lower() != b"trailers":
            continue
        if (lowered in SENSITIVE or (lowered == b"cookie" and len(value) < SHORT_COOKIE)
                or (isinstance(header, HeaderTuple) and not header.indexable)):
            out.append(NeverIndexedHeaderTuple(lowered, value))
        else:
            out.append((lowered, value))
    return out


def split_request(headers: Headers) -> tuple[dict[bytes, bytes], Headers]:
    """Pseudo-header fields (``:method``, ``:path``...) apart from the regular ones, order kept."""
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    return pseudo, regular


def join_cookies(headers: Headers) -> Headers:
    """Cookie fields joined into one with '; ', in place of the first, as HTTP/1.1 needs (RFC 9113 8.2.3)."""
    cookies = [value for name, value in headers if name == b"cookie"]
    if len(cookies) < 2:
        return headers
    out: Headers = []
    for name, value in headers:
        if name == b"cookie":
            if cookies:
                out.append((b"cookie", b"; ".join(cookies)))
                cookies = []
            continue
        out.append((name, value))
    return out


def untranslatable(headers: Headers) -> str | None:
    """Why this HTTP/2 request cannot go to an HTTP/1.1 origin, or None when it can.

    gRPC and requests asking for trailers (``te: trailers``) depend on
    HTTP/2; relaying them over HTTP/1.1 would drop what they depend on.
    """
    for name, value in headers:
        if name == b"content-type" and value.lower().startswith(b"application/grpc"):
            return "the origin does not speak HTTP/2, which gRPC needs"
        if name == b"te" and value.strip().lower() == b"trailers":
            return "the request needs trailers (te: trailers) and the origin does not speak HTTP/2"
    return None


def response_framing(headers: Headers, status: int, head_request: bool, ended: bool) -> str:
    """The version-neutral framing of a response received over HTTP/2 (see ``capture.http.streams``)."""
    if head_request or ended or status in (204, 304):
        return "none"
    for name, _ in headers:
        if name == b"content-length":
            return "length"
    return "chunked"
