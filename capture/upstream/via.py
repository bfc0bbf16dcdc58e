"""A chained (corporate) proxy: how requests reach it, and its answer to CONNECT.

Sans-I/O: the connector writes what ``connect_request`` returns and feeds
the reply to ``connect_reply_done``, for both pooled HTTPS connections and
raw tunnels, so the CONNECT to a chained proxy is written in one place.
"""

from __future__ import annotations

import base64
import fnmatch

from twisted.python.failure import Failure

from capture.upstream.errors import UpstreamProxyFailed, describe_connect_error


class Via:
    """A chained proxy: absolute-form for HTTP, CONNECT for HTTPS and tunnels."""

    def __init__(self, host: str, port: int, username: str | None = None, password: str | None = None,
                 direct: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.direct = direct
        self.name = f"{host}:{port}"
        self.authorization: bytes | None = None
        if username is not None:
            credentials = f"{username}:{password or ''}".encode("utf-8")
            self.authorization = b"Basic " + base64.b64encode(credentials)

    def used_for(self, host: str) -> bool:
        return not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.direct)

    def via_for(self, scheme: str, host: str, port: int) -> Via | None:
        """This proxy, unless the host is one reached directly."""
        return self if self.used_for(host) else None

    def describe(self) -> dict[str, str]:
        """For /api/status; credentials left out."""
        return {"mode": "configured", "proxy": self.name}

    def connect_request(self, host: str, port: int) -> bytes:
        authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
        lines = [b"CONNECT %s HTTP/1.1" % authority, b"Host: %s" % authority]
        if self.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self.authorization)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def name_in_failure(self, failure: Failure) -> Failure:
        """Say that it was the upstream proxy that failed, not the origin."""
        if failure.check(UpstreamProxyFailed):
            return failure
        _, message = describe_connect_error(failure, self.host, self.port)
        return Failure(UpstreamProxyFailed(f"upstream proxy {self.name}: {message}"))


def connect_reply_done(reply: bytes) -> bool:
    """Has a chained proxy accepted our CONNECT?  False: not all of its answer is here yet.

    Raises UpstreamProxyFailed for a refusal (a non-2xx answer) or nonsense.
    """
    if b"\r\n\r\n" not in reply:
        if len(reply) > 65536:
            raise UpstreamProxyFailed("an oversized answer to CONNECT")
        return False
    head, rest = reply.split(b"\r\n\r\n", 1)
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].startswith(b"2") or rest:
        raise UpstreamProxyFailed(f"CONNECT answered {status_line.decode('latin-1')!r}")
    return True
