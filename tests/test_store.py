"""The store test suite, run on every backend: sessions, flows, de-duplication, queries, statistics.

Each test gets a fresh database of each backend in turn (``store_database``
in conftest.py); what only one backend has (SQLite's schema, pages and
pacing) is tested in that backend's own file.
"""

from __future__ import annotations

import base64

import msgpack
import pytest

from capture import filters
from capture.flow import Flow, Message, iso_time
from capture.sessiond.store import Conflict, Invalid, NotFound, open_store
from conftest import STORE_BACKENDS, fresh_database

T0 = 1_700_000_000.0
APPLIANCE = "lab-1"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_flow(
    path: str = "/",
    start: float = T0,
    host: str = "example.com",
    method: str = "GET",
    status: int = 200,
    response_body: bytes = b"hello",
    error: str = "",
) -> Flow:
    response = Message(
        headers=((b"Content-Type", b"text/plain; charset=utf-8"),),
        body=response_body,
        size=len(response_body),
    )
    return Flow(
        client="10.0.0.5",
        client_port=50000,
        scheme="https",
        host=host,
        port=443,
        method=method,
        path=path,
        request=Message(headers=((b"Host", host.encode()),), body=b"", size=0),
        status=status,
        reason="OK",
        response=response if status else None,
        start=start,
        request_done=start + 0.01,
        response_start=start + 0.02 if status else None,
        end=start + 0.05,
        error=error,
        server_ip="93.184.216.34",
    )


def wire(**kwargs) -> dict:
    return make_flow(**kwargs).pack()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_database, clock):
    s = open_store(store_database, clock=clock, appliance=APPLIANCE)
    yield s
    s.close()


# schema --------------------------------------------------------------------


def test_persistence_across_reopen(store_database, clock):
    """Sessions, flows, states and the delivery mark survive closing and reopening."""
    s = open_store(store_database, clock=clock)
    a = s.create_session("a", clients=["10.0.0.0/24"])
    b = s.create_session("b")
    s.ingest("proxy-1", [(1, [a["id"], b["id"]], wire(path="/one")), (2, [a["id"]], wire(path="/two"))])
    s.pause(b["id"])
    s.close()

    s = open_store(store_database, clock=clock)
    try:
        assert s.get_session(a["id"]) == a | {"flow_count": 2}
        assert s.get_session(b["id"])["state"] == "paused"
        flows, total = s.list_flows(a["id"])
        assert total == 2
        assert [f["path"] for f in flows] == ["/one", "/two"]
        assert s.last_seq("proxy-1") == 2
        assert s.get_flow(flows[0]["id"])["session_ids"] == [a["id"], b["id"]]
    finally:
        s.close()


# sessions --------------------------------------------------------------------


def test_create_session_shape(store, clock):
    """A new session is capturing, with normalised clients and cookie defaults."""
    session = store.create_session(
        "  phone  ", clients=["10.0.0.5", "192.168.1.7/24", "::1", "10.0.0.5"], filter="~d example.com"
    )
    assert session == {
        "id": session["id"],
        "name": "phone",
        "state": "capturing",
        "created": iso_time(T0),
        "updated": iso_time(T0),
        "stopped": None,
        "clients": ["10.0.0.5", "192.168.1.0/24", "::1"],
        "filter": "~d example.com",
        "capture_responses": True,
        "cookies": {"enabled": False, "domains": []},
        "flow_count": 0,
    }
    assert isinstance(session["id"], int)
    other = store.create_session(
        "b", capture_responses=False, cookies={"enabled": True, "domains": [".Example.COM", "api.test"]}
    )
    assert other["capture_responses"] is False
    assert other["cookies"] == {"enabled": True, "domains": ["example.com", "api.test"]}
    assert [s["id"] for s in store.list_sessions()] == [session["id"], other["id"]]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": None}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "clients": "10.0.0.1"}, "clients"),
        ({"name": "ok", "clients": ["not-an-ip"]}, "clients"),
        ({"name": "ok", "clients": [42]}, "clients"),
        ({"name": "ok", "clients": ["10.0.0.0/33"]}, "clients"),
        ({"name": "ok", "filter": None}, "filter"),
        ({"name": "ok", "capture_responses": "yes"}, "capture_responses"),
        ({"name": "ok", "capture_responses": 1}, "capture_responses"),
        ({"name": "ok", "cookies": []}, "cookies"),
        ({"name": "ok", "cookies": {"enabled": "true"}}, "cookies.enabled"),
        ({"name": "ok", "cookies": {"domains": "example.com"}}, "cookies.domains"),
        ({"name": "ok", "cookies": {"domains": [1]}}, "cookies.domains"),
        ({"name": "ok", "cookies": {"domains": ["bad domain"]}}, "cookies.domains"),
        ({"name": "ok", "cookies": {"domains": ["."]}}, "cookies.domains"),
        ({"name": "ok", "cookies": {"enabled": True, "extra": 1}}, "cookies"),
    ],
)
def test_create_session_invalid(store, kwargs, field):
    """Bad create_session arguments raise Invalid (400) naming the field, and store nothing."""
    with pytest.raises(Invalid) as info:
        store.create_session(**kwargs)
    assert field in str(info.value)
    assert info.value.status == 400
    assert store.list_sessions() == []


