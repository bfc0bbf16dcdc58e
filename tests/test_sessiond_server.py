"""Tests for capture.sessiond.server: the session manager's end of the socket.

A real Store in tmp_path is driven through SessionProtocol on a
StringTransport; the last tests connect a real ShipperProtocol to a real
SessionProtocol in memory with ``twisted.test.iosim``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from capture import shipper as shipper_module
from capture import wire
from capture.flow import Flow, Message
from capture.rules import matching_sessions
from capture.sessiond.server import SessionFactory, SessionManager, SessionProtocol
from capture.sessiond.store import SQLiteStore as Store
from capture.messages import PROXY_STOPPED, WebSocketMessage, pack_messages
from capture.shipper import Shipper, ShipperProtocol

PID = 31337
INSTANCE = "0123456789abcdef0123456789abcdef"


def make_flow(n: int = 0, method: str = "GET") -> Flow:
    """A small finished flow; ``n`` goes into the path and the start time."""
    return Flow(
        client="10.0.0.7",
        client_port=40000 + n,
        scheme="http",
        host="example.com",
        port=80,
        method=method,
        path=f"/item/{n}",
        request=Message(headers=((b"Host", b"example.com"),)),
        status=200,
        reason="OK",
        response=Message(headers=((b"Content-Type", b"text/plain"),), body=b"hello", size=5),
        start=1700000000.0 + n,
        end=1700000000.25 + n,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(str(tmp_path / "capture.sqlite"), clock=lambda: 1700000000.0) as store:
        yield store


@pytest.fixture
def manager(store: Store) -> SessionManager:
    return SessionManager(store, PID)


class Peer:
    """A SessionProtocol on a StringTransport, played by the test as the proxy."""

    def __init__(self, manager: SessionManager) -> None:
        self.protocol = SessionFactory(manager).buildProtocol(None)
        assert isinstance(self.protocol, SessionProtocol)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, kind: str, **fields: Any) -> None:
        self.protocol.dataReceived(wire.encode(kind, **fields))

    def received(self) -> list[dict[str, Any]]:
        """Messages written to us since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return wire.Decoder().feed(data)

    def hello(self, instance: str = INSTANCE) -> list[dict[str, Any]]:
        self.send("hello", instance=instance, pid=1000)
        return self.received()

    def call(self, method: str, call_id: int = 1, **args: Any) -> dict[str, Any]:
        """Make one call; return its reply (and keep any other messages aside in ``self.other``)."""
        self.send("call", id=call_id, method=method, args=args)
        messages = self.received()
        replies = [m for m in messages if m["t"] == "reply"]
        self.other = [m for m in messages if m["t"] != "reply"]
        assert len(replies) == 1, messages
        assert replies[0]["id"] == call_id
        return replies[0]

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def items(session_ids: list[int], seqs: range) -> list[list[Any]]:
    return [[seq, session_ids, make_flow(seq).pack()] for seq in seqs]


# -- hello -----------------------------------------------------------------------


def test_hello_answers_rules_then_welcome(manager: SessionManager, store: Store) -> None:
    """hello is answered by the capturing sessions as rules, welcome (pid, last_seq 0), then the passthrough
    table: a proxy told it is connected already has its rules."""
    first = store.create_session("one", clients=["10.0.0.0/24"])
    paused = store.create_session("two")
    store.pause(paused["id"])
    peer = Peer(manager)
    assert peer.received() == []  # the proxy speaks first
    rules, welcome, table = peer.hello()
    assert welcome == {"t": "welcome", "v": wire.VERSION, "pid": PID, "last_seq": 0}
    assert table == {"t": "passthrough", "v": wire.VERSION, "hosts": [], "suspects": []}
    assert rules["t"] == "rules"
    assert [s["id"] for s in rules["sessions"]] == [first["id"]]
    assert rules["sessions"][0]["clients"] == ["10.0.0.0/24"]
    assert rules["sessions"] == [s for s in store.list_sessions() if s["state"] == "capturing"]


