"""Live (WebSocket) flows in the store, on every backend: opened, messages appended as batches arrive, closed.

The items are what the proxy ships (capture.delivery): ``open`` stores the
flow, ``messages`` and ``close`` name it by the opening item's sequence
number, and every item is de-duplicated by the same per-instance mark as a
plain flow.
"""

from __future__ import annotations

import json

import msgpack
import pytest

from capture.flow import Flow, Message, pack_fields
from capture.messages import PROXY_STOPPED, WebSocketClose, WebSocketMessage, pack_close, pack_messages
from capture.sessiond.exports import Exports
from capture.sessiond.store import Invalid, NotFound, open_store

T0 = 1_700_000_000.0


def socket_flow(end: float | None = None, error: str = "") -> Flow:
    return Flow(client="10.0.0.5", client_port=5000, scheme="http", host="chat.example", port=80, method="GET",
                path="/ws", request=Message(headers=((b"Upgrade", b"websocket"),)), status=101,
                reason="Switching Protocols", response=Message(headers=((b"Upgrade", b"websocket"),)),
                start=T0, request_done=T0, response_start=T0 + 0.01, end=end, error=error, kind="websocket")


def message(n: int, from_client: bool = True) -> WebSocketMessage:
    return WebSocketMessage(from_client, "text", f"m{n}".encode(), len(f"m{n}"), False, T0 + n)


def opened(seq: int, sessions: list[int]) -> tuple:
    return (seq, sessions, pack_fields(socket_flow()), "open", 0)


def messages(seq: int, ref: int, numbers: range) -> tuple:
    return (seq, [], pack_messages([message(n, n % 2 == 0) for n in numbers]), "messages", ref)


def closed(seq: int, ref: int, close: WebSocketClose = WebSocketClose(1000, "bye", "client")) -> tuple:
    payload = msgpack.packb((pack_fields(socket_flow(end=T0 + 9)), pack_close(close)), use_bin_type=True)
    return (seq, [], payload, "close", ref)


@pytest.fixture
def store(store_database):
    s = open_store(store_database)
    yield s
    s.close()


def test_open_flow_shows_while_messages_arrive(store):
    """The flow is listed once opened; each batch adds messages in order; the detail says it is open."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid])])
    (summary,), total = store.list_flows(sid)
    assert total == 1 and summary["status"] == 101 and summary["duration_ms"] is None
    detail = store.get_flow(summary["id"])
    assert detail["websocket"] == {"open": True, "message_count": 0, "messages": [], "close": None}
    store.ingest("p", [messages(2, 1, range(0, 3))])
    store.ingest("p", [messages(3, 1, range(3, 5))])
    section = store.get_flow(summary["id"])["websocket"]
    assert section["message_count"] == 5
    assert [m["content"] for m in section["messages"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert [m["from_client"] for m in section["messages"]] == [True, False, True, False, True]
    assert section["messages"][0] == {"from_client": True, "type": "text", "content": "m0", "encoding": "utf-8",
                                      "size": 2, "truncated": False, "omitted": False,
                                      "time": "2023-11-14T22:13:20.000Z"}


def test_close_replaces_the_record_and_says_how_it_ended(store):
    """The close item's record replaces the open one (duration now known), and the close is shown."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid]), messages(2, 1, range(2)), closed(3, 1)])
    (summary,), _ = store.list_flows(sid)
    assert summary["duration_ms"] == 9000.0
    section = store.get_flow(summary["id"])["websocket"]
    assert section["open"] is False and section["message_count"] == 2
    assert section["close"] == {"code": 1000, "reason": "bye", "closed_by": "client"}
    assert store.websocket_close(summary["id"]) == WebSocketClose(1000, "bye", "client")


