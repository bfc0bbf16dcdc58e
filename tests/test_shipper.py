"""Tests for capture.shipper: the proxy's side of the session-manager socket.

The session manager is played by hand: what the shipper writes is decoded
from a ``StringTransport`` and answers are fed to ``dataReceived``.  Time is a
``MemoryReactorClock``; ``advance(0)`` runs the flush scheduled with
``callLater(0)``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from capture import shipper as shipper_module
from capture import wire
from capture.flow import Flow, Message
from capture.messages import WebSocketClose, WebSocketMessage, unpack_messages
from capture.record.recorder import Recorder
from capture.shipper import CALL_TIMEOUT, CallFailed, Shipper, ShipperFactory, ShipperProtocol, Unavailable


def make_flow(n: int = 0, body: bytes = b"") -> Flow:
    """A small finished flow; ``n`` goes into the path so flows can be told apart."""
    return Flow(
        client="10.0.0.7",
        client_port=40000 + n,
        scheme="http",
        host="example.com",
        port=80,
        method="GET",
        path=f"/item/{n}",
        request=Message(headers=((b"Host", b"example.com"),), body=body, size=len(body)),
        status=200,
        reason="OK",
        response=Message(headers=(), body=b"", size=0),
        start=1700000000.0 + n,
        end=1700000000.5 + n,
    )


SIZE = 64 + len(make_flow(1).pack())  # what one small flow counts against the limits


class Connection:
    """One ShipperProtocol on a StringTransport, with helpers to talk to it."""

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper
        self.protocol = ShipperProtocol(shipper)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[dict[str, Any]]:
        """Messages written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return wire.Decoder().feed(data)

    def receive(self, kind: str, **fields: Any) -> None:
        self.protocol.dataReceived(wire.encode(kind, **fields))

    def welcome(self, last_seq: int = 0, pid: int = 4242) -> None:
        self.receive("welcome", pid=pid, last_seq=last_seq)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def clock() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def shipper(clock: MemoryReactorClock) -> Shipper:
    return Shipper(clock)


def connect(shipper: Shipper, clock: MemoryReactorClock, last_seq: int = 0) -> Connection:
    """A connection that said hello and got its welcome; hello cleared, nothing flushed yet."""
    conn = Connection(shipper)
    conn.welcome(last_seq)
    conn.sent()
    return conn


def shipped_seqs(messages: list[dict[str, Any]]) -> list[int]:
    """Sequence numbers of every item of every flows message, in order."""
    return [item[0] for m in messages if m["t"] == "flows" for item in m["items"]]


# -- connecting ------------------------------------------------------------------


def test_hello_on_connect(shipper: Shipper) -> None:
    """The first message on a connection is hello with the instance id, our pid and which proxy process we are."""
    conn = Connection(shipper)
    assert conn.sent() == [{"t": "hello", "v": wire.VERSION, "instance": shipper.instance, "pid": os.getpid(),
                            "worker": 0, "workers": 1}]
    assert len(shipper.instance) == 32
    worker = Shipper(MemoryReactorClock(), worker=2, workers=3)
    assert Connection(worker).sent()[0] | {"instance": "", "pid": 0} == {
        "t": "hello", "v": wire.VERSION, "instance": "", "pid": 0, "worker": 2, "workers": 3}
    assert worker.instance != shipper.instance  # each start of a proxy process is a run of its own