def test_hello_reports_last_stored_seq(manager: SessionManager, store: Store) -> None:
    """welcome carries the highest seq already stored for the instance."""
    session = store.create_session("s")
    store.ingest(INSTANCE, items([session["id"]], range(1, 6)))
    welcome = Peer(manager).hello()[1]
    assert welcome["last_seq"] == 5
    assert Peer(manager).hello(instance="another")[1]["last_seq"] == 0


def test_factory_registers_connected_proxies(manager: SessionManager) -> None:
    """Connected protocols are in manager.proxies until their connection is lost."""
    peer = Peer(manager)
    assert manager.proxies == {peer.protocol}
    peer.lose()
    assert manager.proxies == set()


# -- flows -----------------------------------------------------------------------


def test_flows_stored_and_acked(manager: SessionManager, store: Store) -> None:
    """A flows message is stored in the named sessions and acked with its highest seq."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 4)))
    assert peer.received() == [{"t": "ack", "v": wire.VERSION, "instance": INSTANCE, "seq": 3}]
    flows, total = store.list_flows(session["id"])
    assert total == 3
    assert [f["path"] for f in flows] == ["/item/1", "/item/2", "/item/3"]
    assert store.last_seq(INSTANCE) == 3


class Held:
    """A runner whose calls wait until the test lets them run, as a store in another thread would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any], defer.Deferred]] = []

    def run(self, function: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((function, args, kwargs, d))
        return d

    def release(self) -> None:
        function, args, kwargs, d = self.calls.pop(0)
        d.callback(function(*args, **kwargs))


def test_batches_queued_during_a_store_call_go_in_together(manager: SessionManager, store: Store) -> None:
    """Batches that arrive while one is being stored are stored in the next call together and acked
    once, up to MAX_MERGED items; a batch of another instance waits for a call of its own."""
    from capture.sessiond import server as server_module

    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    held = manager.runner = Held()
    size = server_module.MAX_MERGED // 2
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 3)))
    for first in (3, 3 + size, 3 + 2 * size):
        peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(first, first + size)))
    peer.send("flows", instance="earlier", items=items([session["id"]], range(1, 2)))
    assert len(held.calls) == 1
    held.release()
    assert [m["seq"] for m in peer.received()] == [2]
    assert [len(call[1][1]) for call in held.calls] == [2 * size]  # two batches fit, the third waits
    held.release()
    assert [m["seq"] for m in peer.received()] == [2 + 2 * size]
    held.release()
    held.release()
    assert [(m["instance"], m["seq"]) for m in peer.received()] == [(INSTANCE, 2 + 3 * size), ("earlier", 1)]
    assert held.calls == [] and store.list_flows(session["id"])[1] == 3 + 3 * size


def test_resent_batch_acked_again_stored_once(manager: SessionManager, store: Store) -> None:
    """The same batch sent again (a resend after a lost ack) is acked again but stored once."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    batch = items([session["id"]], range(1, 3))
    peer.send("flows", instance=INSTANCE, items=batch)
    peer.send("flows", instance=INSTANCE, items=batch)
    assert [(m["t"], m["seq"]) for m in peer.received()] == [("ack", 2), ("ack", 2)]
    assert store.list_flows(session["id"])[1] == 2
    assert store.get_session(session["id"])["flow_count"] == 2


def test_resend_overlapping_new_flows(manager: SessionManager, store: Store) -> None:
    """A resend that overlaps the stored ones keeps only the new seqs, on a new connection too."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 3)))
    peer.lose()
    again = Peer(manager)
    assert again.hello()[1]["last_seq"] == 2
    again.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 5)))
    assert again.received()[0]["seq"] == 4
    flows, total = store.list_flows(session["id"])
    assert total == 4
    assert [f["path"] for f in flows] == ["/item/1", "/item/2", "/item/3", "/item/4"]


