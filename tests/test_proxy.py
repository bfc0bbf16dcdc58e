"""The proxy protocol as scripted exchanges over in-memory transports."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from capture import config
from capture.flow import Flow
from capture.proxy.factory import ProxyFactory
from capture.upstream.connector import OriginLink
from capture.upstream.http1_client import Http1Client
from capture.rules import RuleSet
from capture.shipper import Shipper


class Transport(StringTransport):
    """StringTransport with the TCP option the proxy sets."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def origin_client(scheme: str, host: str, port: int, transport: StringTransport, limits) -> Http1Client:
    """An HTTP/1.1 client on an origin link over ``transport``, as the pool hands them out."""
    link = OriginLink(host, port)
    link.makeConnection(transport)
    return Http1Client(link, (scheme, host, port), limits)


class FakePool:
    """Hands out HTTP/1.1 origin clients on in-memory transports and records releases."""

    def __init__(self, limits=config.parse("").limits) -> None:
        self.limits = limits
        self.connections: list[Http1Client] = []
        self.released: list[Http1Client] = []

    def acquire(self, scheme: str, host: str, port: int, server_name=None):
        client = origin_client(scheme, host, port, Transport(peerAddress=IPv4Address("TCP", "192.0.2.7", port)),
                               self.limits)
        self.connections.append(client)
        return succeed(client)

    def release(self, client: Http1Client) -> None:
        self.released.append(client)


def make_proxy(ini: str = "", sessions=({"id": 1, "clients": [], "filter": "", "capture_responses": True},)):
    clock = MemoryReactorClock()
    shipper = Shipper(clock)
    shipper.rules = RuleSet.from_sessions(list(sessions))
    pool = FakePool()
    factory = ProxyFactory(config.parse(ini), shipper, clock, pool=pool)
    protocol = factory.buildProtocol(None)
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    protocol.makeConnection(transport)
    return protocol, transport, pool, shipper, clock


def queued(shipper: Shipper):
    return [Flow.unpack(item.flow) for item in shipper.queue._unsent]


def upstream_reply(pool: FakePool, data: bytes, index: int = -1) -> None:
    pool.connections[index].link.dataReceived(data)


def test_get_is_forwarded_in_origin_form_and_answered():
    """An absolute-form GET goes upstream in origin form with Host set; the answer comes back."""
    proxy, client, pool, shipper, _ = make_proxy()
    proxy.dataReceived(b"GET http://example.test:8000/a?b=1 HTTP/1.1\r\nHost: other\r\nX-Y: z\r\n\r\n")
    upstream = pool.connections[0]
    assert upstream.key == ("http", "example.test", 8000)
    assert upstream.transport.value() == b"GET /a?b=1 HTTP/1.1\r\nHost: example.test:8000\r\nX-Y: z\r\n\r\n"
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\n\r\nhello")
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\n\r\nhello"
    assert pool.released == [upstream] and upstream.reusable
    [flow] = queued(shipper)
    assert (flow.method, flow.host, flow.port, flow.path, flow.status) == ("GET", "example.test", 8000, "/a?b=1", 200)
    assert flow.response.body == b"hello" and flow.server_ip == "192.0.2.7"
    assert not client.disconnecting


