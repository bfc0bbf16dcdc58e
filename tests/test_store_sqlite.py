"""SQLite's own side of the store: schema, WAL, page size, migrations, pacing, one row per flow."""

from __future__ import annotations

import os
import sqlite3
import stat

import msgpack
import pytest

from capture.flow import Message, pack_fields
from capture.messages import WebSocketMessage
from capture.sessiond.store import SQLiteStore as Store
from capture.sessiond.store import StoreError, Unavailable
from capture.sessiond.store.sqlite import SCHEMA_VERSION
from test_store import T0, clock, make_flow, store, wire  # noqa: F401  (fixtures)


@pytest.fixture
def store_database(tmp_path):
    """The SQLite file the ``store`` fixture opens: these tests read it directly."""
    return str(tmp_path / "db" / "capture.sqlite")


def test_schema_created_with_wal_and_version(tmp_path):
    """A new store creates its directory, uses WAL, and records the current schema version."""
    path = tmp_path / "nested" / "dir" / "capture.sqlite"
    Store(str(path)).close()
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 6
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sessions", "flows", "flow_records", "session_flows", "delivered", "schema_version",
                "websockets", "websocket_messages"} <= tables
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"session_flows_flow", "sessions_state", "websockets_open"} <= indexes
        assert not {"flows_host", "flows_status", "flows_method", "flows_client", "flows_time"} & indexes
    finally:
        db.close()


def test_new_store_uses_large_pages_and_an_old_one_keeps_its_own(tmp_path):
    """16 KiB pages for a new database; one made with SQLite's 4 KiB default opens and stores as it is."""
    fresh = tmp_path / "fresh.sqlite"
    Store(str(fresh)).close()
    old = tmp_path / "old.sqlite"
    Store(str(old)).close()
    db = sqlite3.connect(old)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA page_size=4096")
    db.execute("VACUUM")
    db.close()
    with Store(str(old)) as store:
        session = store.create_session("old pages")
        store.ingest("i", [(1, [session["id"]], wire())])
        assert store.get_session(session["id"])["flow_count"] == 1
    for path, size in ((fresh, 16384), (old, 4096)):
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA page_size").fetchone()[0] == size
        finally:
            db.close()


def test_reopen_does_not_migrate_again(tmp_path):
    """Opening an existing store keeps one version row."""
    path = str(tmp_path / "capture.sqlite")
    Store(path).close()
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
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


class CountingPace:
    """A pacer that counts its calls and notes whether a transaction was open."""

    def __init__(self, fail_at: int = 0) -> None:
        self.calls = 0
        self.in_transaction = 0
        self.fail_at = fail_at
        self.db = None

    def __call__(self) -> None:
        self.calls += 1
        if self.db is not None and self.db.in_transaction:
            self.in_transaction += 1
        if self.calls == self.fail_at:
            raise sqlite3.OperationalError("disk I/O error (injected)")


def test_ingest_paces_a_big_batch_within_one_transaction(tmp_path):
    """A batch larger than one round of inserts is paced per flow and stored whole, in order."""
    pace = CountingPace()
    with Store(str(tmp_path / "s.db"), pace=pace) as s:
        pace.db = s._db
        sid = s.create_session("s")["id"]
        good = [seq for seq in range(1, 52) if seq != 11]
        batch = [(seq, [sid], wire(path=f"/{seq}", start=T0 + seq)) for seq in good]
        batch.insert(10, (11, [sid], b"not a flow"))  # a bad item among them
        pace.calls = pace.in_transaction = 0
        assert s.ingest("p", batch) == 51
        assert pace.calls >= 51 and pace.in_transaction >= 51
        assert s.rejected == 1
        flows, total = s.list_flows(sid, limit=100)
        assert total == 50
        assert [f["path"] for f in flows] == [f"/{seq}" for seq in good]
        assert [f["id"] for f in flows] == list(range(flows[0]["id"], flows[0]["id"] + 50))
        assert s.get_session(sid)["flow_count"] == 50


def test_ingest_failing_between_rounds_of_inserts_stores_nothing(tmp_path):
    """The rounds of inserts are one transaction: a failure after some rounds keeps none of them."""
    path = str(tmp_path / "s.db")
    with Store(path) as s:
        sid = s.create_session("s")["id"]
    pace = CountingPace()
    with Store(path, pace=pace) as s:
        batch = [(seq, [sid], wire(path=f"/{seq}")) for seq in range(1, 41)]
        pace.calls, pace.fail_at = 0, 30  # after three rounds of 8 inserts
        with pytest.raises(Unavailable):
            s.ingest("p", batch)
        assert s.list_flows(sid)[1] == 0
        assert s.last_seq("p") == 0
        assert s.get_session(sid)["flow_count"] == 0
        pace.fail_at = 0
        assert s.ingest("p", batch) == 40
        assert s.list_flows(sid)[1] == 40


def test_a_long_statement_paces_itself(tmp_path):
    """Statistics run in SQL alone, and the pacer is still called from inside the statement."""
    pace = CountingPace()
    with Store(str(tmp_path / "s.db"), pace=pace) as s:
        sid = s.create_session("s")["id"]
        s.ingest("p", [(seq, [sid], wire(path=f"/{seq}", host=f"h{seq % 50}.example"))
                       for seq in range(1, 3001)])
        before = pace.calls
        assert s.stats(sid)["flows"] == 3000
        assert pace.calls > before


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


