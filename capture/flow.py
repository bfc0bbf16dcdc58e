"""The flow record: one captured exchange, and its versioned wire form.

A flow is built by the proxy when an exchange ends, shipped to the session
manager as a plain dict (msgpack), stored, and read back by the admin API,
the filter language and the exporters.  Everything here is pure data.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

WIRE_VERSION = 1

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """One side of an exchange as captured.

    ``body`` holds at most ``max_capture_body`` bytes; ``size`` is the true
    (de-chunked) body size that crossed the proxy.
    """

    headers: Headers = ()
    body: bytes = b""
    size: int = 0
    truncated: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def to_wire(self) -> dict[str, Any]:
        return {
            "headers": [list(pair) for pair in self.headers],
            "body": self.body,
            "size": self.size,
            "truncated": self.truncated,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Message:
        return cls(
            headers=tuple((_bytes(k), _bytes(v)) for k, v in data["headers"]),
            body=_bytes(data["body"]),
            size=int(data["size"]),
            truncated=bool(data["truncated"]),
        )


@dataclass(frozen=True, slots=True)
class Flow:
    """A completed (or failed) exchange between a client and a server.

    Times are seconds since the epoch; a phase that never happened is None.
    ``kind`` is ``"http"`` for a parsed exchange and ``"tunnel"`` for bytes
    relayed without parsing.
    """

    client: str
    client_port: int
    scheme: str
    host: str
    port: int
    method: str
    path: str
    http_version: str = "1.1"
    request: Message = field(default_factory=Message)
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
        return (self.response.header("content-type") or "").split(";")[0].strip()

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
            "response": response,
            "timings": {
                "start": iso_time(self.start),
                "request_done": _optional_iso(self.request_done),
                "response_start": _optional_iso(self.response_start),
                "end": _optional_iso(self.end),
            },
        }

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION,
            "kind": self.kind,
            "client": self.client,
            "client_port": self.client_port,
            "scheme": self.scheme,
            "host": self.host,
            "port": self.port,
            "method": self.method,
            "path": self.path,
            "http_version": self.http_version,
            "request": self.request.to_wire(),
            "status": self.status,
            "reason": self.reason,
            "response": None if self.response is None else self.response.to_wire(),
            "start": self.start,
            "request_done": self.request_done,
            "response_start": self.response_start,
            "end": self.end,
            "error": self.error,
            "server_ip": self.server_ip,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Flow:
        """Rebuild a flow; raises ValueError for a form we cannot read."""
        if not isinstance(data, dict) or data.get("v") != WIRE_VERSION:
            raise ValueError("unsupported flow wire version")
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
                request=Message.from_wire(data["request"]),
                status=int(data["status"]),
                reason=str(data["reason"]),
                response=None if response is None else Message.from_wire(response),
                start=float(data["start"]),
                request_done=_optional_float(data["request_done"]),
                response_start=_optional_float(data["response_start"]),
                end=_optional_float(data["end"]),
                error=str(data["error"]),
                server_ip=str(data["server_ip"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed flow: {e!r}") from None


def _message_detail(message: Message) -> dict[str, Any]:
    """Headers as ordered pairs; the body as text when it is UTF-8, else base64."""
    try:
        body, encoding = message.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode("ascii"), "base64"
    return {
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.headers],
        "body": body,
        "body_encoding": encoding,
        "size": message.size,
        "stored_size": len(message.body),
        "truncated": message.truncated,
    }


def _optional_iso(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as the API and exports show times."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