def test_flows_before_hello_abort(manager: SessionManager, store: Store) -> None:
    """flows before hello abort the connection and store nothing."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 2)))
    assert peer.transport.disconnected is True
    assert peer.received() == []
    assert store.list_flows(session["id"])[1] == 0
    assert store.last_seq(INSTANCE) == 0


def test_flows_of_an_earlier_instance_are_stored_and_acked_for_it(manager: SessionManager, store: Store) -> None:
    """A proxy replaying its spill file sends an earlier instance's flows: stored and acked under that instance."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    peer.send("flows", instance="earlier-run", items=items([session["id"]], range(1, 3)))
    assert peer.transport.disconnected is False
    assert peer.received()[-1] == {"t": "ack", "v": 1, "instance": "earlier-run", "seq": 2}
    assert store.list_flows(session["id"])[1] == 2
    assert store.last_seq("earlier-run") == 2 and store.last_seq(INSTANCE) == 0


def test_flows_with_bad_items_abort(manager: SessionManager) -> None:
    """A flows message whose items are not lists aborts the connection."""
    peer = Peer(manager)
    peer.hello()
    peer.send("flows", instance=INSTANCE, items=[1, 2])
    assert peer.transport.disconnected is True


# -- calls -----------------------------------------------------------------------


def test_call_sessions_create_and_list(manager: SessionManager, store: Store) -> None:
    """sessions.create answers the new session; sessions.list answers all of them."""
    peer = Peer(manager)
    peer.hello()
    reply = peer.call("sessions.create", name="Lab phone", clients=["10.0.0.7"], filter="~m POST")
    created = reply["result"]
    assert "error" not in reply
    assert created["name"] == "Lab phone"
    assert created["state"] == "capturing"
    assert created["clients"] == ["10.0.0.7"]
    assert created["filter"] == "~m POST"
    assert store.get_session(created["id"]) == created
    listed = peer.call("sessions.list", call_id=2)
    assert listed["result"] == {"sessions": [created]}


def test_call_sessions_pause_and_conflict(manager: SessionManager, store: Store) -> None:
    """sessions.pause pauses; pausing again is a 409 error reply."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    reply = peer.call("sessions.pause", session_id=session["id"])
    assert reply["result"]["state"] == "paused"
    reply = peer.call("sessions.pause", call_id=2, session_id=session["id"])
    assert "result" not in reply
    assert reply["error"]["status"] == 409
    assert "paused" in reply["error"]["message"]
    assert store.get_session(session["id"])["state"] == "paused"


def test_call_unknown_session_is_404(manager: SessionManager) -> None:
    """A call on a session that does not exist is a 404 error reply."""
    peer = Peer(manager)
    for call_id, method in enumerate(["sessions.get", "sessions.pause", "sessions.delete"], start=1):
        reply = peer.call(method, call_id=call_id, session_id=42)
        assert reply["error"] == {"status": 404, "message": "no session 42"}
    assert peer.transport.disconnected is False


def test_call_bad_filter_is_400(manager: SessionManager, store: Store) -> None:
    """A filter that does not parse is a 400, for sessions.create (nothing created) and flows.list."""
    peer = Peer(manager)
    reply = peer.call("sessions.create", name="s", filter="~m (")
    assert reply["error"]["status"] == 400
    assert reply["error"]["message"].startswith("bad filter:")
    assert store.list_sessions() == []
    session = store.create_session("s")
    reply = peer.call("flows.list", call_id=2, session_id=session["id"], filter="~q ~")
    assert reply["error"]["status"] == 400
    assert "bad filter" in reply["error"]["message"]


def test_call_unknown_method_is_400(manager: SessionManager) -> None:
    """An unknown call is a 400 error reply naming it, and the connection stays."""
    peer = Peer(manager)
    reply = peer.call("sessions.explode")
    assert reply["error"] == {"status": 400, "message": "unknown call 'sessions.explode'"}
    assert peer.transport.disconnected is False


def test_call_bad_arguments_is_400(manager: SessionManager) -> None:
    """Unexpected or missing arguments are a 400 error reply."""
    peer = Peer(manager)
    assert peer.call("sessions.get", colour="red")["error"]["status"] == 400
    assert peer.call("sessions.create", call_id=2)["error"]["status"] == 400


def test_call_without_args(manager: SessionManager, store: Store) -> None:
    """A call with no args map is made with no arguments: status, with the sessions counted at the last read."""
    store.create_session("s")
    peer = Peer(manager)
    peer.hello()  # reads the sessions for the rules
    peer.send("call", id=7, method="status")
    (reply,) = peer.received()
    assert reply["id"] == 7
    health = store.health()
    assert reply["result"] == {"pid": PID, "sessions": 1, "rejected_flows": 0, "appliance": "", "database": health}
    assert health["backend"] == "sqlite" and health["reachable"] is True and health["error"] is None


def test_call_huge_id_answers_error(manager: SessionManager) -> None:
    """An id too large for SQLite is an error reply (404/400), not an exception that drops the proxy."""
    peer = Peer(manager)
    peer.hello()
    reply = peer.call("sessions.get", session_id=2**63)
    assert reply["error"]["status"] in (400, 404)
    assert peer.transport.disconnected is False


def test_call_non_map_args_abort(manager: SessionManager) -> None:
    """Call arguments that are not a map abort the connection."""
    peer = Peer(manager)
    peer.send("call", id=1, method="sessions.list", args=[1, 2])
    assert peer.transport.disconnected is True


def test_call_flows_list_and_get(manager: SessionManager, store: Store) -> None:
    """flows.list pages a session's flows (with a filter); flows.get answers the detail or 404."""
    session = store.create_session("s")
    sid = session["id"]
    peer = Peer(manager)
    peer.hello()
    batch = [[1, [sid], make_flow(1).pack()], [2, [sid], make_flow(2, method="POST").pack()]]
    peer.send("flows", instance=INSTANCE, items=batch)
    peer.received()
    listed = peer.call("flows.list", session_id=sid)["result"]
    assert listed["total"] == 2
    assert [f["method"] for f in listed["flows"]] == ["GET", "POST"]
    filtered = peer.call("flows.list", call_id=2, session_id=sid, filter="~m POST")["result"]
    assert filtered["total"] == 1
    assert [f["path"] for f in filtered["flows"]] == ["/item/2"]
    flow_id = filtered["flows"][0]["id"]
    detail = peer.call("flows.get", call_id=3, flow_id=flow_id)["result"]
    assert detail["id"] == flow_id
    assert detail["session_ids"] == [sid]
    assert detail["method"] == "POST"
    assert detail["response"]["body"] == "hello"
    missing = peer.call("flows.get", call_id=4, flow_id=flow_id + 100)
    assert missing["error"]["status"] == 404
    assert peer.call("flows.list", call_id=5, session_id=999)["error"]["status"] == 404


