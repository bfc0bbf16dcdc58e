"""Tests for capture.sessiond.store: sessions, flows, de-duplication, schema."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat

import pytest

from capture.flow import Flow, Message, iso_time
from capture.sessiond.store import (
    SCHEMA_VERSION,
    Conflict,
    Invalid,
    NotFound,
    Store,
    StoreError,
)

T0 = 1_700_000_000.0


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
    return make_flow(**kwargs).to_wire()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = Store(str(tmp_path / "db" / "capture.sqlite"), clock=clock)
    yield s
    s.close()


# schema --------------------------------------------------------------------


def test_schema_created_with_wal_and_version(tmp_path):
    """A new store creates its directory, uses WAL, and records schema version 1."""
    path = tmp_path / "nested" / "dir" / "capture.sqlite"
    Store(str(path)).close()
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 1
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sessions", "flows", "session_flows", "delivered", "schema_version"} <= tables
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"flows_host", "flows_status", "flows_method", "flows_client", "flows_time"} <= indexes
    finally:
        db.close()


def test_reopen_does_not_migrate_again(tmp_path):
    """Opening an existing store keeps one version row."""
    path = str(tmp_path / "capture.sqlite")
    Store(path).close()
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.close()


def test_newer_schema_refused(tmp_path):
    """A database from a newer version is refused with a clear message."""
    path = str(tmp_path / "capture.sqlite")
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 7")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 7 is newer"):
        Store(path)


def test_persistence_across_reopen(tmp_path, clock):
    """Sessions, flows, states and the delivery mark survive closing and reopening."""
    path = str(tmp_path / "capture.sqlite")
    s = Store(path, clock=clock)
    a = s.create_session("a", clients=["10.0.0.0/24"])
    b = s.create_session("b")
    s.ingest("proxy-1", [(1, [a["id"], b["id"]], wire(path="/one")), (2, [a["id"]], wire(path="/two"))])
    s.pause(b["id"])
    s.close()

    s = Store(path, clock=clock)
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
    assert store.capturing_sessions() == []
    clock.now = T0 + 2
    resumed = store.resume(sid)
    assert resumed["state"] == "capturing"
    assert [s["id"] for s in store.capturing_sessions()] == [sid]
    clock.now = T0 + 3
    stopped = store.stop(sid)
    assert stopped["state"] == "stopped"
    assert stopped["stopped"] == iso_time(T0 + 3)
    assert store.get_session(sid) == stopped


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


def test_capturing_sessions(store):
    """Only capturing sessions are pushed to the proxy as rules, by id."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    c = store.create_session("c")["id"]
    store.pause(b)
    store.stop(c)
    d = store.create_session("d")["id"]
    assert [s["id"] for s in store.capturing_sessions()] == [a, d]


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


def test_flow_for_two_sessions_stored_once(store, tmp_path):
    """A flow matching two sessions is one row, listed in both."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    store.ingest("p", [(1, [a, b, a], wire(path="/both"))])
    (fa,), _ = store.list_flows(a)
    (fb,), _ = store.list_flows(b)
    assert fa == fb
    assert store.get_flow(fa["id"])["session_ids"] == [a, b]
    assert store.get_session(a)["flow_count"] == 1
    assert store.get_session(b)["flow_count"] == 1
    db = sqlite3.connect(str(tmp_path / "db" / "capture.sqlite"))
    assert db.execute("SELECT count(*) FROM flows").fetchone() == (1,)
    db.close()


def test_unknown_session_ids_ignored(store, tmp_path):
    """Links to unknown or deleted sessions are dropped; a flow with no session left is not stored."""
    a = store.create_session("a")["id"]
    gone = store.create_session("gone")["id"]
    store.delete(gone)
    assert store.ingest("p", [(1, [a, gone, 999], wire(path="/a")), (2, [gone, 999], wire(path="/x"))]) == 2
    (flow,), total = store.list_flows(a)
    assert total == 1
    assert store.get_flow(flow["id"])["session_ids"] == [a]
    db = sqlite3.connect(str(tmp_path / "db" / "capture.sqlite"))
    assert db.execute("SELECT count(*) FROM flows").fetchone() == (1,)
    db.close()


def test_malformed_flows_rejected(store):
    """Undecodable flows are skipped and counted in rejected; the rest of the batch is stored."""
    sid = store.create_session("s")["id"]
    missing = wire()
    del missing["host"]
    bad_time = wire()
    bad_time["start"] = float("nan")
    huge = wire()
    huge["port"] = 2**70
    batch = [
        (1, [sid], {"v": 99}),
        (2, [sid], "not a dict"),
        (3, [sid], missing),
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
    """Summaries built from columns equal Flow.summary() plus id, including None for no status and no error."""
    sid = store.create_session("s")["id"]
    ok = make_flow(path="/ok?q=1")
    failed = make_flow(path="/failed", start=T0 + 1, status=0, error="connection refused")
    store.ingest("p", [(1, [sid], ok.to_wire()), (2, [sid], failed.to_wire())])
    flows, _ = store.list_flows(sid)
    assert flows[0] == {"id": flows[0]["id"], **ok.summary()}
    assert flows[1] == {"id": flows[1]["id"], **failed.summary()}
    assert flows[1]["status"] is None
    assert flows[0]["error"] is None
    assert flows[1]["error"] == "connection refused"
    assert list(flows[0]) == ["id", *ok.summary()]
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
    """get_flow returns id, session_ids and Flow.detail(), binary bodies as base64."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    binary = bytes(range(256))
    flow = make_flow(path="/img", response_body=binary)
    store.ingest("p", [(1, [b, a], flow.to_wire())])
    flow_id = store.list_flows(a)[0][0]["id"]
    detail = store.get_flow(flow_id)
    assert detail == {"id": flow_id, "session_ids": [a, b], **flow.detail()}
    assert detail["response"]["body_encoding"] == "base64"
    assert base64.b64decode(detail["response"]["body"]) == binary
    assert detail["response"]["headers"] == [["Content-Type", "text/plain; charset=utf-8"]]
    assert detail["request"]["body_encoding"] == "utf-8"
    assert detail["timings"]["start"] == iso_time(T0)