def test_name_of_200_chars_accepted(store):
    """The name limit is inclusive."""
    assert store.create_session("x" * 200)["name"] == "x" * 200


def test_unknown_session_not_found(store):
    """Every per-session call answers NotFound (404) for an unknown id."""
    for call in (store.get_session, store.pause, store.resume, store.stop, store.clear, store.delete,
                 store.list_flows, store.iter_flows):
        with pytest.raises(NotFound) as info:
            call(99)
        assert info.value.status == 404
    with pytest.raises(NotFound):
        store.get_flow(99)


def test_non_integer_ids_invalid(store):
    """A session or flow id that is not an integer is Invalid, not a crash."""
    with pytest.raises(Invalid):
        store.get_session("1")
    with pytest.raises(Invalid):
        store.pause(True)
    with pytest.raises(Invalid):
        store.get_flow("1")


def test_allowed_transitions(store, clock):
    """capturing -> paused -> capturing -> stopped, each updating the times."""
    sid = store.create_session("s")["id"]
    clock.now = T0 + 1
    paused = store.pause(sid)
    assert paused["state"] == "paused"
    assert paused["updated"] == iso_time(T0 + 1)
    assert paused["created"] == iso_time(T0)
    assert [s["state"] for s in store.list_sessions()] == ["paused"]
    clock.now = T0 + 2
    resumed = store.resume(sid)
    assert resumed["state"] == "capturing"
    assert [(s["id"], s["state"]) for s in store.list_sessions()] == [(sid, "capturing")]
    clock.now = T0 + 3
    stopped = store.stop(sid)
    assert stopped["state"] == "stopped"
    assert stopped["stopped"] == iso_time(T0 + 3)
    assert store.get_session(sid) == stopped


def test_rename_in_any_state(store, clock):
    """Rename changes the name (trimmed) of a capturing or stopped session and nothing else; a bad name is Invalid."""
    sid = store.create_session("old")["id"]
    clock.now = T0 + 5
    renamed = store.rename(sid, "  new name ")
    assert renamed["name"] == "new name" and renamed["state"] == "capturing"
    assert renamed["updated"] == iso_time(T0 + 5)
    store.stop(sid)
    assert store.rename(sid, "history")["name"] == "history"
    with pytest.raises(Invalid):
        store.rename(sid, "  ")
    with pytest.raises(NotFound):
        store.rename(sid + 99, "x")


def test_stop_from_paused(store):
    """A paused session can be stopped."""
    sid = store.create_session("s")["id"]
    store.pause(sid)
    assert store.stop(sid)["state"] == "stopped"


def test_bad_transitions_conflict(store):
    """Every transition not allowed from the current state is a Conflict (409)."""
    capturing = store.create_session("c")["id"]
    paused = store.create_session("p")["id"]
    store.pause(paused)
    stopped = store.create_session("s")["id"]
    store.stop(stopped)
    bad = [
        (store.resume, capturing),
        (store.pause, paused),
        (store.pause, stopped),
        (store.resume, stopped),
        (store.stop, stopped),
        (store.clear, stopped),
    ]
    for call, sid in bad:
        before = store.get_session(sid)
        with pytest.raises(Conflict) as info:
            call(sid)
        assert info.value.status == 409
        assert store.get_session(sid) == before