def test_chunked_request_is_rechunked_with_trailers():
    """A chunked upload is forwarded chunked, trailers included, and captured de-chunked."""
    proxy, _, pool, shipper, _ = make_proxy()
    proxy.dataReceived(b"POST http://h/u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    proxy.dataReceived(b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    sent = pool.connections[0].transport.value()
    assert sent.endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 204 No Content\r\n\r\n")
    [flow] = queued(shipper)
    assert flow.request.body == b"abcde" and flow.request.size == 5


def test_head_response_with_length_completes_and_is_reusable():
    """A HEAD answer announcing a body ends at its head; the connection goes back to the pool."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"HEAD http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert client.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    assert pool.released == pool.connections and pool.connections[0].reusable


def test_pipelined_requests_wait_their_turn():
    """A second request in the same read is not sent upstream until the first response ends."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/1 HTTP/1.1\r\nHost: h\r\n\r\nGET http://h/2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(pool.connections) == 1
    assert client.producerState == "paused"
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert len(pool.connections) == 2
    assert pool.connections[1].transport.value().startswith(b"GET /2 ")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert client.value().count(b"HTTP/1.1 200 OK") == 2 and client.value().endswith(b"2")
    assert client.producerState == "producing"


def test_informational_responses_are_relayed():
    """A 100 Continue from the origin reaches an HTTP/1.1 client before the final answer."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"PUT http://h/ HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert b"Expect: 100-continue" in pool.connections[0].transport.value()
    upstream_reply(pool, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proxy.dataReceived(b"ok")
    upstream_reply(pool, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert client.value().endswith(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")


def test_close_delimited_response_ends_with_the_connection():
    """A body delimited by close is relayed and the client connection is then closed."""
    proxy, client, pool, shipper, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream = pool.connections[0]
    upstream.link.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nsome bytes")
    upstream.link.connectionLost(None)
    assert client.value() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome bytes"
    assert client.disconnecting
    [flow] = queued(shipper)
    assert flow.response.size == 10 and flow.error == ""


def test_chunked_response_to_http10_client_is_close_delimited():
    """An HTTP/1.0 client cannot read chunked: it gets the plain body and a close."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.0\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert client.value() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc"
    assert client.disconnecting


def test_origin_closing_before_answer_is_502_and_recorded():
    """An origin that closes without answering gives a 502 and a flow with the error."""
    proxy, client, pool, shipper, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    pool.connections[0].link.connectionLost(None)
    assert client.value().startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"origin closed the connection without a response" in client.value()
    [flow] = queued(shipper)
    assert "origin closed" in flow.error and flow.response is None


def test_bad_response_from_origin_is_502():
    """Garbage from the origin is a 502 and that upstream connection is dropped."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"NOT HTTP AT ALL\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 502")
    assert pool.connections[0].transport.aborted


def test_malformed_request_is_400_and_closed():
    """A request line llhttp rejects is answered 400 and the connection closed."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET\x00 / HTTP/1.1\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 400 Bad Request")
    assert client.disconnecting and not pool.connections


def test_ambiguous_framing_is_refused_before_forwarding():
    """Content-Length with Transfer-Encoding, or differing lengths: 400, nothing sent upstream."""
    for request in (
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ):
        proxy, client, pool, _, _ = make_proxy()
        proxy.dataReceived(request)
        assert client.value().startswith(b"HTTP/1.1 400"), request
        assert not pool.connections