def test_resent_items_are_stored_once(store):
    """A batch delivered again (its ack lost) adds no message twice and opens no second flow."""
    sid = store.create_session("s")["id"]
    batch = [opened(1, [sid]), messages(2, 1, range(3))]
    assert store.ingest("p", batch) == 2
    assert store.ingest("p", batch) == 2
    store.ingest("p", [messages(2, 1, range(3)), messages(3, 1, range(3, 4))])
    (summary,), total = store.list_flows(sid)
    page, count = store.messages(summary["id"])
    assert total == 1 and count == 4 and [m.content for m in page] == [b"m0", b"m1", b"m2", b"m3"]


def test_messages_are_paged(store):
    """``messages`` pages by offset and limit, in order, with the total."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid]), messages(2, 1, range(10))])
    (summary,), _ = store.list_flows(sid)
    page, total = store.messages(summary["id"], offset=7, limit=2)
    assert total == 10 and [m.content for m in page] == [b"m7", b"m8"]
    with pytest.raises(NotFound):
        store.messages(999999)


def test_items_for_a_flow_never_stored_are_skipped(store):
    """A socket no session wanted (or one from another instance) gets no messages; the mark still moves."""
    sid = store.create_session("s")["id"]
    assert store.ingest("p", [opened(1, [sid + 100]), messages(2, 1, range(3)), closed(3, 1)]) == 3
    assert store.ingest("q", [messages(1, 1, range(3))]) == 1
    assert store.list_flows(sid)[1] == 0 and store.rejected == 0


def test_bad_live_payload_is_rejected_alone(store):
    """An undecodable messages item is counted rejected; the items after it are stored."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid]), (2, [], b"\xc1junk", "messages", 1), messages(3, 1, range(1)),
                       (4, [], b"x", "bogus", 1)])
    (summary,), _ = store.list_flows(sid)
    assert store.messages(summary["id"])[1] == 1 and store.rejected == 2


def test_clear_drops_the_messages_too(store):
    """Clearing a session removes its WebSocket flows with their messages; later items for them are skipped."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid]), messages(2, 1, range(3))])
    (summary,), _ = store.list_flows(sid)
    store.clear(sid)
    with pytest.raises(NotFound):
        store.messages(summary["id"])
    store.ingest("p", [messages(3, 1, range(3, 5)), closed(4, 1)])
    assert store.list_flows(sid)[1] == 0 and store.rejected == 0


def test_callbacks_announce_messages_and_the_end(store):
    """on_messages reports the new count per flow per batch; on_stored reports the open and the close."""
    sid = store.create_session("s")["id"]
    seen_messages, seen_flows = [], []
    store.ingest("p", [opened(1, [sid]), messages(2, 1, range(2)), messages(3, 1, range(2, 5)), closed(4, 1)],
                 lambda flow_id, sessions, flow: seen_flows.append((sessions, flow.end)),
                 lambda flow_id, sessions, count, added: seen_messages.append((sessions, count, added)))
    assert seen_messages == [([sid], 5, 5)]
    assert seen_flows == [([sid], None), ([sid], T0 + 9)]


def test_websocket_filter_in_the_store(store):
    """~websocket selects the WebSocket flows of a session, pushed down or not."""
    sid = store.create_session("s")["id"]
    plain = socket_flow()._replace(kind="http", status=200, path="/plain")
    store.ingest("p", [(1, [sid], plain.pack()), opened(2, [sid])])
    assert [f["path"] for f in store.list_flows(sid, filter="~websocket")[0]] == ["/ws"]
    assert [f["path"] for f in store.list_flows(sid, filter="~websocket & ~b m0")[0]] == []
    assert store.list_flows(sid, filter="~http")[1] == 2


def test_har_export_carries_the_stored_messages(store):
    """The session's HAR has the WebSocket entry with every stored message; Postman notes it left one out."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [opened(1, [sid]), messages(2, 1, range(3)), closed(3, 1)])
    document = json.loads(b"".join(Exports(store).har(sid)))
    (entry,) = document["log"]["entries"]
    assert entry["_resourceType"] == "websocket"
    assert [(m["type"], m["data"]) for m in entry["_webSocketMessages"]] == [
        ("send", "m0"), ("receive", "m1"), ("send", "m2")]
    collection = json.loads(b"".join(Exports(store).postman(sid)))
    assert collection["item"] == [] and "1 WebSocket connection is left out" in collection["info"]["description"]