def test_list_sessions_in_id_order_with_states(store):
    """Every session is listed, oldest first, each with its state (the rules are the capturing ones)."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    c = store.create_session("c")["id"]
    store.pause(b)
    store.stop(c)
    d = store.create_session("d")["id"]
    assert [(s["id"], s["state"]) for s in store.list_sessions()] == [
        (a, "capturing"), (b, "paused"), (c, "stopped"), (d, "capturing")]


def test_idle_sessions(store, clock):
    """Sessions with no change and no flow since the cutoff are idle; a recent flow or change keeps one."""
    old = store.create_session("old")["id"]
    busy = store.create_session("busy")["id"]
    store.ingest("p", [(1, [busy], wire(start=T0 + 100))])
    clock.now = T0 + 50
    touched = store.create_session("touched")["id"]
    assert store.idle_sessions(T0 + 10) == [old]
    assert store.idle_sessions(T0 + 1000) == [old, busy, touched]
    assert store.idle_sessions(T0) == []


def test_clear_keeps_state_and_shared_flows(store, clock):
    """Clear drops the session's flows and count, keeps its state, and spares flows another session holds."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    store.ingest("p", [(1, [a, b], wire(path="/shared")), (2, [a], wire(path="/only-a"))])
    shared_id = store.list_flows(b)[0][0]["id"]
    only_a_id = [f["id"] for f in store.list_flows(a)[0] if f["path"] == "/only-a"][0]
    store.pause(a)
    clock.now = T0 + 5
    cleared = store.clear(a)
    assert cleared["state"] == "paused"
    assert cleared["flow_count"] == 0
    assert cleared["updated"] == iso_time(T0 + 5)
    assert store.list_flows(a) == ([], 0)
    assert store.get_flow(shared_id)["session_ids"] == [b]
    with pytest.raises(NotFound):
        store.get_flow(only_a_id)
    assert store.list_flows(b)[1] == 1
    # A cleared session keeps capturing new flows.
    store.resume(a)
    store.ingest("p", [(3, [a], wire(path="/after"))])
    assert [f["path"] for f in store.list_flows(a)[0]] == ["/after"]
    assert store.get_session(a)["flow_count"] == 1