def test_userinfo_in_target_is_refused():
    """An absolute-form target with user:password@ is a 400."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET http://user:pw@h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 400") and not pool.connections


def test_client_outside_allow_is_refused():
    """A client not in [proxy] allow gets a 403 and the connection closed."""
    proxy, client, pool, _, _ = make_proxy("[proxy]\nallow = 10.0.0.0/8\n")
    assert client.value().startswith(b"HTTP/1.1 403")
    assert client.disconnecting
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not pool.connections


def test_nothing_is_recorded_without_a_capturing_session():
    """With no capturing session, exchanges are forwarded and nothing is queued."""
    proxy, client, pool, shipper, _ = make_proxy(sessions=())
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.value().endswith(b"ok")
    assert shipper.pending == 0


def test_session_filter_and_clients_decide_capture():
    """Only sessions whose clients and filter match get the flow."""
    sessions = [
        {"id": 1, "clients": ["127.0.0.1"], "filter": "~m POST", "capture_responses": True},
        {"id": 2, "clients": ["127.0.0.1"], "filter": "", "capture_responses": True},
        {"id": 3, "clients": ["10.0.0.0/8"], "filter": "", "capture_responses": True},
    ]
    proxy, _, pool, shipper, _ = make_proxy(sessions=sessions)
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [item.sessions for item in shipper.queue._unsent] == [[2]]


def test_capture_is_truncated_but_traffic_is_not():
    """Bodies past max_capture_body are cut in the record only, with the true size kept."""
    proxy, client, pool, shipper, _ = make_proxy("[proxy]\nmax_capture_body = 4\n")
    proxy.dataReceived(b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
    assert pool.connections[0].transport.value().endswith(b"0123456789")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef")
    assert client.value().endswith(b"abcdef")
    [flow] = queued(shipper)
    assert (flow.request.body, flow.request.size, flow.request.truncated) == (b"0123", 10, True)
    assert (flow.response.body, flow.response.size, flow.response.truncated) == (b"abcd", 6, True)


def test_capture_gathers_bodies_read_in_pieces_up_to_the_limit():
    """Bodies that arrive over several reads are kept whole below the limit and cut inside the piece that crosses it."""
    proxy, client, pool, shipper, _ = make_proxy("[proxy]\nmax_capture_body = 5\n")
    proxy.dataReceived(b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n012")
    proxy.dataReceived(b"345")
    proxy.dataReceived(b"6789")
    assert pool.connections[0].transport.value().endswith(b"0123456789")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    upstream_reply(pool, b"2\r\ncd\r\n")
    upstream_reply(pool, b"1\r\ne\r\n0\r\n\r\n")
    proxy.dataReceived(b"PUT http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nwx")
    proxy.dataReceived(b"yz")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    first, second = queued(shipper)
    assert (first.request.body, first.request.size, first.request.truncated) == (b"01234", 10, True)
    assert (first.response.body, first.response.size, first.response.truncated) == (b"abcde", 5, False)
    assert (second.request.body, second.request.size, second.request.truncated) == (b"wxyz", 4, False)
    assert (second.response.body, second.response.truncated) == (b"", False)


def test_sessions_without_capture_responses_store_no_response_body():
    """capture_responses off: status and headers are kept, the body is not."""
    sessions = [{"id": 1, "clients": [], "filter": "", "capture_responses": False}]
    proxy, _, pool, shipper, _ = make_proxy(sessions=sessions)
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    [flow] = queued(shipper)
    assert flow.status == 200 and flow.response.body == b"" and flow.response.size == 2


def test_slow_upstream_pauses_the_client_and_resumes_it():
    """Back-pressure: when the upstream transport is full the client stops being read."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
    upstream = pool.connections[0].transport
    upstream.producer.pauseProducing()
    assert client.producerState == "paused"
    upstream.producer.resumeProducing()
    assert client.producerState == "producing"


def test_slow_client_pauses_the_upstream():
    """Back-pressure the other way: the upstream transport is the client's producer."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    assert client.producer is pool.connections[0].transport
    upstream_reply(pool, b"67890")
    assert client.producer is None


def test_idle_client_connection_is_closed_after_the_timeout():
    """A keep-alive connection idle for idle_timeout seconds is closed."""
    proxy, client, _, _, clock = make_proxy("[proxy]\nidle_timeout = 5\n")
    clock.advance(4.9)
    assert not client.disconnecting
    clock.advance(0.2)
    assert client.disconnecting


def test_loop_into_own_port_is_refused():
    """A target on the appliance's own port on a local address is refused with 403."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.services.own_ports.add(8081)
    proxy.dataReceived(b"GET http://localhost:8081/api/status HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 403") and not pool.connections


def test_long_request_line_is_414():
    """A request target past max_request_line is answered 414 and closed."""
    proxy, client, pool, _, _ = make_proxy("[limits]\nmax_request_line = 100\n")
    proxy.dataReceived(b"GET http://h/" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 414") and client.disconnecting and not pool.connections


def test_too_many_or_too_large_headers_are_431():
    """More header lines than max_headers, or a head past max_header_bytes, is a 431."""
    proxy, client, pool, _, _ = make_proxy("[limits]\nmax_headers = 3\n")
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5)) + b"\r\n")
    assert client.value().startswith(b"HTTP/1.1 431") and not pool.connections
    proxy, client, pool, _, _ = make_proxy("[limits]\nmax_header_bytes = 2048\n")
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n")
    assert client.value().startswith(b"HTTP/1.1 431") and not pool.connections


def test_endless_header_value_is_cut_off():
    """A header value that never ends is refused once the raw head passes the bound."""
    proxy, client, _, _, _ = make_proxy("[limits]\nmax_header_bytes = 2048\nmax_request_line = 100\n")
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nX-Endless: ")
    for _ in range(10):
        proxy.dataReceived(b"x" * 1000)
    assert client.value().startswith(b"HTTP/1.1 431") and client.disconnecting


