"""The interfaces an Exchange works through, so an HTTP/1 and an HTTP/2 stream look the same to it.

A *client stream* is the client's side of one request (an HTTP/1 server
connection's current request, or one HTTP/2 stream); an *origin stream* is
the origin's side (an HTTP/1.1 client connection, or one HTTP/2 stream to
the origin).  The Exchange takes request events from the client side's
layer and response events from the origin stream (``ResponseSink``), and
answers through these methods.  Framing words are version-neutral:
'none' (no body), 'length' (Content-Length gives it), 'chunked' (length
unknown: streamed) and, from an HTTP/1 origin only, 'close' (the body ends
with the connection).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer

from capture.http.http1 import Target

Headers = list[tuple[bytes, bytes]]


class ResponseSink(Protocol):
    """What an origin stream calls as the response arrives.

    ``upgrade_accepted`` says the exchange took a 101 as the answer to its
    WebSocket upgrade; an HTTP/1.1 origin stream then hands its link over
    with ``upgraded(link, rest)``, ``rest`` the bytes after the 101.
    """

    upgrade_accepted: bool

    def upgraded(self, link: Any, rest: bytes) -> None: ...

    def response_informational(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def response_head(self, status: int, reason: bytes, headers: Headers, framing: str) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_end(self, trailers: Headers) -> None: ...

    def upstream_failed(self, status: int, message: str) -> None: ...


class OriginStream(Protocol):
    """The origin's side of one exchange (an HTTP/1.1 connection, or an HTTP/2 stream)."""

    reusable: bool
    alpn: bytes  # b"http/1.1" or b"h2": what the Exchange translates to
    producer: Any  # an IPushProducer the client side pauses while it cannot take more

    def peer(self) -> tuple[str, int]: ...

    def tls_facts(self) -> tuple[str, str, str, str] | None:
        """(SNI, ALPN, version, cipher) of the TLS towards the origin, or None."""

    def send_request(self, exchange: ResponseSink, method: bytes, target: Target, headers: Headers,
                     framing: str, set_host: bool) -> None: ...

    def send_data(self, data: bytes) -> None: ...

    def send_end(self, trailers: Headers) -> None: ...

    def register_producer(self, producer: Any) -> None: ...

    def request_abandoned(self) -> None: ...

    def abort(self) -> None: ...


class Pool(Protocol):
    """Hands out ready origin streams and takes back those that may be reused."""

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> defer.Deferred: ...

    def release(self, stream: Any) -> None: ...


class ClientStream(Protocol):
    """The client's side of one exchange, implemented by each server layer."""

    version: bytes  # the client's HTTP version: b"1.0", b"1.1" or b"2.0"

    def pause_request(self, reason: str) -> None:
        """Read no more of the request body (for ``reason``) until ``resume_request``."""

    def resume_request(self, reason: str) -> None: ...

    def request_producer(self) -> Any:
        """An IPushProducer that pauses the request body, for the origin's transport to register."""

    def send_informational(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def send_head(self, status: int, reason: bytes, headers: Headers, framing: str) -> None: ...

    def send_data(self, data: bytes) -> None: ...

    def send_end(self, trailers: Headers) -> None: ...

    def register_producer(self, producer: Any) -> None:
        """Pause ``producer`` (the origin's) while the client cannot take more of the response."""

    def send_whole(self, status: int, reason: bytes, headers: Headers, body: bytes, close: bool) -> None:
        """A complete response of the proxy's own (an error, an onboarding page)."""

    def upgrade(self, reason: bytes, headers: Headers, link: Any, relay: Any, on_messages: Any, on_end: Any,
                rest: bytes) -> None:
        """Relay a 101 with ``headers`` and hand the connection to a WebSocket layer (HTTP/1 only)."""

    def abort(self) -> None:
        """The response cannot be completed: end it so the client sees it failed."""

    def finished(self, ok: bool) -> None:
        """The exchange is over; ``ok``: it ended cleanly, so the connection may carry more."""

    def local_address(self) -> tuple[str, int]: ...