def test_delete(store):
    """Delete removes a session in any state and its unshared flows; ids are not reused."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    store.ingest("p", [(1, [a, b], wire(path="/shared")), (2, [a], wire(path="/only-a"))])
    flows = {f["path"]: f["id"] for f in store.list_flows(a)[0]}
    store.stop(a)
    assert store.delete(a) is None
    with pytest.raises(NotFound):
        store.get_session(a)
    with pytest.raises(NotFound):
        store.get_flow(flows["/only-a"])
    assert store.get_flow(flows["/shared"])["session_ids"] == [b]
    assert [s["id"] for s in store.list_sessions()] == [b]
    store.delete(b)
    with pytest.raises(NotFound):
        store.get_flow(flows["/shared"])
    c = store.create_session("c")["id"]
    assert c > b
    store.ingest("p", [(3, [c], wire())])
    assert store.list_flows(c)[0][0]["id"] > max(flows.values())


# ingest ----------------------------------------------------------------------


def test_ingest_deduplicates_resent_batch(store):
    """The same instance and seq twice stores the flow once, with the right count."""
    sid = store.create_session("s")["id"]
    batch = [(1, [sid], wire(path="/a")), (2, [sid], wire(path="/b"))]
    assert store.ingest("proxy-1", batch) == 2
    assert store.ingest("proxy-1", batch) == 2
    # A resend overlapping old and new items stores only the new ones.
    assert store.ingest("proxy-1", batch + [(3, [sid], wire(path="/c"))]) == 3
    assert store.last_seq("proxy-1") == 3
    flows, total = store.list_flows(sid)
    assert total == 3
    assert [f["path"] for f in flows] == ["/a", "/b", "/c"]
    assert store.get_session(sid)["flow_count"] == 3


def test_ingest_offers_the_cpu_between_flows(store_database, clock):
    """Either backend calls its pacer at least once per flow of a batch, and stores the batch whole."""
    calls = []
    s = open_store(store_database, clock=clock, pace=lambda: calls.append(1))
    try:
        sid = s.create_session("s")["id"]
        calls.clear()
        assert s.ingest("p", [(seq, [sid], wire(path=f"/{seq}")) for seq in range(1, 41)]) == 40
        assert len(calls) >= 40
        assert s.list_flows(sid, limit=100)[1] == 40
    finally:
        s.close()


def test_ingest_keeps_instances_apart(store):
    """Sequence numbers are per instance: a new proxy instance starting at 1 is not a resend."""
    sid = store.create_session("s")["id"]
    assert store.ingest("old", [(1, [sid], wire(path="/1")), (2, [sid], wire(path="/2"))]) == 2
    assert store.ingest("new", [(1, [sid], wire(path="/new"))]) == 1
    assert store.last_seq("old") == 2
    assert store.last_seq("new") == 1
    assert store.last_seq("never") == 0
    assert store.list_flows(sid)[1] == 3


def test_ingest_empty_batch(store):
    """An empty batch returns the current mark and changes nothing."""
    assert store.ingest("p", []) == 0
    store.create_session("s")
    store.ingest("p", [(5, [1], wire())])
    assert store.ingest("p", []) == 5


def test_malformed_flows_rejected(store):
    """Undecodable flows are skipped and counted in rejected; the rest of the batch is stored."""
    sid = store.create_session("s")["id"]

    def spoiled(field: str, value) -> bytes:
        fields = list(msgpack.unpackb(wire(), raw=False))
        fields[1 + Flow._fields.index(field)] = value
        return msgpack.packb(fields, use_bin_type=True)

    bad_time = spoiled("start", float("nan"))
    huge = spoiled("port", 2**63)
    batch = [
        (1, [sid], msgpack.packb({"v": 99})),
        (2, [sid], "not bytes"),
        (3, [sid], spoiled("host", None)),
        (4, [sid], bad_time),
        (5, [sid], huge),
        (6, "not a list", wire()),
        (7, [sid], wire(path="/good")),
        ("eight", [sid], wire()),
        (9,),
    ]
    assert store.ingest("p", batch) == 7
    assert store.rejected == 8
    flows, total = store.list_flows(sid)
    assert total == 1
    assert flows[0]["path"] == "/good"
    assert store.get_session(sid)["flow_count"] == 1


def test_ingest_bad_arguments(store):
    """A missing instance or a batch that is not a list is Invalid."""
    with pytest.raises(Invalid):
        store.ingest("", [])
    with pytest.raises(Invalid):
        store.ingest(None, [])
    with pytest.raises(Invalid):
        store.ingest("p", "batch")


# listing -------------------------------------------------------------------


def test_list_flows_oldest_first_paged(store):
    """Flows come back by time then id, whatever the ingest order, paged with the full total."""
    sid = store.create_session("s")["id"]
    starts = [T0 + 5, T0 + 1, T0 + 3, T0 + 1, T0 + 4, T0 + 2]
    store.ingest("p", [(i + 1, [sid], wire(path=f"/{i}", start=t)) for i, t in enumerate(starts)])
    flows, total = store.list_flows(sid)
    assert total == 6
    assert [f["path"] for f in flows] == ["/1", "/3", "/5", "/2", "/4", "/0"]
    ids = [f["id"] for f in flows]
    assert ids[0] < ids[1]  # same time: lower id first
    page, total = store.list_flows(sid, limit=2, offset=2)
    assert total == 6
    assert [f["path"] for f in page] == ["/5", "/2"]
    assert store.list_flows(sid, limit=10, offset=5)[0][0]["path"] == "/0"
    assert store.list_flows(sid, offset=6) == ([], 6)


def test_list_flows_summary_matches_flow_summary(store):
    """Summaries built from columns equal Flow.summary() plus id and appliance, including None for no status and no error."""
    sid = store.create_session("s")["id"]
    ok = make_flow(path="/ok?q=1")
    failed = make_flow(path="/failed", start=T0 + 1, status=0, error="connection refused")
    store.ingest("p", [(1, [sid], ok.pack()), (2, [sid], failed.pack())])
    flows, _ = store.list_flows(sid)
    assert flows[0] == {"id": flows[0]["id"], **ok.summary(), "appliance": APPLIANCE}
    assert flows[1] == {"id": flows[1]["id"], **failed.summary(), "appliance": APPLIANCE}
    assert flows[1]["status"] is None
    assert flows[0]["error"] is None
    assert flows[1]["error"] == "connection refused"
    assert list(flows[0]) == ["id", *ok.summary(), "appliance"]
    # The predicate path gives the same shape.
    assert store.list_flows(sid, predicate=lambda f: True) == (flows, 2)


def test_list_flows_predicate(store):
    """With a predicate, only matching flows are listed and counted, still oldest first and paged."""
    sid = store.create_session("s")["id"]
    other = store.create_session("other")["id"]
    batch = [
        (i + 1, [sid], wire(path=f"/{i}", host="a.test" if i % 2 else "b.test", start=T0 + 10 - i))
        for i in range(10)
    ]
    batch.append((11, [other], wire(host="a.test")))
    store.ingest("p", batch)
    is_a = lambda flow: flow.host == "a.test"  # noqa: E731
    flows, total = store.list_flows(sid, predicate=is_a)
    assert total == 5
    assert [f["path"] for f in flows] == ["/9", "/7", "/5", "/3", "/1"]
    page, total = store.list_flows(sid, limit=2, offset=1, predicate=is_a)
    assert total == 5
    assert [f["path"] for f in page] == ["/7", "/5"]
    assert store.list_flows(sid, predicate=lambda f: False) == ([], 0)


def test_iter_flows_crosses_chunks(store):
    """iter_flows yields every flow of a session in order, across read chunks."""
    sid = store.create_session("s")["id"]
    n = 1234
    store.ingest("p", [(i + 1, [sid], wire(path=f"/{i}", start=T0 + (i % 7))) for i in range(n)])
    seen = list(store.iter_flows(sid))
    assert len(seen) == n
    keys = [(flow.start, flow_id) for flow_id, flow in seen]
    assert keys == sorted(keys)
    assert len({flow_id for flow_id, _ in seen}) == n


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": 1001}, {"limit": "10"}, {"offset": -1}, {"offset": 1.5}],
)
def test_list_flows_invalid_paging(store, kwargs):
    """limit outside 1..1000 or a negative or non-integer offset is Invalid."""
    sid = store.create_session("s")["id"]
    with pytest.raises(Invalid):
        store.list_flows(sid, **kwargs)


def test_list_flows_limits_inclusive(store):
    """limit 1 and 1000 are accepted."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [(1, [sid], wire()), (2, [sid], wire())])
    assert len(store.list_flows(sid, limit=1)[0]) == 1
    assert len(store.list_flows(sid, limit=1000)[0]) == 2