def test_body_in_the_same_read_as_the_head_does_not_count_against_the_head():
    """Only head bytes are bounded: a read that finishes the head and goes on into the body is fine.

    The head arrives in two reads, its end (CRLF CRLF) split between them, and the second read
    carries far more body than the head may hold.
    """
    proxy, client, pool, _, _ = make_proxy("[limits]\nmax_header_bytes = 2048\nmax_request_line = 100\n")
    body = b"z" * 10000
    head = b"POST http://h/u HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 1500 + b"\r\nContent-Length: 10000\r\n\r\n"
    proxy.dataReceived(head[:-3])
    proxy.dataReceived(head[-3:] + body)
    assert not client.value(), client.value()[:100]
    assert pool.connections[0].transport.value().endswith(b"\r\n\r\n" + body)


def test_slow_request_head_gets_408():
    """A client that starts a request head and trickles it (slowloris) gets 408 after header_timeout."""
    proxy, client, _, _, clock = make_proxy("[limits]\nheader_timeout = 5\n")
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHo")
    clock.advance(4)
    proxy.dataReceived(b"st: h\r\n")
    assert not client.disconnecting
    clock.advance(1.5)
    assert client.value().startswith(b"HTTP/1.1 408") and client.disconnecting


def test_stalled_body_is_closed_and_recorded():
    """A body that stops arriving for body_timeout closes the connection; the flow says why."""
    proxy, client, pool, shipper, clock = make_proxy("[limits]\nbody_timeout = 5\n")
    proxy.dataReceived(b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    clock.advance(4)
    proxy.dataReceived(b"de")
    clock.advance(4)
    assert not client.disconnecting
    clock.advance(2)
    assert client.disconnecting
    proxy.connectionLost(None)
    assert pool.connections[0].transport.aborted
    [flow] = queued(shipper)
    assert "client closed" in flow.error and flow.request.size == 5


def test_connections_past_the_limit_are_closed_at_once():
    """With max_connections open, the next connection is closed at once and counted."""
    first, client1, _, _, _ = make_proxy("[limits]\nmax_connections = 1\n")
    second = first.services.buildProtocol(None)
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
    second.makeConnection(transport)
    assert transport.aborted and first.services.over_limit == 1
    first.connectionLost(None)
    third = first.services.buildProtocol(None)
    transport3 = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50002))
    third.makeConnection(transport3)
    assert not getattr(transport3, "aborted", False) and first.services.connections == 1


def test_redacted_headers_are_masked_in_the_record_only():
    """[capture] redact masks those header values in the flow; the origin and client see the real ones."""
    proxy, client, pool, shipper, _ = make_proxy("[capture]\nredact = Authorization, Set-Cookie\n")
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer secret\r\n\r\n")
    assert b"Authorization: Bearer secret" in pool.connections[0].transport.value()
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc\r\nContent-Length: 0\r\n\r\n")
    assert b"Set-Cookie: sid=abc" in client.value()
    [flow] = queued(shipper)
    assert (b"Authorization", b"[redacted]") in flow.request.headers
    assert (b"Set-Cookie", b"[redacted]") in flow.response.headers


def test_magic_host_page_keeps_the_connection_alive():
    """The appliance's own page is answered after the whole request, and keep-alive holds."""
    proxy, client, pool, _, _ = make_proxy()
    proxy.services.ca = type("CA", (), {"sha256": "AB:CD", "pem": b"PEM", "der": b"DER"})()
    proxy.dataReceived(b"GET http://capture.proxy/ca.pem HTTP/1.1\r\nHost: capture.proxy\r\n\r\n")
    proxy.dataReceived(b"GET http://capture.proxy/ca.der HTTP/1.1\r\nHost: capture.proxy\r\n\r\n")
    assert client.value().count(b"HTTP/1.1 200 OK") == 2
    assert client.value().endswith(b"DER") and not client.disconnecting and not pool.connections


def test_closing_resumes_reading_and_aborts_a_connection_that_will_not_close():
    """A connection paused during its exchange reads again to close (TLS needs it), and is aborted if stuck."""
    proxy, client, pool, _, clock = make_proxy()
    proxy.dataReceived(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert client.producerState == "paused"  # reading stops while the exchange runs
    upstream_reply(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert client.disconnecting and client.producerState == "producing"
    clock.advance(10.5)
    assert getattr(client, "aborted", False)
