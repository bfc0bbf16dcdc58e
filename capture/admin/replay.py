"""``POST /api/flows/ID/replay``: send a captured request again, through the proxy itself.

The replay is a real client connection into the proxy: the same parsing,
upstream rules, interception and recording as the device's own request, and
nothing here knows how the proxy is built. The one thing a loopback client
cannot say for itself is whose request it repeats, and the sessions a flow
lands in depend on that (their ``clients``). So the connection enters through
a private loopback listener in front of the proxy's own factory, where the
peer address the proxy reads is the original client's; only a connection from
a source port registered for a replay a moment before is let in.

``replay_request`` (what to send) is sans-I/O; the rest is the small
Twisted client around it.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from twisted.internet import defer, protocol, ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols import policies

REPLAY_TIMEOUT = 30.0
MAX_RESPONSE = 64 * 1024 * 1024  # read and dropped: the proxy records it, the client only waits for the end
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "content-length", "host"}
_METHOD_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ReplayError(ValueError):
    """A flow that cannot be replayed, or an override that makes no request."""


class ReplayRequest(NamedTuple):
    scheme: str
    host: str
    port: int
    head_and_body: bytes  # the request as the proxy will read it (absolute-form for http)


def replay_request(flow: dict[str, Any], overrides: dict[str, Any], stored_body: bytes) -> ReplayRequest:
    """The request to send for a flow detail (``GET /api/flows/ID``) and its request body as stored
    (the detail's is decoded for reading; the wire's may be compressed), with edits applied.

    ``overrides`` may hold ``method``, ``url``, ``headers`` (ordered pairs,
    replacing all of them) and ``body`` (text). Framing headers are dropped
    and set again to fit the body; the connection closes after one response.
    """
    unknown = set(overrides) - {"method", "url", "headers", "body"}
    if unknown:
        raise ReplayError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if flow.get("kind", "http") != "http" or flow["method"] == "CONNECT":
        raise ReplayError(f"flow {flow['id']} is a {flow.get('kind')} flow, not an HTTP request to send again")
    method = overrides.get("method", flow["method"])
    if not isinstance(method, str) or not method or not set(method) <= _METHOD_CHARS:
        raise ReplayError("method must be an HTTP token such as GET")
    url = overrides.get("url", flow["url"])
    if not isinstance(url, str):
        raise ReplayError("url must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplayError(f"url must be an absolute http or https URL, not {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ReplayError(f"url has a bad port: {url!r}") from None
    request = flow["request"]
    if "body" in overrides:
        if not isinstance(overrides["body"], str):
            raise ReplayError("body must be a string")
        body = overrides["body"].encode("utf-8")
    elif request["truncated"]:
        raise ReplayError(f"flow {flow['id']}'s request body was stored cut short; send a body to replay it")
    else:
        body = stored_body
    headers = overrides.get("headers", request["headers"])
    if not isinstance(headers, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in headers
    ):
        raise ReplayError("headers must be a list of [name, value] pairs")
    authority = parts.netloc.rpartition("@")[2]
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {url.split('#', 1)[0] if parts.scheme == 'http' else target} HTTP/1.1", f"Host: {authority}"]
    for name, value in headers:
        if name.startswith(":") or name.lower() in _HOP_BY_HOP:
            continue
        if any(c in name + value for c in "\r\n") or not name.strip():
            raise ReplayError(f"header {name!r} is not a valid header")
        lines.append(f"{name}: {value}")
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ReplayError("headers must be Latin-1 text") from None
    return ReplayRequest(parts.scheme, parts.hostname, port, head + body)


class _AsClient(policies.ProtocolWrapper):
    """The proxy's protocol behind this wrapper sees the original client as its peer."""

    def __init__(self, factory: policies.WrappingFactory, wrapped: protocol.Protocol) -> None:
        super().__init__(factory, wrapped)
        self.client: str | None = None

    def makeConnection(self, transport: Any) -> None:
        peer = transport.getPeer()
        self.client = self.factory.admitted.pop(peer.port, None)
        if self.client is None:  # nobody asked for this connection: not a way in for others on loopback
            transport.abortConnection()
            return
        super().makeConnection(transport)

    def getPeer(self) -> Any:
        port = self.transport.getPeer().port
        return (IPv6Address if ":" in self.client else IPv4Address)("TCP", self.client, port)