# get_flow --------------------------------------------------------------------


def test_get_flow_detail(store):
    """get_flow returns id, session_ids, Flow.detail() and the appliance, binary bodies as base64."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    binary = bytes(range(256))
    flow = make_flow(path="/img", response_body=binary)
    store.ingest("p", [(1, [b, a], flow.pack())])
    flow_id = store.list_flows(a)[0][0]["id"]
    detail = store.get_flow(flow_id)
    assert detail == {"id": flow_id, "session_ids": [a, b], **flow.detail(), "appliance": APPLIANCE}
    assert detail["response"]["body_encoding"] == "base64"
    assert base64.b64decode(detail["response"]["body"]) == binary
    assert detail["response"]["headers"] == [["Content-Type", "text/plain; charset=utf-8"]]
    assert detail["request"]["body_encoding"] == "utf-8"
    assert detail["timings"]["start"] == iso_time(T0)


# filters, sorting and statistics -----------------------------------------------


def test_list_flows_filter_pushed_down(store):
    """A filter expression selects, pages and counts in the store; parsed trees work too."""
    sid = store.create_session("s")["id"]
    batch = [
        (i + 1, [sid], wire(path=f"/{i}", start=T0 + i, method="POST" if i % 3 == 0 else "GET"))
        for i in range(10)
    ]
    store.ingest("p", batch)
    flows, total = store.list_flows(sid, filter="~m POST")
    assert total == 4
    assert [f["path"] for f in flows] == ["/0", "/3", "/6", "/9"]
    page, total = store.list_flows(sid, filter="~m POST", limit=2, offset=1)
    assert ([f["path"] for f in page], total) == (["/3", "/6"], 4)
    # Past the end of the matches, the total is still counted.
    assert store.list_flows(sid, filter="~m POST", offset=10) == ([], 4)
    assert store.list_flows(sid, filter="~m POST & ~b nomatch") == ([], 0)
    assert store.list_flows(sid, filter="") == store.list_flows(sid)


def test_list_flows_filter_and_predicate_combine(store):
    """A predicate is applied on top of the filter."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [(i + 1, [sid], wire(path=f"/{i}", start=T0 + i, status=200 + i)) for i in range(6)])
    flows, total = store.list_flows(sid, filter="!~c 201", predicate=lambda f: f.status % 2 == 0)
    assert total == 3
    assert [f["status"] for f in flows] == [200, 202, 204]


