"""The embedded store backend: sessions and captured flows in one SQLite file.

Only the session-manager process touches this store, so it is plain
synchronous ``sqlite3`` with no I/O framework, called from the session
manager's reactor thread and pacing itself (:mod:`capture.sessiond.pacing`).
It implements :class:`capture.sessiond.store.interface.Store`; what is
SQLite's own (``sqlite_sequence``, the ``temp.gone`` table, the SQL
functions the filter push-down calls) stays in this module.

A flow is stored once, however many sessions it belongs to; ``session_flows``
links it to each, keyed ``(session_id, time, flow_id)`` so that "a session's
flows, oldest first" is a range scan of that key.  ``flows`` holds the summary
columns that listings, filters and statistics read; the full record (headers
and bodies, up to ``max_capture_body`` each) lives apart in ``flow_records``,
so a query over a session's summaries reads compact rows, not megabytes of
bodies.  Filters are pushed down to SQL by :mod:`capture.sessiond.query`.

A WebSocket flow is stored when it opens; ``websockets`` remembers which
proxy item opened it (so its later items find it) and which proxy process
(so that process's next run closes it, should its own close never come),
how many messages it has and, once it ends, how it closed;
``websocket_messages`` holds its messages, one row each, keyed
``(flow_id, n)`` in the order they passed.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from capture import filters
from capture.flow import Flow
from capture.grpcview import grpc_section
from capture.messages import (
    DETAIL_MESSAGES,
    PROXY_STOPPED,
    WebSocketClose,
    WebSocketMessage,
    pack_close,
    pack_message,
    unpack_close,
    unpack_live_close,
    unpack_message,
    unpack_messages,
    websocket_section,
)
from capture.sessiond import query
from capture.sessiond.pacing import Pacer
from capture.sessiond.store.interface import (
    MAX_PAGE,
    BatchItem,
    Conflict,
    Invalid,
    NotFound,
    OnMessages,
    OnStored,
    StoreError,
    Unavailable,
)
from capture.sessiond.store.rows import (
    SESSION_COLUMNS,
    SUMMARY_COLUMNS,
    FilterView,
    check_clients,
    check_cookies,
    check_name,
    check_orphans,
    check_page,
    check_worker,
    combine,
    derived_columns,
    flow_row,
    link_targets,
    plan,
    plain,
    session_dict,
    stats_result,
    summary_from_row,
)

SCHEMA_VERSION = 6


# How many rows a scan that decodes blobs fetches at a time; it restarts from
# the last key seen, so no cursor stays open between chunks.
_SCAN_CHUNK = 500


_SCHEMA_V1 = (
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        stopped REAL,
        clients TEXT NOT NULL,
        filter TEXT NOT NULL,
        capture_responses INTEGER NOT NULL,
        cookies_enabled INTEGER NOT NULL,
        cookie_domains TEXT NOT NULL,
        flow_count INTEGER NOT NULL DEFAULT 0
    )""",
    # AUTOINCREMENT so a flow id is never reused after a clear or delete: a
    # stale id held by a client must not name someone else's flow.
    """CREATE TABLE flows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        client TEXT NOT NULL,
        client_port INTEGER NOT NULL,
        method TEXT NOT NULL,
        scheme TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        path TEXT NOT NULL,
        url TEXT NOT NULL,
        status INTEGER NOT NULL,
        request_size INTEGER NOT NULL,
        response_size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        duration_ms REAL,
        error TEXT NOT NULL,
        kind TEXT NOT NULL,
        record BLOB NOT NULL
    )""",
    """CREATE TABLE session_flows (
        session_id INTEGER NOT NULL,
        time REAL NOT NULL,
        flow_id INTEGER NOT NULL,
        PRIMARY KEY (session_id, time, flow_id)
    ) WITHOUT ROWID""",
    # Which sessions hold a flow: for get_flow and for finding orphans.
    "CREATE INDEX session_flows_flow ON session_flows (flow_id)",
    "CREATE INDEX flows_host ON flows (host)",
    "CREATE INDEX flows_status ON flows (status)",
    "CREATE INDEX flows_method ON flows (method)",
    "CREATE INDEX flows_client ON flows (client)",
    "CREATE INDEX flows_time ON flows (time)",
    "CREATE INDEX sessions_state ON sessions (state)",
    """CREATE TABLE delivered (
        instance TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    )""",
)

_FLOWS_V2 = """CREATE TABLE flows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        client TEXT NOT NULL,
        client_port INTEGER NOT NULL,
        method TEXT NOT NULL,
        scheme TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        path TEXT NOT NULL,
        url TEXT NOT NULL,
        status INTEGER NOT NULL,
        request_size INTEGER NOT NULL,
        response_size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        duration_ms REAL,
        error TEXT NOT NULL,
        kind TEXT NOT NULL,
        has_response INTEGER NOT NULL,
        request_type TEXT,
        response_type TEXT,
        plain INTEGER NOT NULL
    )"""

