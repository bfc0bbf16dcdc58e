"""What only the PostgreSQL backend has: connecting in the background, and its schema migrations.

The shared store suite (test_store.py) runs on this backend too; here is
what it cannot show: a database host that accepts TCP but never answers,
and a database left by an earlier release brought up to date.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from pgcluster import missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port that completes TCP handshakes and then says nothing, as a hung database host does.

    connect_timeout=60 in the URL: anything that waits for this host waits a minute.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # never accepted: the kernel finishes the handshakes, nobody answers
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/capture?connect_timeout=60"


def bounded(call, seconds: float = 15.0):
    """Run ``call`` in a thread; its outcome, or an AssertionError if it is still waiting after ``seconds``."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except Exception as e:
            outcome.append(("error", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} still waiting on the silent database after {seconds} s"
    return outcome[0]


def test_store_opens_and_answers_at_once_while_the_database_host_is_silent(silent_url):
    """Opening the store does not wait on the database; a call waits at most ANSWER_WAIT, once per
    attempt, then fails with Unavailable saying there was no answer; health says the same; close returns."""
    from capture.sessiond.store.interface import Unavailable
    from capture.sessiond.store.postgres import ANSWER_WAIT, PostgresStore

    kind, store = bounded(lambda: PostgresStore(silent_url))
    assert kind == "ok"
    try:
        health = store.health()
        assert health["backend"] == "postgresql" and health["reachable"] is False
        for _ in range(3):
            kind, error = bounded(store.list_sessions)
            assert kind == "error" and isinstance(error, Unavailable), error
            assert f"no answer within {ANSWER_WAIT:g} s" in str(error)
        health = store.health()
        assert health["reachable"] is False and "no answer" in health["error"]
    finally:
        assert bounded(store.close)[0] == "ok"


def test_a_failed_attempt_fails_the_waiting_call_at_once(monkeypatch):
    """A database host that hangs up before answering (a server going down): the call waiting on the
    attempt fails as soon as the attempt does, naming why, rather than waiting out ANSWER_WAIT for an
    answer that cannot come; the session manager's one store thread stays free for the calls behind it."""
    from capture.sessiond.store import postgres
    from capture.sessiond.store.interface import Unavailable

    monkeypatch.setattr(postgres, "ANSWER_WAIT", 60.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)

        def hang_up() -> None:
            connection, _ = listener.accept()
            threading.Event().wait(0.3)  # the call is waiting by now
            connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        store = postgres.PostgresStore(f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/capture")
        try:
            kind, error = bounded(store.list_sessions, seconds=30)
            assert kind == "error" and isinstance(error, Unavailable), error
            assert "no answer" not in str(error)
        finally:
            assert bounded(store.close)[0] == "ok"


def test_migration_to_version_3_keeps_open_sockets_closable(postgres_cluster):
    """A WebSocket left open in a version 2 database belongs to a main proxy process: its next run closes it."""
    import psycopg

    from capture.flow import pack_fields
    from capture.messages import PROXY_STOPPED
    from capture.sessiond.store.postgres import SCHEMA_VERSION, PostgresStore
    from test_store_live import socket_flow

    url = postgres_cluster.create_database()
    store = PostgresStore(url, appliance="lab")
    try:
        sid = store.create_session("s")["id"]
        store.ingest("old", [(1, [sid], pack_fields(socket_flow()), "open", 0)])
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:  # the socket as version 2 held it
        conn.execute("UPDATE schema_version SET version = 2")
        conn.execute("DROP INDEX websockets_open")
        conn.execute("ALTER TABLE websockets DROP COLUMN worker")
    store = PostgresStore(url, appliance="lab")
    try:
        (flow_id, sessions, _), = store.close_orphans("new", 0)
        assert sessions == [sid] and store.websocket_close(flow_id) == PROXY_STOPPED
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(4,)]
        assert conn.execute("SELECT to_regclass('flows_time')").fetchone() == (None,)