def test_state_change_pushes_rules_to_every_proxy(manager: SessionManager, store: Store) -> None:
    """A state-changing call pushes fresh rules to every connected proxy; a read-only call pushes none."""
    caller, other = Peer(manager), Peer(manager)
    caller.hello()
    other.hello(instance="other-instance")
    reply = caller.call("sessions.create", name="s", clients=["10.0.0.0/8"])
    sid = reply["result"]["id"]
    assert [m["t"] for m in caller.other] == ["rules"]
    assert [s["id"] for s in caller.other[0]["sessions"]] == [sid]
    (pushed,) = other.received()
    assert pushed["t"] == "rules"
    assert [s["id"] for s in pushed["sessions"]] == [sid]

    caller.call("sessions.list", call_id=2)
    assert caller.other == []
    assert other.received() == []

    caller.call("sessions.pause", call_id=3, session_id=sid)
    assert other.received() == [{"t": "rules", "v": wire.VERSION, "sessions": []}]
    caller.call("sessions.resume", call_id=4, session_id=sid)
    assert [s["id"] for s in other.received()[0]["sessions"]] == [sid]


def test_failed_state_change_pushes_nothing(manager: SessionManager, store: Store) -> None:
    """A state change that fails (409) does not push rules."""
    session = store.create_session("s")
    store.pause(session["id"])
    caller, other = Peer(manager), Peer(manager)
    reply = caller.call("sessions.pause", session_id=session["id"])
    assert reply["error"]["status"] == 409
    assert caller.other == []
    assert other.received() == []


# -- bad peers -------------------------------------------------------------------