_FLOW_INDEXES = (
    "CREATE INDEX flows_host ON flows (host)",
    "CREATE INDEX flows_status ON flows (status)",
    "CREATE INDEX flows_method ON flows (method)",
    "CREATE INDEX flows_client ON flows (client)",
    "CREATE INDEX flows_time ON flows (time)",
)


def _migrate_v2(db: sqlite3.Connection) -> None:
    """Version 2: records move to ``flow_records``; columns that let SQL answer filters exactly.

    ``has_response`` (a response of size 0 is still one); ``request_type`` and
    ``response_type``, the first Content-Type header of each side as sent,
    NULL when absent, which is what ``~tq`` and ``~ts`` search; ``plain``, 1
    when every text a filter searches is printable ASCII, where SQLite's
    case folding is Python's (see :mod:`capture.sessiond.query`).
    """
    (sequence,) = db.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'flows'"
    ).fetchone()
    db.execute("ALTER TABLE flows RENAME TO flows_v1")
    db.execute(_FLOWS_V2)
    db.execute("CREATE TABLE flow_records (id INTEGER PRIMARY KEY, record BLOB NOT NULL)")
    rows = db.execute(
        "SELECT id, time, client, client_port, method, scheme, host, port, path, url, status,"
        " request_size, response_size, content_type, duration_ms, error, kind, record"
        " FROM flows_v1 ORDER BY id"
    )
    while chunk := rows.fetchmany(_SCAN_CHUNK):
        summaries, records = [], []
        for row in chunk:
            record = row[-1]
            flow = Flow.unpack(record)
            summaries.append((*row[:-1], *derived_columns(flow, flow.url)))
            records.append((row[0], record))
        db.executemany(_INSERT_FLOW_V2, summaries)
        db.executemany(_INSERT_RECORD, records)
    db.execute("DROP TABLE flows_v1")
    for statement in _FLOW_INDEXES:
        db.execute(statement)
    # Keep AUTOINCREMENT's promise across the copy: no id is ever reused.
    db.execute("DELETE FROM sqlite_sequence WHERE name IN ('flows', 'flows_v1')")
    (highest,) = db.execute("SELECT coalesce(max(id), 0) FROM flows").fetchone()
    if max(sequence, highest):
        db.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('flows', ?)", (max(sequence, highest),)
        )


# _MIGRATIONS[n] takes a database at version n to version n + 1: a list of
# statements, or a function for a step that needs more than SQL.
_MIGRATIONS: tuple[tuple[str, ...] | Callable[[sqlite3.Connection], None], ...] = (
    _SCHEMA_V1,
    _migrate_v2,
    # v3: every query starts from a session's range of session_flows and reaches
    # flows by id, so these indexes were never used, and each cost ingest time.
    tuple(f"DROP INDEX IF EXISTS flows_{column}" for column in ("host", "status", "method", "client", "time")),
    # v4: WebSocket flows, stored while they are open.
    (
        """CREATE TABLE websockets (
            flow_id INTEGER PRIMARY KEY,
            instance TEXT NOT NULL,
            open_seq INTEGER NOT NULL,
            message_count INTEGER NOT NULL DEFAULT 0,
            close BLOB
        )""",
        "CREATE UNIQUE INDEX websockets_opened ON websockets (instance, open_seq)",
        """CREATE TABLE websocket_messages (
            flow_id INTEGER NOT NULL,
            n INTEGER NOT NULL,
            record BLOB NOT NULL,
            PRIMARY KEY (flow_id, n)
        ) WITHOUT ROWID""",
    ),
    # v5: which appliance captured each flow (``~via``); flows from before say none.
    ("ALTER TABLE flows ADD COLUMN appliance TEXT NOT NULL DEFAULT ''",),
    # v6: which proxy process opened each WebSocket flow, so that its next run closes
    # what an earlier one left open (close_orphans); the open ones found by their own index.
    (
        "ALTER TABLE websockets ADD COLUMN worker INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX websockets_open ON websockets (worker) WHERE close IS NULL",
    ),
)