@pytest.mark.parametrize("expression", ["~q ~", "~m (", "(~s", "~c x", "~nope", "~u '['"])
def test_list_flows_bad_filter_names_position(store, expression):
    """A filter that does not parse is Invalid (400), the message naming the position."""
    sid = store.create_session("s")["id"]
    with pytest.raises(Invalid) as info:
        store.list_flows(sid, filter=expression)
    assert info.value.status == 400
    assert str(info.value).startswith("bad filter:")
    assert "at position" in str(info.value)
    with pytest.raises(Invalid):
        list(store.iter_flows(sid, filter=expression))
    with pytest.raises(Invalid):
        store.list_flows(sid, filter=42)


@pytest.mark.parametrize(
    "kwargs", [{"sort": "colour"}, {"sort": "TIME"}, {"sort": None}, {"order": "up"}, {"order": "DESC"}]
)
def test_list_flows_invalid_sort(store, kwargs):
    """A sort other than the listing's columns (query.SORTS), or an order other than asc/desc, is Invalid."""
    sid = store.create_session("s")["id"]
    with pytest.raises(Invalid) as info:
        store.list_flows(sid, **kwargs)
    assert info.value.status == 400
    assert ("sort" if "sort" in kwargs else "order") in str(info.value)


def _sorted_flows() -> list[Flow]:
    """Flows whose status, duration and sizes are in different orders, with ties."""
    flows = []
    specs = [  # start offset, status, duration s (None: unfinished), response body, request size
        (0, 404, 0.3, b"x" * 30, 5),
        (1, 200, 0.1, b"x" * 10, 50),
        (2, 200, None, b"x" * 30, 0),
        (3, 500, 0.2, b"", 7),
        (4, 0, 0.1, b"", 50),
        (5, 404, 0.4, b"x" * 20, 1),
    ]
    for offset, status, duration, body, request_size in specs:
        flow = make_flow(path=f"/{offset}", start=T0 + offset, status=status, response_body=body)
        flows.append(
            flow._replace(
                end=None if duration is None else T0 + offset + duration,
                request=Message(headers=flow.request.headers, size=request_size),
            )
        )
    return flows