class ReplayEntry(policies.WrappingFactory):
    """The private loopback way into the proxy's factory, opened at the first replay."""

    protocol = _AsClient
    noisy = False

    def __init__(self, proxy_factory: protocol.Factory, reactor: Any, ca_pem: bytes) -> None:
        super().__init__(proxy_factory)
        self.reactor = reactor
        self.trust = ssl.Certificate.loadPEM(ca_pem)
        self.admitted: dict[int, str] = {}  # source port -> the client the replay speaks for
        self._port: Any = None

    def port(self) -> int:
        if self._port is None:
            self._port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return self._port.getHost().port

    async def send(self, request: ReplayRequest, client: str) -> int:
        """Send the request as ``client``; the source port it used, once the response has ended."""
        with socket.socket() as probe:  # a free source port, registered before the connection exists
            probe.bind(("127.0.0.1", 0))
            source = probe.getsockname()[1]
        self.admitted[source] = client
        done: defer.Deferred[None] = defer.Deferred()
        try:
            self.reactor.connectTCP("127.0.0.1", self.port(), _ClientFactory(request, done, self.trust),
                                    timeout=REPLAY_TIMEOUT, bindAddress=("127.0.0.1", source))
            await done.addTimeout(REPLAY_TIMEOUT, self.reactor)
        finally:
            self.admitted.pop(source, None)
        return source


class _ReplayClient(protocol.Protocol):
    """Writes one request (after CONNECT and TLS for https) and reads until the proxy closes."""

    def __init__(self, request: ReplayRequest, done: defer.Deferred[None], trust: ssl.Certificate) -> None:
        self.request = request
        self.done = done
        self.trust = trust
        self.tunnelled = request.scheme == "http"
        self.buffer = b""
        self.received = 0

    def connectionMade(self) -> None:
        if self.tunnelled:
            self.transport.write(self.request.head_and_body)
        else:
            authority = f"[{self.request.host}]" if ":" in self.request.host else self.request.host
            self.transport.write(f"CONNECT {authority}:{self.request.port} HTTP/1.1\r\n"
                                 f"Host: {authority}:{self.request.port}\r\n\r\n".encode("latin-1"))

    def dataReceived(self, data: bytes) -> None:
        if self.tunnelled:
            self.received += len(data)
            if self.received > MAX_RESPONSE:
                self.transport.loseConnection()
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384:
                self._fail("the proxy's answer to CONNECT has no end")
            return
        status = self.buffer.split(b" ", 2)[1:2]
        if status != [b"200"]:
            line = self.buffer.split(b"\r\n", 1)[0].decode("latin-1")
            self._fail(f"the proxy refused the tunnel: {line}")
            return
        self.tunnelled = True
        # The proxy intercepts with its own CA: trust that, and nothing else.
        self.transport.startTLS(ssl.optionsForClientTLS(self.request.host, trustRoot=self.trust))
        self.transport.write(self.request.head_and_body)

    def _fail(self, message: str) -> None:
        if not self.done.called:
            self.done.errback(ReplayError(message))
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            if self.tunnelled:
                self.done.callback(None)
            else:
                self.done.errback(ReplayError("the proxy closed the connection before the tunnel was up"))


class _ClientFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, request: ReplayRequest, done: defer.Deferred[None], trust: ssl.Certificate) -> None:
        self.request = request
        self.done = done
        self.trust = trust

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return _ReplayClient(self.request, self.done, self.trust)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.done.called:
            self.done.errback(ReplayError(f"cannot reach the proxy: {reason.getErrorMessage()}"))