_INSERT_FLOW_V2 = (
    "INSERT INTO flows (id, time, client, client_port, method, scheme, host, port,"
    " path, url, status, request_size, response_size, content_type, duration_ms,"
    " error, kind, has_response, request_type, response_type, plain)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_FLOW = (
    "UPDATE flows SET time = ?, client = ?, client_port = ?, method = ?, scheme = ?, host = ?, port = ?,"
    " path = ?, url = ?, status = ?, request_size = ?, response_size = ?, content_type = ?, duration_ms = ?,"
    " error = ?, kind = ?, has_response = ?, request_type = ?, response_type = ?, plain = ? WHERE id = ?"
)
_INSERT_FLOW = (
    "INSERT INTO flows (id, time, client, client_port, method, scheme, host, port,"
    " path, url, status, request_size, response_size, content_type, duration_ms,"
    " error, kind, has_response, request_type, response_type, plain, appliance)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RECORD = "INSERT INTO flow_records (id, record) VALUES (?, ?)"
_INSERT_OPENED = "INSERT INTO websockets (flow_id, instance, open_seq, worker, close) VALUES (?, ?, ?, ?, ?)"
_INSERT_LINK = "INSERT INTO session_flows (session_id, time, flow_id) VALUES (?, ?, ?)"
# SQLite virtual-machine steps between two calls of the pacer from inside a
# statement: 60 to 130 µs apart in bench/store_query.py's statistics and
# searches, short beside the pacer's slice, long beside the call itself.
_PACE_OPCODES = 5_000
# Flows inserted per round of statements in ingest, between two chances to pace.
_INSERT_CHUNK = 8

# A session's flows with their summary columns: the FROM and WHERE every
# listing, filter and statistic starts from.
_SESSION_FLOWS = "FROM session_flows sf JOIN flows f ON f.id = sf.flow_id WHERE sf.session_id = ?"

_STATUS_CLASS = (
    "CASE WHEN f.status BETWEEN 100 AND 599 THEN (f.status / 100) || 'xx'"
    " WHEN f.status != 0 THEN 'other'"
    " WHEN f.error != '' THEN 'error'"
    " ELSE 'none' END"
)
# Statistics groups: the key each is counted by.  Host names and media
# types are case-insensitive, so they are grouped lower-cased.
_STAT_GROUPS = {
    "by_method": "f.method",
    "by_host": "lower(f.host)",
    "by_status_class": _STATUS_CLASS,
    "by_content_type": "lower(f.content_type)",
    "by_client": "f.client",
}


# --- the SQL the filter push-down writes, and the functions it calls ---------------

DIALECT = query.Dialect(
    param="?",
    contains="instr(lower({column}), {param}) > 0",
    like="{column} LIKE {param} ESCAPE '\\'",  # SQLite's LIKE folds ASCII case
    search="capture_search({param}, {param}, {column})",
    asset="capture_asset(f.content_type, f.path)",
)


def _sql_search(name: str, pattern: str, text: str | None) -> int:
    if text is None:
        return 0
    return int(query.searcher(name, pattern)(text) is not None)


class _AssetView:
    """The two columns ``~a`` reads, standing in for a Flow.

    Slots, so that should the asset test ever read anything else it fails
    loudly here instead of answering wrongly.
    """

    __slots__ = ("content_type", "path")

    def __init__(self, content_type: str, path: str) -> None:
        self.content_type = content_type
        self.path = path


_ASSET = filters.Flag("a")


def _sql_asset(content_type: str, path: str) -> int:
    return int(_ASSET(_AssetView(content_type, path)))  # type: ignore[arg-type]


SQL_FUNCTIONS: dict[str, tuple[int, Callable[..., int]]] = {
    "capture_search": (3, _sql_search),
    "capture_asset": (2, _sql_asset),
}
"""``name: (number of arguments, function)`` registered on every connection."""


class SQLiteStore:
    """Sessions and flows in one SQLite file.

    Not thread-safe: calls must come one at a time (the session manager's
    reactor thread, or a single worker thread).
    """

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.time,
        pace: Callable[[], None] | None = None,
        appliance: str = "",
    ) -> None:
        self._clock = clock
        self._path = path
        # Stamped on every flow ingested here: which appliance captured it.
        self._appliance = appliance
        self._appliance_plain = plain(appliance)
        # Called between small pieces of work (a flow, a decoded row, SQLite steps): see capture.sessiond.pacing.
        self._pace = pace or Pacer()
        #: Flows dropped by :meth:`ingest` because they could not be decoded.
        self.rejected = 0
        if path != ":memory:":
            _prepare_file(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # For a new database only (an existing one keeps its size): a flow record
            # spans a few KiB, and 16 KiB pages write the WAL in a quarter of the calls.
            self._db.execute("PRAGMA page_size=16384")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA temp_store=MEMORY")
            for name, (arity, function) in SQL_FUNCTIONS.items():
                self._db.create_function(name, arity, function, deterministic=True)
            # Long statements (statistics, searches over big sessions) pace themselves too.
            self._db.set_progress_handler(self._pace, _PACE_OPCODES)
            self._max_params = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._migrate()
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (flow_id INTEGER PRIMARY KEY)")
        except BaseException:
            self._db.close()
            raise

    #: A local file: calls run in the reactor thread and pace themselves.
    blocking = False

    def close(self) -> None:
        self._db.close()

    def health(self) -> dict[str, Any]:
        return {"backend": "sqlite", "path": self._path, "reachable": True, "error": None, "since": None}

    def watch(self, callback: Callable[[str], None]) -> None:
        """Nothing to watch: only this appliance's session manager opens the file."""

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # sessions -------------------------------------------------------------

    def create_session(
        self,
        name: str,
        clients: Iterable[str] = (),
        filter: str = "",
        capture_responses: bool = True,
        cookies: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a new session, capturing at once; Invalid for a bad field."""
        name = check_name(name)
        client_list = check_clients(clients)
        if not isinstance(filter, str):
            raise Invalid("filter must be a string")
        if not isinstance(capture_responses, bool):
            raise Invalid("capture_responses must be true or false")
        enabled, domains = check_cookies(cookies)
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO sessions (name, state, created, updated, stopped, clients,"
                " filter, capture_responses, cookies_enabled, cookie_domains, flow_count)"
                " VALUES (?, 'capturing', ?, ?, NULL, ?, ?, ?, ?, ?, 0)",
                (
                    name,
                    now,
                    now,
                    json.dumps(client_list),
                    filter,
                    capture_responses,
                    enabled,
                    json.dumps(domains),
                ),
            )
            session_id = cursor.lastrowid
        return self.get_session(session_id)

    def get_session(self, session_id: int) -> dict[str, Any]:
        return session_dict(self._session_row(self._db, session_id))

    def list_sessions(self) -> list[dict[str, Any]]:
        rows = self._db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY id")
        return [session_dict(row) for row in rows]

    def rename(self, session_id: int, name: str) -> dict[str, Any]:
        name = check_name(name)
        with self._write() as db:
            self._session_row(db, session_id)
            db.execute("UPDATE sessions SET name = ?, updated = ? WHERE id = ?", (name, self._clock(), session_id))
        return self.get_session(session_id)

    def pause(self, session_id: int) -> dict[str, Any]:
        return self._transition(session_id, ("capturing",), "paused", "pause")

    def resume(self, session_id: int) -> dict[str, Any]:
        return self._transition(session_id, ("paused",), "capturing", "resume")

    def stop(self, session_id: int) -> dict[str, Any]:
        """Stop for good; the session and its flows stay as history."""
        return self._transition(session_id, ("capturing", "paused"), "stopped", "stop")

    def clear(self, session_id: int) -> dict[str, Any]:
        """Drop the session's flows and keep its state; a stopped session is history."""
        with self._write() as db:
            row = self._session_row(db, session_id)
            if row[2] == "stopped":
                raise Conflict(f"session {session_id} is stopped; it can no longer be cleared")
            self._unlink(db, session_id)
            db.execute(
                "UPDATE sessions SET flow_count = 0, updated = ? WHERE id = ?",
                (self._clock(), session_id),
            )
        return self.get_session(session_id)

    def delete(self, session_id: int) -> None:
        """Remove a session in any state, and every flow only it held."""
        with self._write() as db:
            self._session_row(db, session_id)
            self._unlink(db, session_id)
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def idle_sessions(self, before: float) -> list[int]:
        rows = self._db.execute(
            "SELECT s.id FROM sessions s WHERE s.updated < ? AND NOT EXISTS"
            " (SELECT 1 FROM session_flows sf WHERE sf.session_id = s.id AND sf.time >= ?) ORDER BY s.id",
            (before, before),
        )
        return [session_id for (session_id,) in rows]

    # flows ----------------------------------------------------------------

    def ingest(
        self,
        instance: str,
        batch: Sequence[BatchItem],
        on_stored: OnStored | None = None,
        on_messages: OnMessages | None = None,
        worker: int = 0,
        ended: bool = False,
    ) -> int:
        """Store a batch of ``(seq, session_ids, packed_flow)`` from one proxy instance.

        Live-flow items ``(seq, session_ids, payload, op, ref)`` open a
        WebSocket flow (stored like any flow), add its messages, or close it
        (its final record replaces the first); see :mod:`capture.delivery`.
        ``on_messages(flow_id, session_ids, count, added)`` follows a commit
        that added messages.

        Items at or below the instance's high-water mark were delivered
        before (a resend after a lost ack) and are skipped.  One transaction:
        the flows and the new mark commit together, so a crash cannot store
        a flow twice or lose one that was acknowledged.  Returns the mark.
        ``on_stored(flow_id, session_ids, flow)`` is called for each stored
        flow once the transaction has committed (for live events).
        ``worker`` and ``ended``: see the interface (a live flow of a run
        that is over is stored closed).
        """
        if not isinstance(instance, str) or not instance:
            raise Invalid("instance must be a non-empty string")
        if not isinstance(batch, (list, tuple)):
            raise Invalid("batch must be a list")
        check_worker(worker, ended)
        orphan_close = pack_close(PROXY_STOPPED) if ended else None
        rejected = 0
        with self._write() as db:
            row = db.execute("SELECT last_seq FROM delivered WHERE instance = ?", (instance,)).fetchone()
            first_mark = mark = row[0] if row else 0
            existing = {session_id for (session_id,) in db.execute("SELECT id FROM sessions")}
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'flows'").fetchone()
            next_id = row[0] if row else 0
            flow_rows: list[tuple[Any, ...]] = []
            records: list[tuple[int, bytes]] = []
            links: list[tuple[int, float, int]] = []
            opened: list[tuple[int, str, int, int, bytes | None]] = []
            counts: Counter[int] = Counter()
            stored: list[tuple[int, list[int], Flow]] = []
            added: dict[int, list[Any]] = {}

            def insert() -> None:
                # A few flows at a time, so that the CPU can be offered in between.
                db.executemany(_INSERT_FLOW, flow_rows)
                db.executemany(_INSERT_RECORD, records)
                db.executemany(_INSERT_LINK, links)
                db.executemany(_INSERT_OPENED, opened)
                for pending in (flow_rows, records, links, opened):
                    pending.clear()

            for item in batch:
                self._pace()
                op = None
                try:
                    if len(item) == 5:
                        seq, session_ids, record, op, ref = item
                    else:
                        seq, session_ids, record = item
                except (TypeError, ValueError):
                    rejected += 1
                    continue
                if type(seq) is not int or op not in (None, "open", "messages", "close"):
                    rejected += 1
                    continue
                if seq <= mark:
                    continue
                mark = seq
                if op in ("messages", "close"):
                    insert()  # the flow it names may be among those not yet written
                    try:
                        self._live(db, instance, op, ref, record, stored if on_stored else None, added)
                    except Exception:
                        rejected += 1
                    continue
                # A bad item must not cost the rest of the batch.
                try:
                    targets = link_targets(session_ids, existing)
                    flow = Flow.unpack(record)  # checked whole, then stored as it came
                    columns = flow_row(flow)
                except Exception:
                    rejected += 1
                    continue
                if not targets:
                    continue
                next_id += 1
                if not self._appliance_plain:
                    columns = (*columns[:-1], 0)
                flow_rows.append((next_id, *columns, self._appliance))
                records.append((next_id, record))
                for session_id in targets:
                    links.append((session_id, flow.start, next_id))
                    counts[session_id] += 1
                if op == "open":
                    opened.append((next_id, instance, seq, worker, orphan_close))
                if on_stored is not None:
                    stored.append((next_id, list(targets), flow))
                if len(flow_rows) == _INSERT_CHUNK:
                    insert()
            if flow_rows:
                insert()
            if counts:
                db.executemany(
                    "UPDATE sessions SET flow_count = flow_count + ? WHERE id = ?",
                    [(count, session_id) for session_id, count in counts.items()],
                )
            if mark != first_mark:
                db.execute(
                    "INSERT INTO delivered (instance, last_seq) VALUES (?, ?)"
                    " ON CONFLICT (instance) DO UPDATE SET last_seq = excluded.last_seq",
                    (instance, mark),
                )
        self.rejected += rejected
        for flow_id, session_ids, flow in stored:
            on_stored(flow_id, session_ids, flow)
        if on_messages is not None:
            for flow_id, (session_ids, count, new) in added.items():
                on_messages(flow_id, session_ids, count, new)
        return mark

    def _live(self, db: sqlite3.Connection, instance: str, op: str, ref: Any, record: Any,
              stored: list[tuple[int, list[int], Flow]] | None, added: dict[int, list[Any]]) -> None:
        """Messages for, or the end of, the live flow item ``ref`` opened; nothing if it is not stored.

        ValueError (or TypeError) for a payload that does not decode: the caller counts it rejected.
        """
        row = db.execute(
            "SELECT flow_id, message_count FROM websockets WHERE instance = ? AND open_seq = ?", (instance, ref)
        ).fetchone()
        if op == "messages":
            messages = unpack_messages(record)
            if row is None or not messages:
                return
            flow_id, count = row
            db.executemany(
                "INSERT INTO websocket_messages (flow_id, n, record) VALUES (?, ?, ?)",
                [(flow_id, count + i, pack_message(message)) for i, message in enumerate(messages, 1)],
            )
            db.execute("UPDATE websockets SET message_count = ? WHERE flow_id = ?", (count + len(messages), flow_id))
            entry = added.get(flow_id)
            if entry is None:
                entry = added[flow_id] = [self._holders(db, flow_id), count, 0]
            entry[1] = count + len(messages)
            entry[2] += len(messages)
            return
        flow_record, close_record = unpack_live_close(record)
        flow = Flow.unpack(flow_record)
        columns = flow_row(flow)
        if row is None:
            return
        flow_id = row[0]
        db.execute(_UPDATE_FLOW, (*columns, flow_id))
        db.execute("UPDATE flow_records SET record = ? WHERE id = ?", (flow_record, flow_id))
        db.execute("UPDATE websockets SET close = ? WHERE flow_id = ?", (close_record, flow_id))
        if stored is not None:
            stored.append((flow_id, self._holders(db, flow_id), flow))

    @staticmethod
    def _holders(db: sqlite3.Connection, flow_id: int) -> list[int]:
        return [session_id for (session_id,) in db.execute(
            "SELECT session_id FROM session_flows WHERE flow_id = ? ORDER BY session_id", (flow_id,))]

    def messages(self, flow_id: int, offset: int = 0, limit: int = MAX_PAGE) -> tuple[list[WebSocketMessage], int]:
        """A page of a WebSocket flow's messages in the order they passed, and how many it has."""
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        check_page(limit, offset)
        row = self._db.execute("SELECT message_count FROM websockets WHERE flow_id = ?", (flow_id,)).fetchone()
        if row is None:
            if self._db.execute("SELECT 1 FROM flows WHERE id = ?", (flow_id,)).fetchone() is None:
                raise NotFound(f"no flow {flow_id}")
            return [], 0
        rows = self._db.execute(
            "SELECT record FROM websocket_messages WHERE flow_id = ? AND n > ? ORDER BY n LIMIT ?",
            (flow_id, offset, limit),
        ).fetchall()
        return [unpack_message(record) for (record,) in rows], row[0]

    def _socket_messages(self, flow_id: int) -> Iterator[WebSocketMessage]:
        """Every stored message of a WebSocket flow in order, read a page at a time (for body filters)."""
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT n, record FROM websocket_messages WHERE flow_id = ? AND n > ? ORDER BY n LIMIT ?",
                (flow_id, last, _SCAN_CHUNK),
            ).fetchall()
            for _, record in rows:
                yield unpack_message(record)
            if len(rows) < _SCAN_CHUNK:
                return
            last = rows[-1][0]
            self._pace()

    def websocket_close(self, flow_id: int) -> WebSocketClose | None:
        """How a WebSocket flow ended; None while it is open (or for any other flow)."""
        row = self._db.execute("SELECT close FROM websockets WHERE flow_id = ?", (flow_id,)).fetchone()
        return None if row is None or row[0] is None else unpack_close(row[0])

    def close_orphans(
        self, instance: str, worker: int, workers: int | None = None
    ) -> list[tuple[int, list[int], Flow]]:
        """Close the open WebSocket flows earlier runs of this proxy process left; see the interface."""
        beyond = check_orphans(instance, worker, workers)
        close = pack_close(PROXY_STOPPED)
        closed = []
        with self._write() as db:
            # Named, or a planner without statistics may scan every flow to find the few open sockets.
            rows = db.execute(
                "SELECT w.flow_id, r.record FROM websockets w INDEXED BY websockets_open"
                " JOIN flows f ON f.id = w.flow_id JOIN flow_records r ON r.id = w.flow_id"
                " WHERE w.close IS NULL AND w.instance != ? AND (w.worker = ? OR w.worker >= ?) AND f.appliance = ?"
                " ORDER BY w.flow_id",
                (instance, worker, beyond, self._appliance),
            ).fetchall()
            for flow_id, record in rows:
                db.execute("UPDATE websockets SET close = ? WHERE flow_id = ?", (close, flow_id))
                closed.append((flow_id, self._holders(db, flow_id), Flow.unpack(record)))
        return closed

    def last_seq(self, instance: str) -> int:
        """The highest sequence number stored for ``instance``; 0 if none."""
        row = self._db.execute("SELECT last_seq FROM delivered WHERE instance = ?", (instance,)).fetchone()
        return row[0] if row else 0

    def list_flows(
        self,
        session_id: int,
        limit: int = 100,
        offset: int = 0,
        filter: str | filters.Filter = "",
        sort: str = "time",
        order: str = "asc",
        predicate: Callable[[Flow], bool] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of a session's flow summaries and the number that match.

        ``filter`` is an expression in the filter language (or a parsed
        one); ``sort`` is one of time, status, duration, size (of the
        response) or request_size, ties broken by time then id; ``order`` asc
        or desc.  ``predicate`` is an extra test on the decoded flow.

        What the filter can say in SQL is answered there, pages and total
        included.  Otherwise the candidates SQL selects are read in order,
        decoded and tested, and the page cut here.
        """
        check_page(limit, offset)
        try:
            ordering = query.order_by(sort, order, DIALECT)
        except query.QueryError as e:
            raise Invalid(str(e)) from None
        plan = self._plan(filter)
        flow_count = self._session_row(self._db, session_id)[11]
        residual = combine(plan.residual, predicate)
        where = _SESSION_FLOWS if plan.where == query.TRUE else f"{_SESSION_FLOWS} AND {plan.where}"
        params = (session_id, *plan.params)
        if residual is None:
            rows = self._db.execute(
                f"SELECT {SUMMARY_COLUMNS} {where} ORDER BY {ordering} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            page = [summary_from_row(row) for row in rows]
            if plan.where == query.TRUE:
                total = flow_count
            elif 0 < len(rows) < limit or (not rows and offset == 0):
                total = offset + len(rows)  # the page reached the end
            else:
                total = self._db.execute(f"SELECT count(*) {where}", params).fetchone()[0]
            return page, total
        page = []
        total = 0
        view = FilterView(plan.residual, self._socket_messages)
        for flow_id, appliance, flow in self._candidates(f"SELECT f.id {where} ORDER BY {ordering}", params):
            if not residual(view(flow_id, appliance, flow)):
                continue
            if offset <= total < offset + limit:
                page.append({"id": flow_id, **flow.summary(), "appliance": appliance or None})
            total += 1
        return page, total

    def iter_flows(
        self, session_id: int, filter: str | filters.Filter = ""
    ) -> Iterator[tuple[int, Flow]]:
        """Each ``(flow_id, Flow)`` of a session that ``filter`` selects, oldest first.

        For exports: the filter is pushed down as for :meth:`list_flows`, and
        checked (Invalid for a bad one) before this returns.  Reads in chunks
        keyed on the last row seen, so writes may come between chunks without
        a cursor held open.
        """
        plan = self._plan(filter)
        self._session_row(self._db, session_id)
        return self._scan(session_id, plan)

    def stats(self, session_id: int) -> dict[str, Any]:
        """Counts and sizes of a session's flows, overall and by method, host,
        status class, content type and client (each largest count first)."""
        self._session_row(self._db, session_id)
        totals = self._db.execute(
            "SELECT count(*), total(f.request_size), total(f.response_size), min(sf.time),"
            f" max(sf.time), total(f.duration_ms) {_SESSION_FLOWS}",
            (session_id,),
        ).fetchone()
        groups = {
            name: self._db.execute(
                f"SELECT {key} AS key, count(*) AS n, total(f.request_size), total(f.response_size)"
                f" {_SESSION_FLOWS} GROUP BY key ORDER BY n DESC, key",
                (session_id,),
            ).fetchall()
            for name, key in _STAT_GROUPS.items()
        }
        return stats_result(session_id, totals, groups)

    def get_flow(self, flow_id: int) -> dict[str, Any]:
        """The full flow, with the sessions it belongs to."""
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        row = self._db.execute(
            "SELECT r.record, f.appliance FROM flow_records r JOIN flows f ON f.id = r.id WHERE r.id = ?", (flow_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no flow {flow_id}")
        session_ids = [
            session_id
            for (session_id,) in self._db.execute(
                "SELECT session_id FROM session_flows WHERE flow_id = ? ORDER BY session_id", (flow_id,)
            )
        ]
        flow = Flow.unpack(row[0])
        detail = {"id": flow_id, "session_ids": session_ids, **flow.detail(), "appliance": row[1] or None}
        grpc = grpc_section(flow)
        if grpc is not None:
            detail["grpc"] = grpc
        if flow.kind == "websocket":
            messages, count = self.messages(flow_id, 0, DETAIL_MESSAGES)
            detail["websocket"] = websocket_section(messages, count, self.websocket_close(flow_id))
        return detail

    def load_flow(self, flow_id: int) -> Flow:
        """The stored Flow itself (for copy as curl and the like)."""
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        row = self._db.execute("SELECT record FROM flow_records WHERE id = ?", (flow_id,)).fetchone()
        if row is None:
            raise NotFound(f"no flow {flow_id}")
        return Flow.unpack(row[0])

    # internals ------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so it cannot fail half-way on a lock.

        A failure of SQLite itself (a full disk, a damaged file) is
        Unavailable: nothing was written, and the caller may try again.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise Unavailable(f"SQLite failed: {e}") from e

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, refusing a newer one we cannot read."""
        with self._write() as db:
            has_table = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            version = 0
            if has_table:
                rows = db.execute("SELECT version FROM schema_version").fetchall()
                if len(rows) != 1 or type(rows[0][0]) is not int:
                    raise StoreError("store schema_version table is damaged: expected one integer row")
                version = rows[0][0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store schema version {version} is newer than this software supports"
                    f" ({SCHEMA_VERSION}); upgrade capture or use another database file"
                )
            if not has_table:
                db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            for step in range(version, SCHEMA_VERSION):
                migration = _MIGRATIONS[step]
                if callable(migration):
                    migration(db)
                    continue
                for statement in migration:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _session_row(self, db: sqlite3.Connection, session_id: int) -> tuple[Any, ...]:
        if type(session_id) is not int:
            raise Invalid("session id must be an integer")
        row = db.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise NotFound(f"no session {session_id}")
        return row

    def _transition(
        self, session_id: int, allowed: tuple[str, ...], target: str, verb: str
    ) -> dict[str, Any]:
        with self._write() as db:
            state = self._session_row(db, session_id)[2]
            if state not in allowed:
                raise Conflict(
                    f"session {session_id} is {state}; only a {' or '.join(allowed)}"
                    f" session can {verb}"
                )
            now = self._clock()
            db.execute(
                "UPDATE sessions SET state = ?, updated = ?, stopped = ? WHERE id = ?",
                (target, now, now if target == "stopped" else None, session_id),
            )
        return self.get_session(session_id)

    def _unlink(self, db: sqlite3.Connection, session_id: int) -> None:
        """Remove a session's links, then the flows no other session holds."""
        db.execute("DELETE FROM temp.gone")
        db.execute(
            "INSERT OR IGNORE INTO temp.gone (flow_id)"
            " SELECT flow_id FROM session_flows WHERE session_id = ?",
            (session_id,),
        )
        db.execute("DELETE FROM session_flows WHERE session_id = ?", (session_id,))
        db.execute(
            "DELETE FROM temp.gone"
            " WHERE EXISTS (SELECT 1 FROM session_flows sf WHERE sf.flow_id = temp.gone.flow_id)"
        )
        db.execute("DELETE FROM flows WHERE id IN (SELECT flow_id FROM temp.gone)")
        db.execute("DELETE FROM flow_records WHERE id IN (SELECT flow_id FROM temp.gone)")
        db.execute("DELETE FROM websocket_messages WHERE flow_id IN (SELECT flow_id FROM temp.gone)")
        db.execute("DELETE FROM websockets WHERE flow_id IN (SELECT flow_id FROM temp.gone)")
        db.execute("DELETE FROM temp.gone")

    def _plan(self, expression: str | filters.Filter) -> query.Query:
        return plan(expression, DIALECT, self._max_params)

    def _candidates(self, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[int, str, Flow]]:
        """Decode the flows whose ids ``sql`` selects, in its order, a chunk at a time.

        The sort (if any) handles ids only; records are fetched per chunk,
        so neither the sorter nor memory holds bodies.
        """
        cursor = self._db.execute(sql, params)
        while chunk := [flow_id for (flow_id,) in cursor.fetchmany(_SCAN_CHUNK)]:
            marks = ", ".join("?" * len(chunk))
            records = {
                flow_id: (appliance, record)
                for flow_id, appliance, record in self._db.execute(
                    "SELECT r.id, f.appliance, r.record FROM flow_records r JOIN flows f ON f.id = r.id"
                    f" WHERE r.id IN ({marks})",
                    chunk,
                )
            }
            for flow_id in chunk:
                self._pace()
                appliance, record = records[flow_id]
                yield flow_id, appliance, Flow.unpack(record)

    def _scan(self, session_id: int, plan: query.Query) -> Iterator[tuple[int, Flow]]:
        where = "" if plan.where == query.TRUE else f" AND {plan.where}"
        residual = plan.residual
        view = FilterView(residual, self._socket_messages)
        last_time, last_id = -math.inf, -1
        while True:
            rows = self._db.execute(
                "SELECT sf.time, f.id, f.appliance, r.record FROM session_flows sf"
                " JOIN flows f ON f.id = sf.flow_id JOIN flow_records r ON r.id = sf.flow_id"
                f" WHERE sf.session_id = ? AND (sf.time, sf.flow_id) > (?, ?){where}"
                " ORDER BY sf.time, sf.flow_id LIMIT ?",
                (session_id, last_time, last_id, *plan.params, _SCAN_CHUNK),
            ).fetchall()
            for _, flow_id, appliance, record in rows:
                self._pace()
                flow = Flow.unpack(record)
                if residual is None or residual(view(flow_id, appliance, flow)):
                    yield flow_id, flow
            if len(rows) < _SCAN_CHUNK:
                return
            last_time, last_id = rows[-1][0], rows[-1][1]


def _prepare_file(path: str) -> None:
    """Create the directory and an empty database file, both private to the user.

    Captured traffic holds passwords and tokens; SQLite gives its -wal and
    -shm files the database file's mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)