@pytest.mark.parametrize("sort", ["time", "status", "duration", "size", "request_size"])
@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("expression", ["", "~http", "~b '.*' | ~e"])
def test_list_flows_sort_and_order(store, sort, order, expression):
    """Each sort orders by its key, then time and id; desc is the exact reverse; SQL and residual paths agree."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [(i + 1, [sid], flow.pack()) for i, flow in enumerate(_sorted_flows())])
    listed, total = store.list_flows(sid, sort=sort, order=order, filter=expression)
    assert total == 6
    field = {"time": None, "status": "status", "duration": "duration_ms", "size": "response_size",
             "request_size": "request_size"}[sort]

    def key(summary):
        value = summary[field] if field else 0
        if field == "status":
            value = value or 0
        # SQLite puts NULL (an unfinished flow's duration) first ascending.
        return (value is not None, value or 0, summary["time"], summary["id"])

    expected = sorted(listed, key=key, reverse=order == "desc")
    assert listed == expected
    assert len({f["id"] for f in listed}) == 6
    paths = [f["path"] for f in listed]
    if sort == "status" and order == "asc":
        assert paths == ["/4", "/1", "/2", "/0", "/5", "/3"]
    if sort == "duration" and order == "desc":
        assert paths == ["/5", "/0", "/3", "/4", "/1", "/2"]
    page, _ = store.list_flows(sid, sort=sort, order=order, filter=expression, limit=2, offset=3)
    assert page == listed[3:5]


def test_iter_flows_filter(store):
    """iter_flows takes the same filter, across read chunks, oldest first."""
    sid = store.create_session("s")["id"]
    store.ingest("p", [(i + 1, [sid], wire(path=f"/{i}", start=T0 + i % 5, host=f"h{i % 3}.test"))
                       for i in range(1200)])
    seen = list(store.iter_flows(sid, filter="~d h1 & ~b hello"))
    assert len(seen) == 400
    assert all(flow.host == "h1.test" for _, flow in seen)
    keys = [(flow.start, flow_id) for flow_id, flow in seen]
    assert keys == sorted(keys)


def test_load_flow(store):
    """load_flow returns the stored Flow itself; NotFound and Invalid as for get_flow."""
    sid = store.create_session("s")["id"]
    flow = make_flow(path="/x")
    store.ingest("p", [(1, [sid], flow.pack())])
    flow_id = store.list_flows(sid)[0][0]["id"]
    assert store.load_flow(flow_id) == flow
    with pytest.raises(NotFound):
        store.load_flow(flow_id + 1)
    with pytest.raises(Invalid):
        store.load_flow("1")


def test_stats(store):
    """stats counts and sums overall and per method, host, status class, content type and client."""
    sid = store.create_session("s")["id"]
    other = store.create_session("other")["id"]
    empty = store.create_session("empty")["id"]

    def flow(n, start, method="GET", host="example.com", status=200, body=b"abc", content_type=b"text/html",
             client="10.0.0.5", error="", end=0.5, request_body=b""):
        base = make_flow(path=f"/{n}", start=T0 + start, host=host, method=method, status=status,
                         response_body=body, error=error)
        response = None
        if status:
            response = Message(headers=((b"Content-Type", content_type),), body=body, size=len(body))
        return base._replace(
            client=client, response=response, end=None if end is None else T0 + start + end,
            request=Message(body=request_body, size=len(request_body)),
        )

    flows = [
        flow(1, 0.0, body=b"x" * 100),
        flow(2, 1.0, method="POST", request_body=b"r" * 40, status=201, content_type=b"application/json"),
        flow(3, 2.0, host="API.test", status=404, body=b"", content_type=b"Application/JSON"),
        flow(4, 3.0, host="api.test", status=0, body=b"", error="connection refused", end=0.25),
        flow(5, 4.0, status=0, body=b"", end=None, client="10.0.0.6"),
        flow(6, 10.0, status=502, body=b"y" * 10, content_type=b"text/html", client="10.0.0.6"),
        flow(7, 5.0, status=101, body=b""),
        flow(8, 6.0, status=999, body=b""),
    ]
    store.ingest("p", [(i + 1, [sid], f.pack()) for i, f in enumerate(flows)])
    store.ingest("p", [(100, [other], flow(9, 20.0, method="DELETE").pack())])
    stats = store.stats(sid)
    assert {k: v for k, v in stats.items() if not k.startswith("by_")} == {
        "session_id": sid,
        "flows": 8,
        "request_bytes": 40,
        "response_bytes": 100 + 3 + 10,
        "first": iso_time(T0),
        "last": iso_time(T0 + 10.0),
        "duration_ms": 500.0 * 6 + 250.0,
        "span_ms": 10000.0,
    }

    def group(key, count, sent=0, received=0):
        return {"key": key, "count": count, "request_bytes": sent, "response_bytes": received}

    assert stats["by_method"] == [group("GET", 7, 0, 110), group("POST", 1, 40, 3)]
    assert stats["by_host"] == [group("example.com", 6, 40, 113), group("api.test", 2, 0, 0)]
    assert stats["by_status_class"] == [
        group("2xx", 2, 40, 103),
        group("1xx", 1),
        group("4xx", 1),
        group("5xx", 1, 0, 10),
        group("error", 1),
        group("none", 1),
        group("other", 1),
    ]
    assert stats["by_content_type"] == [
        group("text/html", 4, 0, 110),
        group("", 2),
        group("application/json", 2, 40, 3),
    ]
    assert stats["by_client"] == [group("10.0.0.5", 6, 40, 103), group("10.0.0.6", 2, 0, 10)]
    assert store.stats(empty) == {
        "session_id": empty, "flows": 0, "request_bytes": 0, "response_bytes": 0, "first": None,
        "last": None, "duration_ms": 0.0, "span_ms": None, "by_method": [], "by_host": [],
        "by_status_class": [], "by_content_type": [], "by_client": [],
    }
    with pytest.raises(NotFound):
        store.stats(999)
    with pytest.raises(Invalid):
        store.stats("1")


# schema migration --------------------------------------------------------------


# a large session ---------------------------------------------------------------

LARGE = 100_000


def _large_wire(i: int, rnd) -> dict:
    """A flow in the version 1 map form (read for compatibility), quicker to build in bulk."""
    status = rnd.choice((200, 200, 200, 201, 304, 404, 500, 0))
    start = T0 + i * 0.01 + rnd.choice((0.0, 0.0, 0.015))  # some out of ingest order
    response = None
    if status:
        size = rnd.randrange(0, 5000)
        response = {"headers": [[b"Content-Type", rnd.choice((b"application/json", b"text/html"))]],
                    "body": b"", "size": size, "truncated": size > 0}
    return {
        "v": 1, "kind": "http", "client": f"10.0.0.{rnd.randrange(1, 20)}", "client_port": 40000 + i % 20000,
        "scheme": "https", "host": rnd.choice(("example.com", "api.example.com", "cdn.test", "other.test")),
        "port": 443, "method": rnd.choice(("GET", "GET", "GET", "POST", "PUT")),
        "path": rnd.choice(("/api/items/", "/static/", "/v2/")) + str(i), "http_version": "1.1",
        "request": {"headers": [], "body": b"", "size": rnd.randrange(0, 300), "truncated": False},
        "status": status, "reason": "", "response": response, "start": start,
        "request_done": None, "response_start": None,
        "end": start + rnd.randrange(1, 2000) / 1000 if rnd.random() < 0.95 else None,
        "error": "" if status else "connection reset", "server_ip": "",
    }


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def large(request, tmp_path_factory):
    """One session of 100,000 flows (summaries only), and the flows themselves by id."""
    import random

    s = open_store(fresh_database(request.param, tmp_path_factory.mktemp("large"), request))
    sid = s.create_session("large")["id"]
    rnd = random.Random(7)
    wires = [msgpack.packb(_large_wire(i, rnd), use_bin_type=True) for i in range(LARGE)]
    for first in range(0, LARGE, 10_000):
        s.ingest("p", [(i + 1, [sid], wires[i]) for i in range(first, first + 10_000)])
    # Ids are given in ingest order, from 1.
    flows = [(i + 1, Flow.unpack(w)) for i, w in enumerate(wires)]
    yield s, sid, flows
    s.close()


@pytest.mark.parametrize(
    "expression, sort, order",
    [
        ("", "time", "asc"),
        ("", "time", "desc"),
        ("~m POST", "time", "asc"),
        ("~d example", "time", "asc"),
        ("~c 404", "time", "asc"),
        ("~src 10.0.0.5", "time", "asc"),
        ("~u /api/", "time", "desc"),
        ("~m POST & ~d api & !~c 500", "size", "desc"),
        ("", "status", "asc"),
        ("", "duration", "desc"),
        ("", "size", "desc"),
        ("~q | ~e", "request_size", "asc"),
    ],
)
def test_large_session_queries(large, expression, sort, order):
    """Over 100,000 flows the listed queries give the right first and later pages and totals."""
    s, sid, flows = large
    tree = filters.parse(expression)
    matching = [(flow_id, flow) for flow_id, flow in flows if tree(flow)]
    value = {
        "time": lambda f: 0,
        "status": lambda f: f.status,
        "duration": lambda f: (f.duration_ms is not None, f.duration_ms or 0),
        "size": lambda f: f.response.size if f.response else 0,
        "request_size": lambda f: f.request.size,
    }[sort]
    matching.sort(key=lambda item: (value(item[1]), item[1].start, item[0]), reverse=order == "desc")
    expected = [flow_id for flow_id, _ in matching]
    page, total = s.list_flows(sid, filter=expression, sort=sort, order=order, limit=100)
    assert total == len(expected)
    assert [f["id"] for f in page] == expected[:100]
    offset = len(expected) // 2
    page, total = s.list_flows(sid, filter=expression, sort=sort, order=order, limit=1000, offset=offset)
    assert [f["id"] for f in page] == expected[offset : offset + 1000]


def test_large_session_stats(large):
    """stats over 100,000 flows agrees with counting them in Python."""
    s, sid, flows = large
    stats = s.stats(sid)
    assert stats["flows"] == LARGE
    assert stats["request_bytes"] == sum(f.request.size for _, f in flows)
    assert stats["response_bytes"] == sum(f.response.size for _, f in flows if f.response)
    methods = {}
    for _, f in flows:
        methods[f.method] = methods.get(f.method, 0) + 1
    assert {g["key"]: g["count"] for g in stats["by_method"]} == methods
    assert [g["count"] for g in stats["by_host"]] == sorted((g["count"] for g in stats["by_host"]), reverse=True)
    assert sum(g["count"] for g in stats["by_status_class"]) == LARGE