def test_malformed_msgpack_aborts_and_manager_keeps_serving(manager: SessionManager, store: Store) -> None:
    """Garbage aborts that connection only; another connection is still served."""
    store.create_session("s")
    bad = Peer(manager)
    bad.protocol.dataReceived(b"\xc1\xc1\xc1")
    assert bad.transport.disconnected is True
    bad.lose()
    assert bad.protocol not in manager.proxies
    good = Peer(manager)
    rules, welcome, _ = good.hello()
    assert welcome["t"] == "welcome"
    assert welcome["pid"] == PID
    assert len(rules["sessions"]) == 1
    assert good.call("sessions.list", call_id=1)["result"]["sessions"][0]["name"] == "s"


def test_unknown_message_type_aborts(manager: SessionManager) -> None:
    """A message type the session manager does not take aborts the connection."""
    peer = Peer(manager)
    peer.send("welcome", pid=1, last_seq=0)
    assert peer.transport.disconnected is True


def test_message_missing_field_aborts(manager: SessionManager) -> None:
    """A hello without instance aborts rather than raising out of dataReceived."""
    peer = Peer(manager)
    peer.send("hello", pid=1)
    assert peer.transport.disconnected is True


# -- shipper and session manager together ----------------------------------------


def connect_pair(manager: SessionManager, shipper: Shipper, clock: MemoryReactorClock):
    """A ShipperProtocol connected to a SessionProtocol in memory; greeting already pumped."""
    return connectedServerAndClient(
        lambda: SessionProtocol(manager),
        lambda: ShipperProtocol(shipper),
        clock=clock,
    )


def test_end_to_end_flows_stored_once(manager: SessionManager, store: Store) -> None:
    """Flows submitted to a real Shipper end up in the store once, and nothing stays pending."""
    session = store.create_session("lab", clients=["10.0.0.0/24"], filter="~m GET")
    clock = MemoryReactorClock()
    shipper = Shipper(clock)
    client, server, pump = connect_pair(manager, shipper, clock)
    assert shipper.connected is True
    assert shipper.session_manager_pid == PID
    candidates = shipper.rules.for_client("10.0.0.7")
    assert [r.session_id for r in candidates] == [session["id"]]
    for n in range(1, 6):
        flow = make_flow(n, method="GET" if n != 3 else "POST")
        shipper.submit(flow, matching_sessions(candidates, flow))
    clock.advance(shipper_module.FLUSH_DELAY)
    pump.flush()
    assert shipper.pending == 0
    assert shipper.queue.shipped == 5
    flows, total = store.list_flows(session["id"])
    assert total == 4
    assert [f["path"] for f in flows] == ["/item/1", "/item/2", "/item/4", "/item/5"]
    assert store.last_seq(shipper.instance) == 5


def test_end_to_end_lost_ack_resend_stored_once(manager: SessionManager, store: Store) -> None:
    """When the ack is lost, the reconnect's welcome says what is stored and nothing is stored twice."""
    session = store.create_session("lab")
    clock = MemoryReactorClock()
    shipper = Shipper(clock)
    client, server, pump = connect_pair(manager, shipper, clock)
    for n in range(1, 4):
        shipper.submit(make_flow(n), [session["id"]])
    clock.advance(shipper_module.FLUSH_DELAY)
    pump.pump(advanceClock=False)  # the flows reach the store ...
    assert store.list_flows(session["id"])[1] == 3
    server.transport.getOutBuffer()  # ... and the ack is lost with the connection
    client.transport.loseConnection()
    pump.flush()
    assert shipper.connected is False
    assert shipper.pending == 3
    assert manager.proxies == set()

    client, server, pump = connect_pair(manager, shipper, clock)
    clock.advance(shipper_module.FLUSH_DELAY)
    pump.flush()
    assert shipper.pending == 0
    assert store.list_flows(session["id"])[1] == 3
    assert store.get_session(session["id"])["flow_count"] == 3

    shipper.submit(make_flow(4), [session["id"]])
    clock.advance(shipper_module.FLUSH_DELAY)
    pump.flush()
    assert shipper.pending == 0
    assert store.list_flows(session["id"])[1] == 4


