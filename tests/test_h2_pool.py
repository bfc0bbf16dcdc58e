"""The shared HTTP/2 origin pool, scripted against h2 server connections without sockets: streams of many
clients on one connection, MAX_CONCURRENT_STREAMS respected (another connection, then a bounded wait),
GOAWAY taking a connection out of use while its streams finish, idle connections closed."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from capture import config
from capture.http.http1 import Target
from capture.upstream.alpn_pool import H2Pool, OriginsBusy
from test_h2_client import OriginEnd, Sink

KEY = ("origin.test", 443, "origin.test")


class Origin(OriginEnd):
    """One origin connection, with ALPN h2 chosen."""

    def __init__(self, max_streams: int) -> None:
        super().__init__(max_streams)
        self.link.alpn = b"h2"

    def requests(self) -> list:
        return [e for e in self.seen if isinstance(e, h2.events.RequestReceived)]

    def answer(self, stream_id: int) -> None:
        self.server.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
        self.pump()


class Connector:
    """Connections the pool asks for, answered by the test."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred] = []

    def connect(self, host, port, server_name, alpn):
        d = defer.Deferred()
        self.asked.append(d)
        return d


class Rig:
    def __init__(self, max_streams: int = 1, **kwargs) -> None:
        self.clock = MemoryReactorClock()
        self.connector = Connector()
        limits = config.parse("").limits
        self.pool = H2Pool(self.clock, self.connector, None, limits, idle_timeout=30, **kwargs)
        self.max_streams = max_streams
        self.origins: list[Origin] = []

    def connected(self) -> Origin:
        """Answer the oldest pending connect with a new origin connection (settings exchanged)."""
        origin = Origin(self.max_streams)
        self.origins.append(origin)
        d = self.connector.asked.pop(0)
        d.callback(origin.link)
        origin.pump()
        return origin

    def acquire(self, key=KEY) -> tuple[defer.Deferred, list]:
        got: list = []
        d = self.pool.acquire(key)
        d.addBoth(got.append)
        return d, got


def send(stream, origin: Origin) -> Sink:
    sink = Sink()
    stream.send_request(sink, b"GET", Target("https", "origin.test", 443, "/"), [], "none", True)
    origin.pump()
    return sink


def test_streams_of_many_clients_share_one_connection():
    """Streams acquired one after another (as from different client connections) all go on one connection."""
    rig = Rig(max_streams=100)
    _, first = rig.acquire()
    origin = rig.connected()
    assert rig.connector.asked == []
    sinks = [send(first[0], origin)]
    for _ in range(4):
        _, got = rig.acquire()
        sinks.append(send(got[0], origin))
    assert rig.connector.asked == [] and len(origin.requests()) == 5
    for request in origin.requests():
        origin.answer(request.stream_id)
    assert all(sink.events[0][:2] == ("head", 204) for sink in sinks)


def test_a_full_connection_opens_another_then_streams_wait_their_turn():
    """The origin allows one stream: a second stream opens a second connection; beyond max_per_origin a
    third waits and gets the first slot freed."""
    rig = Rig(max_streams=1, max_per_origin=2)
    _, a = rig.acquire()
    one = rig.connected()
    send(a[0], one)
    _, b = rig.acquire()
    assert b == [] and len(rig.connector.asked) == 1
    two = rig.connected()
    send(b[0], two)
    _, c = rig.acquire()
    assert c == [] and rig.connector.asked == []  # at max_per_origin: it waits
    one.answer(one.requests()[0].stream_id)
    assert c and c[0].connection is a[0].connection
    send(c[0], one)
    assert len(one.requests()) == 2


def test_a_wait_is_bounded_in_time_and_in_number():
    """A stream that finds no slot within the wait gets a timeout; past max_waiting one is refused at once."""
    rig = Rig(max_streams=1, max_per_origin=1, max_waiting=1)
    _, a = rig.acquire()
    origin = rig.connected()
    send(a[0], origin)
    _, b = rig.acquire()
    _, c = rig.acquire()
    assert c[0].check(OriginsBusy)
    rig.clock.advance(rig.pool.wait_timeout + 1)
    assert b[0].check(error.TimeoutError)


def test_goaway_takes_a_connection_out_of_use_while_its_stream_finishes():
    """After the origin's GOAWAY new streams go to a new connection; the accepted stream still completes and
    the old connection closes after it."""
    rig = Rig(max_streams=100)
    _, a = rig.acquire()
    one = rig.connected()
    sink = send(a[0], one)
    one.link.dataReceived(GoAwayFrame(0, last_stream_id=one.requests()[0].stream_id, error_code=0).serialize())
    _, b = rig.acquire()
    assert b == [] and len(rig.connector.asked) == 1
    two = rig.connected()
    assert b[0].connection.link is two.link
    one.answer(one.requests()[0].stream_id)
    assert sink.events[0][:2] == ("head", 204)
    assert one.transport.disconnecting and not two.transport.disconnecting


def test_an_idle_connection_is_closed_and_a_busy_one_is_not():
    """No stream for idle_timeout: GOAWAY and closed; while a stream is open the timer does not run."""
    rig = Rig(max_streams=100)
    _, a = rig.acquire()
    one = rig.connected()
    send(a[0], one)
    rig.clock.advance(31)
    assert not one.transport.disconnecting
    one.answer(one.requests()[0].stream_id)
    rig.clock.advance(29)
    assert not one.transport.disconnecting
    rig.clock.advance(2)
    assert one.transport.disconnecting
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in one.server.receive_data(one.transport.value()))


def test_past_max_idle_the_longest_idle_connection_closes_and_closed_ones_are_forgotten():
    """Many distinct origins: beyond max_idle idle connections the one idle longest gets GOAWAY and
    closes; once its link is lost nothing of it stays in the pool."""
    rig = Rig(max_streams=100, max_idle=2)
    origins = []
    for i in range(3):
        _, got = rig.acquire((f"o{i}.test", 443, f"o{i}.test"))
        origin = rig.connected()
        send(got[0], origin)
        origin.answer(origin.requests()[0].stream_id)
        origins.append(origin)
    assert [o.transport.disconnecting for o in origins] == [True, False, False]
    origins[0].link.connectionLost(Failure(error.ConnectionDone()))
    assert ("o0.test", 443, "o0.test") not in rig.pool._links and len(rig.pool._links) == 2


def test_close_all_ends_every_origin_connection_with_goaway():
    """When the proxy stops, each HTTP/2 origin connection, busy or idle, hears GOAWAY and is closed."""
    rig = Rig(max_streams=100)
    _, a = rig.acquire()
    busy = rig.connected()
    send(a[0], busy)
    _, b = rig.acquire(("idle.test", 443, "idle.test"))
    idle = rig.connected()
    send(b[0], idle)
    idle.answer(idle.requests()[0].stream_id)
    rig.pool.close_all()
    for origin in (busy, idle):
        assert origin.transport.disconnecting
        assert any(isinstance(e, h2.events.ConnectionTerminated) for e in origin.server.receive_data(origin.transport.value()))