# sockets a proxy run left open ---------------------------------------------------

def _closes(store, sid: int) -> dict[str, object]:
    """Each of the session's flows by path: its close as the detail shows it (None while open)."""
    return {f["path"]: store.get_flow(f["id"])["websocket"]["close"] for f in store.list_flows(sid)[0]}


def _opened_at(seq: int, sessions: list[int], path: str) -> tuple:
    return (seq, sessions, pack_fields(socket_flow()._replace(path=path)), "open", 0)


STOPPED = {"code": 1006, "reason": "proxy stopped", "closed_by": "proxy"}


def test_a_new_run_closes_what_its_process_left_open(store):
    """close_orphans closes the earlier runs' open sockets of that proxy process, once; its own run's stay open."""
    sid = store.create_session("s")["id"]
    store.ingest("run-1", [_opened_at(1, [sid], "/left"), messages(2, 1, range(3)),
                           _opened_at(3, [sid], "/ws"), closed(4, 3)])
    store.ingest("run-2", [_opened_at(1, [sid], "/live")])
    closed_now = store.close_orphans("run-2", 0)
    assert [(sessions, flow.path) for _, sessions, flow in closed_now] == [([sid], "/left")]
    assert _closes(store, sid) == {"/left": STOPPED, "/ws": {"code": 1000, "reason": "bye", "closed_by": "client"},
                                   "/live": None}
    left = closed_now[0][0]
    assert store.websocket_close(left) == PROXY_STOPPED and store.messages(left)[1] == 3
    assert store.get_flow(left)["websocket"]["open"] is False
    assert store.close_orphans("run-2", 0) == []  # a session manager restarted under a live proxy: nothing more
    store.ingest("run-1", [messages(5, 1, range(3, 5))])  # items of the old run still on their way are kept
    assert [m.content for m in store.messages(left)[0]] == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_other_workers_and_appliances_keep_their_sockets(store, store_database):
    """A worker's new run closes only its own predecessors' sockets (and those of workers past the count),
    never another appliance's on the same database."""
    sid = store.create_session("s")["id"]
    store.ingest("w0-old", [_opened_at(1, [sid], "/w0")], worker=0)
    store.ingest("w1-old", [_opened_at(1, [sid], "/w1")], worker=1)
    store.ingest("w3-old", [_opened_at(1, [sid], "/w3")], worker=3)
    other = open_store(store_database, appliance="other-appliance")
    try:
        other.ingest("theirs", [_opened_at(1, [sid], "/theirs")], worker=1)
        assert [flow.path for _, _, flow in store.close_orphans("w1-new", 1)] == ["/w1"]
        assert _closes(store, sid) == {"/w0": None, "/w1": STOPPED, "/w3": None, "/theirs": None}
        assert [flow.path for _, _, flow in store.close_orphans("w0-new", 0, workers=2)] == ["/w0", "/w3"]
        assert _closes(store, sid) == {"/w0": STOPPED, "/w1": STOPPED, "/w3": STOPPED, "/theirs": None}
        assert [flow.path for _, _, flow in other.close_orphans("theirs-new", 1)] == ["/theirs"]
    finally:
        other.close()


def test_a_run_that_ended_delivered_later_is_stored_closed(store):
    """Items replayed from an ended run's spill file: the socket is stored closed, its messages once,
    and a close of its own wins."""
    sid = store.create_session("s")["id"]
    batch = [_opened_at(1, [sid], "/spilled"), messages(2, 1, range(2))]
    assert store.ingest("gone", batch, ended=True) == 2
    assert store.ingest("gone", batch + [messages(3, 1, range(2, 3))], ended=True) == 3  # resent: nothing twice
    (summary,), _ = store.list_flows(sid)
    assert store.websocket_close(summary["id"]) == PROXY_STOPPED
    assert [m.content for m in store.messages(summary["id"])[0]] == [b"m0", b"m1", b"m2"]
    assert store.close_orphans("next", 0) == []
    store.ingest("gone", [closed(4, 1)], ended=True)
    assert store.websocket_close(summary["id"]) == WebSocketClose(1000, "bye", "client")