def test_end_to_end_calls_and_rules(manager: SessionManager, store: Store) -> None:
    """A call through the Shipper creates a session, and the pushed rules reach the Shipper."""
    clock = MemoryReactorClock()
    shipper = Shipper(clock)
    client, server, pump = connect_pair(manager, shipper, clock)
    assert shipper.rules.rules == ()
    results: list[Any] = []
    shipper.call("sessions.create", name="via call", clients=["192.168.1.0/24"]).addCallback(results.append)
    pump.flush()
    (created,) = results
    assert created["name"] == "via call"
    assert [r.session_id for r in shipper.rules.for_client("192.168.1.50")] == [created["id"]]
    assert shipper.rules.for_client("10.0.0.1") == ()
    failures: list[Failure] = []
    shipper.call("sessions.get", session_id=created["id"] + 1).addErrback(failures.append)
    pump.flush()
    (failure,) = failures
    assert failure.value.status == 404


def test_live_flow_events_and_messages_call(manager: SessionManager, store: Store) -> None:
    """A followed session hears of a WebSocket flow when it opens and of its messages as batches land;
    ``flows.messages`` pages them."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    peer.send("subscribe", session=session["id"])
    socket = make_flow(1)._replace(kind="websocket", status=101)
    batch = [WebSocketMessage(True, "text", b"hi", 2, False, 1700000001.0),
             WebSocketMessage(False, "binary", b"\xff", 1, False, 1700000002.0)]
    peer.send("flows", instance=INSTANCE, items=[[1, [session["id"]], socket.pack(), "open", 0],
                                                 [2, [], pack_messages(batch), "messages", 1]])
    events = [(m["event"], m["data"]) for m in peer.received() if m["t"] == "event"]
    assert [name for name, _ in events] == ["flow", "messages"]
    flow_id = events[0][1]["id"]
    assert events[1][1] == {"id": flow_id, "message_count": 2, "added": 2}
    reply = peer.call("flows.messages", flow_id=flow_id, offset=1, limit=5)
    assert reply["result"]["total"] == 2
    assert reply["result"]["messages"] == [{"from_client": False, "type": "binary", "content": "/w==",
                                            "encoding": "base64", "size": 1, "truncated": False, "omitted": False,
                                            "time": "2023-11-14T22:13:22.000Z"}]


# -- sockets an earlier proxy run left open ------------------------------------------

EARLIER = "fedcba9876543210fedcba9876543210"


def open_socket(peer: Peer, session_id: int, instance: str = INSTANCE, seq: int = 1) -> None:
    """An open item and one message for a WebSocket flow, as ``instance`` ships them."""
    socket = make_flow(seq)._replace(kind="websocket", status=101)
    message = WebSocketMessage(True, "text", b"hi", 2, False, 1700000001.0)
    peer.send("flows", instance=instance, items=[[seq, [session_id], socket.pack(), "open", 0],
                                                 [seq + 1, [], pack_messages([message]), "messages", seq]])


def socket_closes(store: Store, session_id: int) -> list[Any]:
    return [store.websocket_close(f["id"]) for f in store.list_flows(session_id)[0]]


def test_hello_of_a_new_run_closes_the_sockets_the_earlier_one_left(manager: SessionManager, store: Store) -> None:
    """A proxy process started again closes its predecessor's open sockets and announces them; a session
    manager restarted under a live proxy (the same instance says hello again) closes none of its sockets."""
    session = store.create_session("s")
    earlier = Peer(manager)
    earlier.hello(instance=EARLIER)
    open_socket(earlier, session["id"], instance=EARLIER)
    earlier.lose()  # killed: its close never comes
    now = Peer(manager)
    now.send("subscribe", session=session["id"])
    answer = now.hello()
    assert socket_closes(store, session["id"]) == [PROXY_STOPPED]
    assert [(m["event"], m["data"]["path"]) for m in answer if m["t"] == "event"] == [("flow", "/item/1")]
    open_socket(now, session["id"], seq=10)
    now.lose()  # the session manager goes; the proxy lives on and says hello again
    again = Peer(manager)
    again.hello()
    assert socket_closes(store, session["id"]) == [PROXY_STOPPED, None]
    assert store.messages(store.list_flows(session["id"])[0][1]["id"])[1] == 1


def test_a_worker_run_closes_only_its_own_predecessors(manager: SessionManager, store: Store) -> None:
    """hello from worker 1's new run leaves the other processes' sockets open; the main process's new run
    with a worker fewer closes its own predecessor's and those of the worker that is no more."""
    session = store.create_session("s")
    for worker, instance in enumerate(("main-1", "worker-1", "third-1")):
        peer = Peer(manager)
        peer.send("hello", instance=instance, pid=1000 + worker, worker=worker, workers=3)
        open_socket(peer, session["id"], instance=instance)
    Peer(manager).send("hello", instance="worker-2", pid=1003, worker=1, workers=3)  # worker 1 restarted
    assert socket_closes(store, session["id"]) == [None, PROXY_STOPPED, None]
    Peer(manager).send("hello", instance="main-2", pid=1004, worker=0, workers=2)
    assert socket_closes(store, session["id"]) == [PROXY_STOPPED] * 3


