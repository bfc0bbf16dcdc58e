"""Exporters: flows turned into HAR, Postman collections, cookie jars and curl.

Every exporter is sans-I/O: functions from :class:`~capture.flow.Flow`
records to Python structures or strings, so the admin API, ``capturectl`` and
the tests share them without sockets.  This package module holds the few
facts about HTTP messages that more than one exporter needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message as _MimeHeader
from email.utils import collapse_rfc2231_value

from capture.flow import Flow, Headers

__all__ = [
    "FormPart",
    "HOP_BY_HOP",
    "header_values",
    "is_exchange",
    "language",
    "media_type",
    "multipart_parts",
    "replay_headers",
    "split_target",
    "utf8",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Header names (lower case) that describe one connection, not the request."""

def is_exchange(flow: Flow) -> bool:
    """Whether ``flow`` is a parsed HTTP request, not a tunnel or a failed CONNECT."""
    return flow.kind == "http" and flow.method.upper() != "CONNECT"


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive), in order, as latin-1 text."""
    wanted = name.lower().encode("latin-1")
    return [value.decode("latin-1") for key, value in headers if key.lower() == wanted]


def replay_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The headers a client replaying the request should send itself.

    Drops hop-by-hop and ``Proxy-*`` headers, any header a ``Connection``
    header names, and ``Content-Length``, which the replaying client computes
    for the body it actually sends.
    """
    named = {
        token.strip().lower().encode("latin-1")
        for value in header_values(headers, "connection")
        for token in value.split(",")
    }
    kept = []
    for key, value in headers:
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith(b"proxy-") or lower == b"content-length":
            continue
        kept.append((key, value))
    return kept


def utf8(body: bytes) -> str | None:
    """``body`` as text when it is valid UTF-8 without NUL bytes, else None (binary)."""
    if b"\x00" in body:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def media_type(headers: Headers) -> str:
    """The lower-case ``type/subtype`` of the Content-Type header, or ``""``."""
    values = header_values(headers, "content-type")
    return values[0].split(";", 1)[0].strip().lower() if values else ""


def language(media: str) -> str:
    """The Postman raw-body language for a media type: json, xml, html, javascript or text."""
    if media == "application/json" or media.endswith("+json") or media.endswith("/json"):
        return "json"
    if media in ("application/xml", "text/xml") or media.endswith("+xml"):
        return "xml"
    if media in ("text/html", "application/xhtml+xml"):
        return "html"
    if media in ("application/javascript", "text/javascript", "application/x-javascript"):
        return "javascript"
    return "text"


def split_target(path: str) -> tuple[str, str]:
    """Split an origin-form request target into path and query (without ``?``)."""
    path, _, query = path.partition("?")
    return path or "/", query


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a ``multipart/form-data`` body."""

    name: str
    value: bytes
    filename: str | None = None
    content_type: str | None = None


def multipart_parts(body: bytes, content_type: str) -> list[FormPart] | None:
    """The parts of a multipart/form-data ``body``, or None when it does not parse.

    ``content_type`` is the full header value, which carries the boundary.
    """
    header = _MimeHeader()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        return None
    # Every delimiter is CRLF "--" boundary; the body's first one may lack the CRLF.
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        return None
    parts = []
    for piece in pieces[1:-1]:
        head, separator, value = piece.lstrip(b" \t").removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            return None
        fields = _MimeHeader()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, colon, field_value = line.partition(":")
            if colon:
                fields[key.strip()] = field_value.strip()
        name = _param(fields, "name")
        if name is None:
            return None
        parts.append(
            FormPart(
                name=name,
                value=value,
                filename=_param(fields, "filename"),
                content_type=fields.get("content-type"),
            )
        )
    return parts


def _param(fields: _MimeHeader, name: str) -> str | None:
    value = fields.get_param(name, header="content-disposition")
    if value is None or isinstance(value, str):
        return value
    return collapse_rfc2231_value(value)