def test_clear_removes_records(store, tmp_path):
    """Clearing and deleting remove the records of flows no session holds, and only those."""
    a = store.create_session("a")["id"]
    b = store.create_session("b")["id"]
    store.ingest("p", [(1, [a, b], wire(path="/shared")), (2, [a], wire(path="/only-a"))])
    store.clear(a)
    db = sqlite3.connect(str(tmp_path / "db" / "capture.sqlite"))
    try:
        assert db.execute("SELECT count(*) FROM flows").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM flow_records").fetchone() == (1,)
        store.delete(b)
        assert db.execute("SELECT count(*) FROM flow_records").fetchone() == (0,)
    finally:
        db.close()


def test_migration_from_version_1(tmp_path):
    """A version 1 store is migrated: flows and links kept, records moved, new columns filled, ids not reused."""
    from capture.sessiond.store import rows, sqlite as store_module

    path = str(tmp_path / "capture.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    for statement in store_module._SCHEMA_V1:
        db.execute(statement)
    db.execute(
        "INSERT INTO sessions (name, state, created, updated, stopped, clients, filter, capture_responses,"
        " cookies_enabled, cookie_domains, flow_count)"
        " VALUES ('old', 'capturing', ?, ?, NULL, '[]', '', 1, 0, '[]', 2)",
        (T0, T0),
    )
    with_response = make_flow(path="/ok")
    with_response = with_response._replace(
        request=Message(headers=((b"Content-Type", b"application/json"),), body=b"{}", size=2)
    )
    without = make_flow(path="/failed", start=T0 + 1, status=0, error="refused")
    for flow_id, flow in [(1, with_response), (3, without)]:
        columns, record = rows.flow_row(flow), flow.pack()
        db.execute(
            "INSERT INTO flows (id, time, client, client_port, method, scheme, host, port, path, url, status,"
            " request_size, response_size, content_type, duration_ms, error, kind, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (flow_id, *columns[:16], record),
        )
        db.execute("INSERT INTO session_flows (session_id, time, flow_id) VALUES (1, ?, ?)", (flow.start, flow_id))
    db.execute("UPDATE sqlite_sequence SET seq = 7 WHERE name = 'flows'")  # flows up to 7 were deleted
    db.close()

    with Store(path) as s:
        flows, total = s.list_flows(1)
        assert total == 2
        # Flows from before version 4 name no appliance.
        assert flows == [{"id": 1, **with_response.summary(), "appliance": None},
                         {"id": 3, **without.summary(), "appliance": None}]
        assert s.get_flow(3)["error"] == "refused"
        assert [f["id"] for f in s.list_flows(1, filter="~s")[0]] == [1]
        assert [f["id"] for f in s.list_flows(1, filter="~q")[0]] == [3]
        assert [f["id"] for f in s.list_flows(1, filter="~tq json")[0]] == [1]
        assert [f["id"] for f in s.list_flows(1, filter="~ts text/plain")[0]] == [1]
        s.ingest("p", [(1, [1], wire(path="/new", start=T0 + 2))])
        assert s.list_flows(1)[0][-1]["id"] == 8
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {name for (name,) in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "flows_v1" not in tables
        columns = [row[1] for row in check.execute("PRAGMA table_info(flows)")]
        assert "record" not in columns
    finally:
        check.close()




def test_migration_to_version_6_keeps_open_sockets_closable(tmp_path):
    """A WebSocket left open in a version 5 store belongs to the main proxy process: its next run closes it."""
    from capture.flow import pack_fields
    from capture.messages import PROXY_STOPPED
    from test_store_live import socket_flow

    path = str(tmp_path / "capture.sqlite")
    with Store(path) as s:
        sid = s.create_session("s")["id"]
        s.ingest("old", [(1, [sid], pack_fields(socket_flow()), "open", 0)])
    # The socket as version 5 held it: no worker column, no index of open sockets.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE schema_version SET version = 5")
    db.execute("DROP INDEX websockets_open")
    db.execute("ALTER TABLE websockets DROP COLUMN worker")
    db.close()
    with Store(path) as s:
        (flow_id, sessions, _), = s.close_orphans("new", 0)
        assert sessions == [sid] and s.websocket_close(flow_id) == PROXY_STOPPED


def test_messages_stored_before_omitted_still_read(tmp_path):
    """A message row written before ``omitted`` existed (six fields) is listed, paged and searched as not omitted."""
    path = str(tmp_path / "old.sqlite")
    with Store(path) as s:
        sid = s.create_session("s")["id"]
        socket = make_flow()._replace(kind="websocket", status=101, path="/ws")
        s.ingest("p", [(1, [sid], pack_fields(socket), "open", 0)])
        (summary,), _ = s.list_flows(sid)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO websocket_messages (flow_id, n, record) VALUES (?, 1, ?)",
               (summary["id"], msgpack.packb((False, "text", b"hello", 5, False, T0), use_bin_type=True)))
    db.execute("UPDATE websockets SET message_count = 1 WHERE flow_id = ?", (summary["id"],))
    db.close()
    with Store(path) as s:
        assert s.messages(summary["id"]) == ([WebSocketMessage(False, "text", b"hello", 5, False, T0)], 1)
        assert s.get_flow(summary["id"])["websocket"]["messages"][0]["omitted"] is False
        assert s.list_flows(sid, filter="~bs hello")[1] == 1 and s.list_flows(sid, filter="~bq hello")[1] == 0