def test_items_of_an_earlier_instance_are_stored_closed(manager: SessionManager, store: Store) -> None:
    """A socket replayed from an earlier run's spill file is stored closed, with its message, once."""
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    open_socket(peer, session["id"], instance=EARLIER)
    open_socket(peer, session["id"], instance=EARLIER)  # resent after a lost ack
    open_socket(peer, session["id"], seq=3)
    assert socket_closes(store, session["id"]) == [PROXY_STOPPED, None]
    (first, _), _ = store.list_flows(session["id"])
    assert store.messages(first["id"])[1] == 1


def test_bad_worker_in_hello_aborts(manager: SessionManager) -> None:
    """A hello whose worker is not an integer drops the connection."""
    peer = Peer(manager)
    peer.send("hello", instance=INSTANCE, pid=1, worker="0")
    assert peer.transport.disconnecting


# -- the auto-passthrough table -----------------------------------------------------


def test_passthrough_is_decided_once_for_every_proxy(manager: SessionManager) -> None:
    """Closes reported by two proxies count together; the decision is pushed to both; forget clears it for both."""
    one, two = Peer(manager), Peer(manager)
    one.hello(instance="a" * 32)
    two.hello(instance="b" * 32)
    args = {"client": "10.0.0.7", "host": "api.example"}
    assert one.call("passthrough.closed", start=0.0, end=1.0, **args)["result"] == {"passed": False, "count": 1}
    [pushed] = [m for m in two.received() if m["t"] == "passthrough"]
    assert pushed["suspects"] == [["10.0.0.7", "api.example"]] and pushed["hosts"] == []
    assert two.call("passthrough.closed", start=2.0, end=3.0, **args)["result"] == {"passed": False, "count": 2}
    assert one.call("passthrough.closed", start=4.0, end=5.0, **args)["result"] == {"passed": True, "count": 0}
    last = [m for m in two.received() if m["t"] == "passthrough"][-1]
    assert last["hosts"] == [["10.0.0.7", "api.example", 5.0]] and last["suspects"] == []
    listed = two.call("passthrough.list")["result"]["passthrough"]
    assert [(e["client"], e["host"]) for e in listed] == [("10.0.0.7", "api.example")]
    assert two.call("passthrough.forget", host="api.example")["result"] == {"forgotten": 1}
    assert [m for m in one.received() if m["t"] == "passthrough"][-1]["hosts"] == []


def test_passthrough_request_resets_and_seed_restores(manager: SessionManager) -> None:
    """A first request resets a count; a proxy reconnecting to a new session manager seeds back its hosts."""
    peer = Peer(manager)
    peer.hello()
    args = {"client": "10.0.0.7", "host": "api.example"}
    peer.call("passthrough.closed", start=0.0, end=1.0, **args)
    peer.call("passthrough.closed", start=2.0, end=3.0, **args)
    peer.call("passthrough.succeeded", **args)
    assert peer.call("passthrough.closed", start=4.0, end=5.0, **args)["result"]["count"] == 1
    peer.call("passthrough.seed", hosts=[["10.0.0.9", "pinned.example", 7.0]])
    listed = peer.call("passthrough.list")["result"]["passthrough"]
    assert [(e["client"], e["host"]) for e in listed] == [("10.0.0.9", "pinned.example")]
    assert peer.call("passthrough.rejected", client="10.0.0.8", host="x", at=9.0)["result"] == {"passed": True}
    assert len(peer.call("passthrough.list")["result"]["passthrough"]) == 2