def test_not_connected_until_welcome(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Before welcome nothing but hello is sent, however many flows are queued."""
    conn = Connection(shipper)
    conn.sent()
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    clock.advance(10)
    assert conn.sent() == []
    assert shipper.connected is False
    assert shipper.pending == 2


def test_welcome_records_pid_and_connects(shipper: Shipper) -> None:
    """welcome marks the shipper connected and records the session manager's pid."""
    conn = Connection(shipper)
    conn.welcome(pid=777)
    assert shipper.connected is True
    assert shipper.session_manager_pid == 777
    assert shipper.status() == {"connected": True, "pid": 777, "pending": 0, "spilled": 0, "dropped": 0, "shipped": 0}


def test_factory_builds_protocol_for_the_shipper(shipper: Shipper) -> None:
    """ShipperFactory builds protocols bound to its shipper."""
    protocol = ShipperFactory(shipper).buildProtocol(None)
    assert isinstance(protocol, ShipperProtocol)
    assert protocol.shipper is shipper


def pending_timers(clock: MemoryReactorClock) -> list:
    """Delayed calls other than the periodic stats report."""
    return [call for call in clock.getDelayedCalls() if call.func.__name__ != "_report"]


def test_stats_are_reported_every_second_while_connected(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """A connected shipper sends a stats message each STATS_INTERVAL, and stops when disconnected."""
    conn = connect(shipper, clock)
    shipper.stats = lambda: {"worker": 3}
    clock.advance(shipper_module.STATS_INTERVAL)
    assert [m for m in conn.sent() if m["t"] == "stats"] == [
        {"t": "stats", "v": 1, "instance": shipper.instance, "data": {"worker": 3}}
    ]
    conn.protocol.connectionLost(None)
    assert pending_timers(clock) == [] and not [c for c in clock.getDelayedCalls() if c.active()]


# -- shipping --------------------------------------------------------------------


def test_submit_assigns_increasing_seqs(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Flows queued before the connection get seqs 1, 2, 3 and go out after welcome in one flows message."""
    flows = [make_flow(n) for n in range(3)]
    shipper.submit(flows[0], [1])
    shipper.submit(flows[1], [1, 2])
    shipper.submit(flows[2], [])
    conn = Connection(shipper)
    conn.sent()
    conn.welcome()
    assert conn.sent() == []  # flushed on the next turn, not inside dataReceived
    clock.advance(shipper_module.FLUSH_DELAY)
    (message,) = conn.sent()
    assert message["t"] == "flows"
    assert message["instance"] == shipper.instance
    assert message["items"] == [
        [1, [1], flows[0].pack()],
        [2, [1, 2], flows[1].pack()],
        [3, [], flows[2].pack()],
    ]
    assert Flow.unpack(message["items"][1][2]) == flows[1]


def test_submits_in_one_turn_share_a_message(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Flows submitted while connected are batched per reactor turn."""
    conn = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    assert conn.sent() == []
    clock.advance(shipper_module.FLUSH_DELAY)
    assert [shipped_seqs([m]) for m in conn.sent()] == [[1, 2]]
    shipper.submit(make_flow(3), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(conn.sent()) == [3]


def test_batches_hold_at_most_batch_items(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """More than BATCH_ITEMS queued flows go out in several flows messages."""
    conn = connect(shipper, clock)
    for n in range(shipper_module.BATCH_ITEMS + 10):
        shipper.submit(make_flow(n), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    messages = conn.sent()
    assert [len(m["items"]) for m in messages] == [shipper_module.BATCH_ITEMS, 10]
    assert shipped_seqs(messages) == list(range(1, shipper_module.BATCH_ITEMS + 11))


def test_window_limits_bytes_in_flight(
    shipper: Shipper, clock: MemoryReactorClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No new batch goes out while a window's worth is unacked; an ack lets the next out."""
    monkeypatch.setattr(shipper_module, "BATCH_ITEMS", 2)
    shipper.queue.window = 3 * SIZE
    conn = connect(shipper, clock)
    for n in range(8):
        shipper.submit(make_flow(n), [1])  # SIZE bytes of accounting each
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(conn.sent()) == [1, 2, 3, 4]
    conn.receive("ack", instance=shipper.instance, seq=4)
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(conn.sent()) == [5, 6, 7, 8]


def test_ack_removes_pending_and_counts_shipped(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An ack for seq N forgets every flow up to N; pending drops and shipped counts them."""
    conn = connect(shipper, clock)
    for n in range(3):
        shipper.submit(make_flow(n), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    conn.sent()
    assert shipper.pending == 3
    conn.receive("ack", instance=shipper.instance, seq=2)
    assert shipper.pending == 1
    assert shipper.queue.shipped == 2
    conn.receive("ack", instance=shipper.instance, seq=3)
    assert shipper.pending == 0
    assert shipper.queue.shipped == 3
    assert shipper.status()["pending"] == 0
    clock.advance(shipper_module.FLUSH_DELAY)
    assert conn.sent() == []  # nothing sent twice


def test_resend_after_reconnect(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Unacked flows are sent again, first and in order, on the next connection."""
    first = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(first.sent()) == [1, 2]
    first.lose()
    assert shipper.connected is False
    assert shipper.session_manager_pid is None
    assert shipper.pending == 2
    shipper.submit(make_flow(3), [1])
    second = Connection(shipper)
    assert [m["t"] for m in second.sent()] == ["hello"]
    second.welcome(last_seq=0)
    clock.advance(shipper_module.FLUSH_DELAY)
    messages = second.sent()
    assert shipped_seqs(messages) == [1, 2, 3]
    assert messages[0]["items"][0][2] == make_flow(1).pack()
    second.receive("ack", instance=shipper.instance, seq=3)
    assert shipper.pending == 0
    assert shipper.queue.shipped == 3


def test_welcome_last_seq_discards_stored(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Flows the store already has (seq <= welcome's last_seq) are not sent again."""
    first = connect(shipper, clock)
    for n in range(4):
        shipper.submit(make_flow(n), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    first.sent()
    first.lose()
    second = Connection(shipper)
    second.welcome(last_seq=2)
    assert shipper.pending == 2
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(second.sent()) == [3, 4]


def test_welcome_last_seq_covering_everything(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """When the store has everything, nothing is resent and pending is 0."""
    first = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    first.lose()
    second = Connection(shipper)
    second.welcome(last_seq=1)
    clock.advance(shipper_module.FLUSH_DELAY)
    assert [m["t"] for m in second.sent()] == ["hello"]
    assert shipper.pending == 0


def test_stale_connection_loss_is_ignored(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """connectionLost of an older connection does not detach the current one."""
    old = Connection(shipper)
    new = connect(shipper, clock)
    old.lose()
    assert shipper.connected is True
    shipper.submit(make_flow(1), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(new.sent()) == [1]


# -- bounded queue ---------------------------------------------------------------


def test_queue_bound_drops_oldest_unsent(clock: MemoryReactorClock) -> None:
    """Past memory_limit, with no spill file, the oldest unsent flows are dropped and counted."""
    shipper = Shipper(clock, memory_limit=SIZE * 5 // 2)  # room for two flows
    for n in range(1, 5):
        shipper.submit(make_flow(n), [1])
    assert shipper.dropped == 2
    assert shipper.pending == 2
    assert shipper.status()["dropped"] == 2
    conn = connect(shipper, clock)
    clock.advance(shipper_module.FLUSH_DELAY)
    messages = conn.sent()
    assert shipped_seqs(messages) == [3, 4]
    assert [Flow.unpack(item[2]).path for item in messages[0]["items"]] == ["/item/3", "/item/4"]


def test_queue_bound_counts_body_sizes(clock: MemoryReactorClock) -> None:
    """A flow's request body counts against the bound: one big flow pushes out the small ones."""
    shipper = Shipper(clock, memory_limit=2 * SIZE + 7000 + SIZE // 2)
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    shipper.submit(make_flow(3, body=b"x" * 7000), [1])
    assert shipper.dropped == 1
    assert shipper.pending == 2
    conn = connect(shipper, clock)
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(conn.sent()) == [2, 3]


def test_queue_bound_never_drops_unacked(clock: MemoryReactorClock) -> None:
    """Flows already sent stay until acked; only unsent ones are dropped for room."""
    shipper = Shipper(clock, memory_limit=SIZE * 5 // 2)
    conn = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipped_seqs(conn.sent()) == [1, 2]
    shipper.submit(make_flow(3), [1])
    assert shipper.dropped == 1
    assert shipper.pending == 2
    conn.receive("ack", instance=shipper.instance, seq=2)
    assert shipper.queue.shipped == 2
    assert shipper.pending == 0


# -- calls -----------------------------------------------------------------------


def test_call_unavailable_when_not_connected(shipper: Shipper) -> None:
    """call() fails at once with Unavailable without a connection, and before welcome."""
    failures: list[Failure] = []
    shipper.call("status").addErrback(failures.append)
    conn = Connection(shipper)
    conn.sent()
    shipper.call("status").addErrback(failures.append)
    assert [f.type for f in failures] == [Unavailable, Unavailable]
    assert conn.sent() == []


def test_call_resolves_with_result(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """call() sends a call message and fires with the reply's result."""
    conn = connect(shipper, clock)
    results: list[Any] = []
    shipper.call("sessions.get", session_id=5).addCallback(results.append)
    (message,) = conn.sent()
    assert message == {"t": "call", "v": wire.VERSION, "id": 1, "method": "sessions.get", "args": {"session_id": 5}}
    conn.receive("reply", id=1, result={"id": 5, "name": "s"})
    assert results == [{"id": 5, "name": "s"}]
    assert pending_timers(clock) == []  # the timeout is cancelled


def test_calls_matched_by_id(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Replies go to the call with their id, in whatever order they come."""
    conn = connect(shipper, clock)
    results: list[Any] = []
    shipper.call("a").addCallback(lambda r: results.append(("a", r)))
    shipper.call("b").addCallback(lambda r: results.append(("b", r)))
    assert [m["id"] for m in conn.sent()] == [1, 2]
    conn.receive("reply", id=2, result="two")
    conn.receive("reply", id=1, result=None)
    assert results == [("b", "two"), ("a", None)]


def test_call_error_reply_is_call_failed(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An error reply fails the call with CallFailed carrying status and message."""
    conn = connect(shipper, clock)
    failures: list[Failure] = []
    shipper.call("sessions.get", session_id=9).addErrback(failures.append)
    conn.receive("reply", id=1, error={"status": 404, "message": "no session 9"})
    (failure,) = failures
    assert failure.type is CallFailed
    assert failure.value.status == 404
    assert failure.value.message == "no session 9"
    assert str(failure.value) == "no session 9"


def test_call_timeout_is_unavailable(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """A call with no reply within CALL_TIMEOUT fails with Unavailable; a late reply is ignored."""
    conn = connect(shipper, clock)
    failures: list[Failure] = []
    shipper.call("status").addErrback(failures.append)
    clock.advance(CALL_TIMEOUT - 0.5)
    assert failures == []
    clock.advance(1.0)
    assert [f.type for f in failures] == [Unavailable]
    conn.receive("reply", id=1, result="late")
    assert conn.transport.disconnected is False


def test_call_fails_on_disconnect(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """Calls in flight fail with Interrupted (an Unavailable) when the connection is lost, and their timers stop."""
    conn = connect(shipper, clock)
    failures: list[Failure] = []
    shipper.call("status").addErrback(failures.append)
    shipper.call("sessions.list").addErrback(failures.append)
    conn.lose()
    assert [f.type for f in failures] == [shipper_module.Interrupted, shipper_module.Interrupted]
    assert all(f.check(Unavailable) for f in failures)
    assert pending_timers(clock) == []
    clock.advance(CALL_TIMEOUT + 1)
    assert len(failures) == 2


def test_reply_for_unknown_call_is_ignored(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """A reply to no pending call changes nothing and keeps the connection."""
    conn = connect(shipper, clock)
    conn.receive("reply", id=99, result=1)
    assert conn.transport.disconnected is False
    assert shipper.connected is True


# -- rules and other messages ----------------------------------------------------


def test_rules_message_replaces_rules(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """A rules message compiles the pushed sessions into shipper.rules, replacing the old ones."""
    conn = connect(shipper, clock)
    assert shipper.rules.for_client("10.0.0.7") == ()
    conn.receive("rules", sessions=[{"id": 1, "clients": ["10.0.0.0/24"], "filter": ""}, {"id": 2, "clients": []}])
    assert [r.session_id for r in shipper.rules.for_client("10.0.0.7")] == [1, 2]
    assert [r.session_id for r in shipper.rules.for_client("192.168.0.1")] == [2]
    conn.receive("rules", sessions=[])
    assert shipper.rules.for_client("10.0.0.7") == ()


def test_rules_arrive_before_welcome(shipper: Shipper) -> None:
    """Rules are taken even before welcome."""
    conn = Connection(shipper)
    conn.receive("rules", sessions=[{"id": 7}])
    assert [r.session_id for r in shipper.rules.rules] == [7]


def test_event_message_is_ignored(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An event message is accepted without effect."""
    conn = connect(shipper, clock)
    conn.receive("event", session=1, event="flow", data={})
    assert conn.transport.disconnected is False
    assert shipper.connected is True


def test_unknown_message_type_aborts(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An unknown message type makes the protocol abort the connection."""
    conn = connect(shipper, clock)
    conn.receive("surprise", x=1)
    assert conn.transport.disconnected is True


def test_malformed_bytes_abort(shipper: Shipper) -> None:
    """Bytes that are not msgpack abort the connection."""
    conn = Connection(shipper)
    conn.protocol.dataReceived(b"\xc1\xc1")
    assert conn.transport.disconnected is True


def test_message_missing_field_aborts(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An ack without seq aborts rather than raising out of dataReceived."""
    conn = connect(shipper, clock)
    conn.receive("ack", instance=shipper.instance)
    assert conn.transport.disconnected is True


# -- drained ---------------------------------------------------------------------


def test_drained_immediately_when_empty(shipper: Shipper) -> None:
    """drained() fires True at once when nothing is pending."""
    results: list[bool] = []
    shipper.drained(5.0).addCallback(results.append)
    assert results == [True]


def test_drained_fires_true_when_all_acked(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """drained() fires True once the last pending flow is acked, and its timer is cancelled."""
    conn = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    shipper.submit(make_flow(2), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    results: list[bool] = []
    shipper.drained(5.0).addCallback(results.append)
    conn.receive("ack", instance=shipper.instance, seq=1)
    assert results == []
    conn.receive("ack", instance=shipper.instance, seq=2)
    assert results == [True]
    assert pending_timers(clock) == []


def test_drained_false_on_timeout(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """drained() fires False when flows are still pending after the timeout."""
    shipper.submit(make_flow(1), [1])
    results: list[bool] = []
    shipper.drained(5.0).addCallback(results.append)
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    assert results == [False]
    assert shipper.pending == 1


def test_drained_true_when_welcome_discards_the_rest(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """drained() fires True as soon as the queue is empty, also when welcome's last_seq empties it."""
    first = connect(shipper, clock)
    shipper.submit(make_flow(1), [1])
    clock.advance(shipper_module.FLUSH_DELAY)
    first.lose()
    results: list[bool] = []
    shipper.drained(5.0).addCallback(results.append)
    second = Connection(shipper)
    second.welcome(last_seq=1)
    assert shipper.pending == 0
    assert results == [True]


# -- live (WebSocket) flows ------------------------------------------------------------


def live_message(n: int) -> WebSocketMessage:
    return WebSocketMessage(n % 2 == 0, "text", b"m%d" % n, 2, False, 1700000000.0 + n)


def test_live_flow_items_ship_in_order_with_batched_messages(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """open, then the messages of one FLUSH_DELAY as one item, then close: numbered like flows, naming the open."""
    conn = connect(shipper, clock)
    ref = shipper.open_live(make_flow(1), [3])
    for n in range(5):
        shipper.live_messages(ref, [live_message(n)])
    clock.advance(shipper_module.FLUSH_DELAY)
    clock.advance(shipper_module.FLUSH_DELAY)
    shipper.live_messages(ref, [live_message(5)])
    shipper.close_live(ref, make_flow(1), WebSocketClose(1000, "", "server"))
    clock.advance(shipper_module.FLUSH_DELAY)
    items = [item for m in conn.sent() if m["t"] == "flows" for item in m["items"]]
    assert [(item[0], item[3:]) for item in items[1:]] == [(2, ["messages", ref]), (3, ["messages", ref]),
                                                           (4, ["close", ref])]
    assert items[0][:2] == [ref, [3]] and items[0][3] == "open"
    assert [m.content for m in unpack_messages(items[1][2])] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [m.content for m in unpack_messages(items[2][2])] == [b"m5"]


def test_live_messages_queue_at_once_past_the_batch_size(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """LIVE_BATCH messages make an item without waiting; nothing gathers without bound while disconnected."""
    ref = shipper.open_live(make_flow(1), [3])
    shipper.live_messages(ref, [live_message(n) for n in range(shipper_module.LIVE_BATCH)])
    assert shipper.queue.pending == 2
    shipper.live_messages(ref, [live_message(0)])
    clock.advance(shipper_module.FLUSH_DELAY)
    assert shipper.queue.pending == 3


def test_drained_queues_gathered_messages_first(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """At shutdown messages still gathering count as pending and are queued, so they spill rather than vanish."""
    ref = shipper.open_live(make_flow(1), [3])
    shipper.live_messages(ref, [live_message(1)])
    assert shipper.pending == 2
    shipper.drained(1.0)
    assert shipper.queue.pending == 2 and shipper.pending == 2


def test_recorder_omits_origin_messages_unless_a_session_captures_responses(shipper: Shipper,
                                                                            clock: MemoryReactorClock) -> None:
    """The recorder keeps the origin's message content only if a session the socket went to
    captures responses; otherwise those messages ship listed, empty and omitted; the client's keep theirs."""
    conn = connect(shipper, clock)
    conn.receive("rules", sessions=[
        {"id": 1, "clients": [], "filter": "", "capture_responses": False},
        {"id": 2, "clients": [], "filter": "~d other.example", "capture_responses": True},
    ])
    recorder = Recorder(shipper)
    candidates = recorder.candidates("10.0.0.7")
    flow = recorder.websocket("10.0.0.7", 5000, "http", "chat.example", 80, "/ws", "HTTP/1.1", [], "Switching",
                              [], (1.0, 1.0, 1.0, None), "", "127.0.0.1", None, None)
    live = recorder.open_websocket(candidates, flow)
    assert live is not None and live.sessions == {1} and live.responses is False
    recorder.websocket_messages(live, "10.0.0.7", [
        WebSocketMessage(True, "text", b"ask", 3, False, 2.0), WebSocketMessage(False, "text", b"tell", 4, False, 3.0)])
    clock.advance(shipper_module.FLUSH_DELAY)
    clock.advance(shipper_module.FLUSH_DELAY)
    items = [item for m in conn.sent() if m["t"] == "flows" for item in m["items"]]
    assert [item[3] for item in items] == ["open", "messages"]
    assert unpack_messages(items[1][2]) == [WebSocketMessage(True, "text", b"ask", 3, False, 2.0),
                                            WebSocketMessage(False, "text", b"", 4, True, 3.0, True)]
    conn.receive("rules", sessions=[{"id": 3, "clients": [], "filter": "", "capture_responses": True}])
    live = recorder.open_websocket(recorder.candidates("10.0.0.7"), flow)
    assert live.responses is True
    recorder.websocket_messages(live, "10.0.0.7", [WebSocketMessage(False, "text", b"tell", 4, False, 3.0)])
    clock.advance(shipper_module.FLUSH_DELAY)
    clock.advance(shipper_module.FLUSH_DELAY)
    items = [item for m in conn.sent() if m["t"] == "flows" for item in m["items"]]
    assert unpack_messages(items[-1][2]) == [WebSocketMessage(False, "text", b"tell", 4, False, 3.0)]


# -- the auto-passthrough table ------------------------------------------------------


def test_pushed_passthrough_table_replaces_and_is_seeded_back(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """A pushed table replaces the held one; after a reconnect the shipper hands it to the new session manager."""
    conn = connect(shipper, clock)
    conn.receive("passthrough", hosts=[["10.0.0.7", "pinned.example", 5.0]], suspects=[["10.0.0.8", "cut.example"]])
    assert shipper.passthrough == {("10.0.0.7", "pinned.example"): 5.0}
    assert shipper.suspects == {("10.0.0.8", "cut.example")}
    conn.lose()
    again = Connection(shipper)
    again.sent()
    again.welcome()
    [seed] = [m for m in again.sent() if m["t"] == "call"]
    assert (seed["method"], seed["args"]) == ("passthrough.seed", {"hosts": [["10.0.0.7", "pinned.example", 5.0]]})
    again.receive("passthrough", hosts=[], suspects=[])
    assert shipper.passthrough == {} and shipper.suspects == set()


# -- waiting for the session manager -------------------------------------------------


def test_wait_ready_fires_on_welcome(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """An admin call waiting for the session manager goes on as soon as it has welcomed us."""
    fired: list[Any] = []
    shipper.wait_ready(5.0).addCallback(fired.append)
    conn = Connection(shipper)
    clock.advance(1.0)
    assert fired == []  # connected, but not yet welcomed
    conn.welcome()
    assert fired == [None]
    assert shipper.wait_ready(5.0).called  # connected: at once


def test_wait_ready_gives_up_after_its_bound(shipper: Shipper, clock: MemoryReactorClock) -> None:
    """No session manager within the bound: Unavailable, saying how long it waited."""
    failures: list[Any] = []
    shipper.wait_ready(2.0).addErrback(failures.append)
    clock.advance(1.9)
    assert failures == []
    clock.advance(0.2)
    [failure] = failures
    assert failure.check(Unavailable) and "waited 2 s" in str(failure.value)
    Connection(shipper).welcome()  # a late welcome finds nobody waiting
    assert len(failures) == 1