@pytest.mark.parametrize("args", [("", 0), ("x", -1), ("x", "0"), ("x", 1, 1), ("x", 0, 0), ("x", 0, True)])
def test_close_orphans_bad_arguments(store, args):
    """close_orphans refuses a bad instance, worker or worker count."""
    with pytest.raises(Invalid):
        store.close_orphans(*args)


def test_ingest_bad_worker_or_ended(store):
    """ingest refuses a worker number that is not one and an ended flag that is not a bool."""
    with pytest.raises(Invalid):
        store.ingest("p", [], worker=-1)
    with pytest.raises(Invalid):
        store.ingest("p", [], ended=1)


def batch(seq: int, ref: int, items: list[WebSocketMessage]) -> tuple:
    return (seq, [], pack_messages(items), "messages", ref)


def test_omitted_messages_are_listed_without_content(store):
    """An origin's message recorded without content (responses not captured) is stored, paged,
    shown and exported as omitted, with its size and time; the client's message keeps its content."""
    sid = store.create_session("s", capture_responses=False)["id"]
    store.ingest("p", [opened(1, [sid]), batch(2, 1, [WebSocketMessage(True, "text", b"ask", 3, False, T0 + 1),
                                                      WebSocketMessage(False, "binary", b"", 9, True, T0 + 2, True)])])
    (summary,), _ = store.list_flows(sid)
    shown = store.get_flow(summary["id"])["websocket"]["messages"]
    assert [(m["from_client"], m["content"], m["size"], m["omitted"]) for m in shown] == [
        (True, "ask", 3, False), (False, "", 9, True)]
    page, total = store.messages(summary["id"], offset=1)
    assert total == 2 and page == [WebSocketMessage(False, "binary", b"", 9, True, T0 + 2, True)]
    (entry,) = json.loads(b"".join(Exports(store).har(sid)))["log"]["entries"]
    assert entry["_webSocketMessages"][1] == {"type": "receive", "time": T0 + 2, "opcode": 2, "data": "",
                                              "_omitted": True}


def test_version_1_batch_from_an_older_proxy_is_stored(store):
    """A batch packed before ``omitted`` existed (version 1) is stored; its messages read as not omitted."""
    sid = store.create_session("s")["id"]
    old = msgpack.packb((1, [(False, "text", b"hello", 5, False, T0 + 1)]), use_bin_type=True)
    store.ingest("p", [opened(1, [sid]), (2, [], old, "messages", 1)])
    (summary,), _ = store.list_flows(sid)
    assert store.messages(summary["id"]) == ([WebSocketMessage(False, "text", b"hello", 5, False, T0 + 1)], 1)
    assert store.rejected == 0


def text(from_client: bool, content: bytes, n: int = 0) -> WebSocketMessage:
    return WebSocketMessage(from_client, "text", content, len(content), False, T0 + n)