def test_rules_decide_via_for_this_appliance(store: Store) -> None:
    """A capture filter naming appliances (~via) reaches the proxy already decided for this one."""
    manager = SessionManager(store, PID, appliance="floor-2")
    here = store.create_session("here", filter="~via floor & ~m GET")
    there = store.create_session("there", filter="~via 'floor-3' | ~d example")
    peer = Peer(manager)
    rules, _, _ = peer.hello()  # rules, welcome, passthrough table
    filters_by_id = {s["id"]: s["filter"] for s in rules["sessions"]}
    assert filters_by_id[here["id"]] == "~all & ~m GET"
    assert filters_by_id[there["id"]] == "!~all | ~d example"
    # The sessions themselves keep the filter as written.
    assert store.get_session(here["id"])["filter"] == "~via floor & ~m GET"


class Outage:
    """A store whose ingest fails as an unreachable database does, until ``down`` is cleared."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = True
        self.attempts = 0
        self.orphan_attempts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def ingest(self, *args: Any, **kwargs: Any) -> int:
        self.attempts += 1
        self._check()
        return self._store.ingest(*args, **kwargs)

    def close_orphans(self, *args: Any) -> list[Any]:
        self.orphan_attempts += 1
        self._check()
        return self._store.close_orphans(*args)

    def _check(self) -> None:
        if self.down:
            from capture.sessiond.store import Unavailable

            raise Unavailable("database unreachable: connection refused")


def test_batches_wait_unacked_while_the_store_is_unreachable(store: Store) -> None:
    """While the store is unreachable no batch is acked, the connection stays, and batches are retried
    in order every RETRY_INTERVAL; once it answers, each is stored once and acked in order."""
    from capture.sessiond import server as server_module

    clock = MemoryReactorClock()
    outage = Outage(store)
    manager = SessionManager(outage, PID, reactor=clock)
    session = store.create_session("s")
    peer = Peer(manager)
    peer.hello()
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(1, 4)))
    peer.send("flows", instance=INSTANCE, items=items([session["id"]], range(4, 6)))
    assert peer.received() == [] and not peer.transport.disconnecting
    assert outage.attempts == 1  # the second batch waits behind the first
    clock.advance(server_module.RETRY_INTERVAL)
    assert outage.attempts == 2 and peer.received() == []
    outage.down = False
    clock.advance(server_module.RETRY_INTERVAL)
    acks = [m for m in peer.received() if m["t"] == "ack"]
    assert [a["seq"] for a in acks] == [5]  # the batches that waited go in together
    assert store.list_flows(session["id"])[1] == 5
    assert manager.call("status", {}).result[0]["database"]["reachable"] is True


def test_sockets_of_an_earlier_run_closed_once_the_store_answers(store: Store) -> None:
    """A hello while the store is unreachable closes the earlier run's sockets once it answers again."""
    from capture.sessiond import server as server_module

    session = store.create_session("s")
    store.ingest(EARLIER, [[1, [session["id"]], make_flow(1)._replace(kind="websocket", status=101).pack(), "open", 0]])
    clock = MemoryReactorClock()
    outage = Outage(store)
    peer = Peer(SessionManager(outage, PID, reactor=clock))
    peer.hello()
    assert outage.orphan_attempts == 1 and socket_closes(store, session["id"]) == [None]
    clock.advance(server_module.RETRY_INTERVAL)
    assert outage.orphan_attempts == 2
    outage.down = False
    clock.advance(server_module.RETRY_INTERVAL)
    assert outage.orphan_attempts == 3 and socket_closes(store, session["id"]) == [PROXY_STOPPED]
    clock.advance(server_module.RETRY_INTERVAL * 5)
    assert outage.orphan_attempts == 3
