"""The flow record: one captured exchange, and its packed, versioned form.

A flow is built by the proxy when an exchange ends and packed once into
bytes (``Flow.pack``); those bytes are queued, shipped to the session
manager and stored as they are, and read back (``Flow.unpack``) by the
admin API, the filter language and the exporters.  Everything here is pure
data.

The packed form (version 4) is a msgpack array ``[4, *fields]`` in the
order of ``Flow``'s fields, each message an array ``[headers, body, size,
truncated, trailers]``, TLS facts an array ``[sni, alpn, version,
cipher]`` and the gRPC order an array of ``[from_client, time]`` pairs:
named tuples pack to exactly that, and so do plain tuples in the same
order, which is how the proxy records (``pack_fields``) without building
a named tuple per request.

``unpack`` still reads what earlier releases stored, for databases and
spill files they wrote: version 3 (the same array without the gRPC
order), version 2 (without trailers, stream id and TLS facts too; its
trailers were stored after the headers) and version 1 (a msgpack map).
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgpack

from capture.decoding import decode_message

WIRE_VERSION = 4
# One packer for every flow: msgpack.packb would allocate a 1 MiB buffer per call.
# Packing holds the GIL throughout, so the reactor thread and export threads may share it.
_PACKER = msgpack.Packer(use_bin_type=True)

Headers = tuple[tuple[bytes, bytes], ...]


class Message(NamedTuple):
    """One side of an exchange as captured.

    ``body`` holds at most ``max_capture_body`` bytes; ``size`` is the true
    (de-chunked) body size that crossed the proxy.  ``trailers`` are the
    fields after the body (a chunked body's trailer section, HTTP/2
    trailers such as gRPC's ``grpc-status``), kept apart from ``headers``.
    """

    headers: Headers = ()
    body: bytes = b""
    size: int = 0
    truncated: bool = False
    trailers: Headers = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def trailer(self, name: str) -> str | None:
        """The first value of trailer ``name`` (case-insensitive), decoded."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.trailers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @classmethod
    def _unpacked(cls, data: Any) -> Message:
        """A message from its version 3 array (or version 2's, without trailers), checked field by field."""
        if len(data) == 4:
            headers, body, size, truncated = data
            trailers: Any = ()
        else:
            headers, body, size, truncated, trailers = data
        if not (type(headers) is tuple and type(body) is bytes and type(size) is int and type(truncated) is bool
                and type(trailers) is tuple):
            raise ValueError("malformed message")
        _check_fields(headers)
        _check_fields(trailers)
        return cls(headers, body, size, truncated, trailers)

    @classmethod
    def _from_v1(cls, data: dict[str, Any]) -> Message:
        return cls(
            headers=tuple((_bytes(k), _bytes(v)) for k, v in data["headers"]),
            body=_bytes(data["body"]),
            size=int(data["size"]),
            truncated=bool(data["truncated"]),
        )


class TLSFacts(NamedTuple):
    """What a TLS handshake settled: the server name sent, the protocol ALPN chose, version and cipher."""

    sni: str = ""
    alpn: str = ""
    version: str = ""
    cipher: str = ""

    def detail(self) -> dict[str, str | None]:
        return {"sni": self.sni or None, "alpn": self.alpn or None, "version": self.version or None,
                "cipher": self.cipher or None}

    @classmethod
    def _unpacked(cls, data: Any) -> TLSFacts | None:
        if data is None:
            return None
        if type(data) is not tuple or len(data) != 4 or not all(type(item) is str for item in data):
            raise ValueError("malformed TLS facts")
        return cls(*data)


class Flow(NamedTuple):
    """A completed (or failed) exchange between a client and a server.

    Times are seconds since the epoch; a phase that never happened is None.
    ``kind`` is ``"http"`` for a parsed exchange and ``"tunnel"`` for bytes
    relayed without parsing.  ``http_version`` is the client's ("1.0",
    "1.1", "2.0"); ``stream_id`` the HTTP/2 stream (0 for HTTP/1);
    ``client_tls`` and ``server_tls`` what the handshakes with the client
    (interception) and the origin settled, None where there was no TLS;
    ``grpc_order`` which way each message of a gRPC call went and when, in
    the order they passed (empty for other flows).
    """

    client: str
    client_port: int
    scheme: str
    host: str
    port: int
    method: str
    path: str
    http_version: str = "1.1"
    request: Message = Message()
    status: int = 0
    reason: str = ""
    response: Message | None = None
    start: float = 0.0
    request_done: float | None = None
    response_start: float | None = None
    end: float | None = None
    error: str = ""
    server_ip: str = ""
    kind: str = "http"
    stream_id: int = 0
    client_tls: TLSFacts | None = None
    server_tls: TLSFacts | None = None
    grpc_order: tuple[tuple[bool, float], ...] = ()

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == default else f"{host}:{self.port}"
        if self.kind == "tunnel":
            return f"{authority}"
        return f"{self.scheme}://{authority}{self.path}"

    @property
    def content_type(self) -> str:
        if self.response is None:
            return ""
        return media_type(self.response.header("content-type"))

    @property
    def duration_ms(self) -> float | None:
        if self.end is None:
            return None
        return round((self.end - self.start) * 1000.0, 3)

    def summary(self) -> dict[str, Any]:
        """The listing form the admin API returns (SPEC 8)."""
        return {
            "time": iso_time(self.start),
            "client": self.client,
            "method": self.method,
            "scheme": self.scheme,
            "host": self.host,
            "port": self.port,
            "path": self.path,
            "url": self.url,
            "status": self.status or None,
            "request_size": self.request.size,
            "response_size": self.response.size if self.response else 0,
            "content_type": self.content_type,
            "duration_ms": self.duration_ms,
            "error": self.error or None,
        }

    def detail(self) -> dict[str, Any]:
        """The full form ``GET /api/flows/ID`` returns: JSON-ready."""
        response = None
        if self.response is not None:
            response = {
                "status": self.status,
                "reason": self.reason,
                **_message_detail(self.response),
            }
        return {
            **self.summary(),
            "kind": self.kind,
            "client_port": self.client_port,
            "http_version": self.http_version,
            "server_ip": self.server_ip or None,
            "request": {
                "method": self.method,
                "path": self.path,
                "url": self.url,
                "http_version": self.http_version,
                **_message_detail(self.request),
            },
            "stream_id": self.stream_id or None,
            "client_tls": self.client_tls.detail() if self.client_tls is not None else None,
            "server_tls": self.server_tls.detail() if self.server_tls is not None else None,
            "response": response,
            "timings": {
                "start": iso_time(self.start),
                "request_done": _optional_iso(self.request_done),
                "response_start": _optional_iso(self.response_start),
                "end": _optional_iso(self.end),
            },
        }

    def pack(self) -> bytes:
        """The packed form (version 4): what is queued, shipped and stored."""
        return pack_fields(self)

    @classmethod
    def from_fields(cls, fields: tuple[Any, ...]) -> Flow:
        """A flow from a plain tuple in field order, messages as plain 5-tuples (see ``pack_fields``).

        Headers and trailers may come as lists of pairs there; the flow holds them as tuples.
        """
        if isinstance(fields, Flow):
            return fields
        request, response = fields[8], fields[11]
        client_tls, server_tls, grpc_order = fields[20:23]
        return cls(*fields[:8], _message(request), *fields[9:11], None if response is None else _message(response),
                   *fields[12:20], None if client_tls is None else TLSFacts(*client_tls),
                   None if server_tls is None else TLSFacts(*server_tls), tuple(map(tuple, grpc_order)))

    @classmethod
    def unpack(cls, record: bytes) -> Flow:
        """Read a packed flow of version 4, 3, 2 or 1; raises ValueError for anything else."""
        if type(record) is not bytes:
            raise ValueError("a flow record must be bytes")
        try:
            data = msgpack.unpackb(record, raw=False, use_list=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise ValueError(f"malformed flow record: {e}") from None
        if isinstance(data, dict):
            return cls._from_v1(data)
        if type(data) is not tuple or not data:
            raise ValueError("unsupported flow record version")
        if data[0] == WIRE_VERSION and len(data) == 1 + len(cls._fields):
            (_, client, client_port, scheme, host, port, method, path, http_version, request, status, reason,
             response, start, request_done, response_start, end, error, server_ip, kind, stream_id, client_tls,
             server_tls, grpc_order) = data
        elif data[0] == 3 and len(data) == len(cls._fields):
            (_, client, client_port, scheme, host, port, method, path, http_version, request, status, reason,
             response, start, request_done, response_start, end, error, server_ip, kind, stream_id, client_tls,
             server_tls) = data
            grpc_order = ()
        elif data[0] == 2 and len(data) == 20:
            (_, client, client_port, scheme, host, port, method, path, http_version, request, status, reason,
             response, start, request_done, response_start, end, error, server_ip, kind) = data
            stream_id, client_tls, server_tls, grpc_order = 0, None, None, ()
        else:
            raise ValueError("unsupported flow record version")
        if type(stream_id) is not int or not _is_grpc_order(grpc_order):
            raise ValueError("malformed flow record")
        if not (
            type(client) is str and type(client_port) is int and type(scheme) is str and type(host) is str
            and type(port) is int and type(method) is str and type(path) is str and type(http_version) is str
            and type(request) is tuple and type(status) is int and type(reason) is str
            and (response is None or type(response) is tuple) and type(error) is str
            and type(server_ip) is str and type(kind) is str
        ):
            raise ValueError("malformed flow record")
        try:
            return cls(
                client, client_port, scheme, host, port, method, path, http_version,
                Message._unpacked(request), status, reason,
                None if response is None else Message._unpacked(response),
                _time(start), _optional_time(request_done), _optional_time(response_start), _optional_time(end),
                error, server_ip, kind, stream_id, TLSFacts._unpacked(client_tls), TLSFacts._unpacked(server_tls),
                grpc_order,
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed flow record: {e}") from None

    @classmethod
    def _from_v1(cls, data: dict[str, Any]) -> Flow:
        """A flow from the version 1 map, as releases before the packed form wrote it."""
        if data.get("v") != 1:
            raise ValueError("unsupported flow record version")
        try:
            response = data["response"]
            return cls(
                kind=str(data["kind"]),
                client=str(data["client"]),
                client_port=int(data["client_port"]),
                scheme=str(data["scheme"]),
                host=str(data["host"]),
                port=int(data["port"]),
                method=str(data["method"]),
                path=str(data["path"]),
                http_version=str(data["http_version"]),
                request=Message._from_v1(data["request"]),
                status=int(data["status"]),
                reason=str(data["reason"]),
                response=None if response is None else Message._from_v1(response),
                start=float(data["start"]),
                request_done=_optional_float(data["request_done"]),
                response_start=_optional_float(data["response_start"]),
                end=_optional_float(data["end"]),
                error=str(data["error"]),
                server_ip=str(data["server_ip"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed flow: {e!r}") from None


def pack_fields(fields: tuple[Any, ...]) -> bytes:
    """The packed form of a ``Flow``, or of a plain tuple of its fields in order, messages as 5-tuples
    (their headers and trailers tuples or lists of pairs).

    Both pack to the same bytes; the proxy uses plain tuples because a named
    tuple costs several times as much to build, per request.
    """
    return _PACKER.pack((WIRE_VERSION, *fields))


def media_type(content_type: str | None) -> str:
    """A Content-Type value without its parameters: ``text/html; charset=utf-8`` is ``text/html``."""
    return (content_type or "").split(";")[0].strip()


def _message(fields: tuple[Any, ...]) -> Message:
    headers, body, size, truncated, trailers = fields
    return Message(tuple(headers), body, size, truncated, tuple(trailers))


def _check_fields(fields: tuple[Any, ...]) -> None:
    for pair in fields:
        if not (type(pair) is tuple and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes):
            raise ValueError("malformed header")


def _is_grpc_order(order: Any) -> bool:
    return type(order) is tuple and all(
        type(entry) is tuple and len(entry) == 2 and type(entry[0]) is bool and type(entry[1]) in (float, int)
        for entry in order)


def _message_detail(message: Message) -> dict[str, Any]:
    """Headers as ordered pairs; the body as text when it is UTF-8, else base64.

    A body sent with a Content-Encoding is shown decoded (capture.decoding):
    ``decoded_from`` names the encoding undone, ``decoded_size`` the size of
    what is shown, ``decoded_cut`` that it reached the decoding bound, and
    ``decoded_partial`` that the stored bytes ended early; ``decode_error``
    says why an encoding was not undone (the body is then as stored).
    """
    decoded = decode_message(message.headers, message.body)
    try:
        body, encoding = decoded.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(decoded.body).decode("ascii"), "base64"
    return {
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.headers],
        "trailers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.trailers],
        "body": body,
        "body_encoding": encoding,
        "size": message.size,
        "stored_size": len(message.body),
        "truncated": message.truncated,
        "decoded_from": decoded.encoding or None,
        "decoded_size": len(decoded.body) if decoded.encoding else None,
        "decoded_cut": decoded.cut,
        "decoded_partial": decoded.partial,
        "decode_error": decoded.error or None,
    }


def _optional_iso(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _time(value: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise ValueError("a time must be a number")


def _optional_time(value: Any) -> float | None:
    return None if value is None else _time(value)


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as the API and exports show times."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