@pytest.fixture
def talk(store):
    """A session of sockets and plain flows, each saying "hello" somewhere else; path names each."""
    sid = store.create_session("s")["id"]
    http = socket_flow()._replace(kind="http", status=200, reason="OK")
    items = [
        (1, [sid], http._replace(path="/req", request=Message(body=b"hello", size=5)).pack()),
        (2, [sid], http._replace(path="/resp", response=Message(body=b"hello", size=5)).pack()),
        (3, [sid], pack_fields(socket_flow()._replace(path="/server-said")), "open", 0),
        batch(4, 3, [text(True, b"greet"), text(False, b"oh, HELLO there")]),
        (5, [sid], pack_fields(socket_flow()._replace(path="/client-said")), "open", 0),
        batch(6, 5, [text(True, b"hello"), text(False, b"hi")]),
        (7, [sid], pack_fields(socket_flow()._replace(path="/binary")), "open", 0),
        batch(8, 7, [WebSocketMessage(False, "binary", b"\x00\xffhello\x80", 8, False, T0)]),
        (9, [sid], pack_fields(socket_flow()._replace(path="/omitted")), "open", 0),
        batch(10, 9, [text(True, b"x"), WebSocketMessage(False, "text", b"", 5, True, T0, True)]),
        (11, [sid], pack_fields(socket_flow()._replace(path="/quiet")), "open", 0),
    ]
    # The match comes late in a long socket: past the pages the store reads messages in.
    items.append((12, [sid], pack_fields(socket_flow()._replace(path="/long")), "open", 0))
    items += [batch(13 + i, 12, [text(i % 2 == 0, b"m%d" % (i * 100 + j), j) for j in range(100)])
              for i in range(12)]
    items.append(batch(25, 12, [text(False, b"last: hello")]))
    store.ingest("p", items)
    return sid


def paths(store, sid, expression) -> list[str]:
    listed, total = store.list_flows(sid, filter=expression, limit=1000)
    exported = [flow.path for _, flow in store.iter_flows(sid, expression)]
    assert [f["path"] for f in listed] == exported and total == len(listed)
    return sorted(exported)


@pytest.mark.parametrize("expression, expected", [
    ("~bs hello", ["/binary", "/long", "/resp", "/server-said"]),
    ("~bq hello", ["/client-said", "/req"]),
    ("~b hello", ["/binary", "/client-said", "/long", "/req", "/resp", "/server-said"]),
    ("~b greet", ["/server-said"]),
    ("~bs greet", []),
    ("~b 'h.llo'", ["/binary", "/client-said", "/long", "/req", "/resp", "/server-said"]),
    ("~bs '^oh, hel+o'", ["/server-said"]),
    ("~bs '\\x00\\xff'", ["/binary"]),
    ("~websocket & ~bs hello", ["/binary", "/long", "/server-said"]),
    ("~websocket & !~b hello", ["/omitted", "/quiet"]),
    ("~bs m1199 | ~bq m1198", ["/long"]),
    ("~bq m1199", []),
    ("~c 200 | ~bq hello", ["/client-said", "/req", "/resp"]),
    ("~h upgrade & ~bs hello", ["/binary", "/long", "/resp", "/server-said"]),
])
def test_body_filters_search_websocket_messages(store, talk, expression, expected):
    """~b matches a socket by any message, ~bq by the client's, ~bs by the origin's, text and binary
    alike as their bytes, case-insensitively; listings and exports agree, on both backends."""
    assert paths(store, talk, expression) == expected


def test_filters_without_body_terms_read_no_message(store, talk):
    """A filter that needs the decoded flows but has no ~b reads no WebSocket message; one with
    ~b reads a socket's messages only as far as its first match, and only for sockets SQL let through."""
    read: list[int] = []
    original = store._socket_messages

    def counting(flow_id, *args):
        for message in original(flow_id, *args):
            read.append(flow_id)
            yield message

    store._socket_messages = counting
    assert paths(store, talk, "~h upgrade & ~websocket") == [
        "/binary", "/client-said", "/long", "/omitted", "/quiet", "/server-said"]
    assert paths(store, talk, "~hq upgrade") and read == []
    assert paths(store, talk, "~c 404 & ~bs hello") == [] and read == []
    assert paths(store, talk, "~bs greet") == []
    assert len(read) == 2 * (2 + 2 + 1 + 2 + 0 + 1201)  # every message of each socket, for the list and the export
    (greeted,), _ = store.list_flows(talk, filter="~b greet")
    read.clear()
    assert paths(store, talk, "~b greet") == ["/server-said"]
    assert read.count(greeted["id"]) == 2  # stopped at the first message, in the list and in the export
