"""The shared store backend: sessions and flows in PostgreSQL, for several appliances at once.

Each appliance's session manager opens one of these on the same database.
Sessions live in the database, so a session made, changed or deleted
through any appliance is the same on all; every change sends a
``NOTIFY capture_sessions`` in its own transaction, and the listener thread
here tells the session manager, which pushes fresh rules to its proxies.

Exactly once: a flow is unique by ``(instance, seq)``, the proxy instance
that captured it and its number there.  Each batch locks the instance's
delivery mark (the last sequence number stored), skips what it covers, and
copies (``COPY``) the rest straight into the tables, with their session
links, counts and the new mark, in one transaction; so a resend, a crash or
a second session manager replaying the same spill file can never store a
flow twice (and the unique index would refuse the batch if it tried).

Blocking: psycopg's synchronous API.  The session manager calls this store
from one dedicated thread (:attr:`blocking` says so), never its reactor;
the listener has a thread and a connection of its own.  The store's thread
shares its CPU with the proxy's traffic as SQLite's reactor does, so ingest
paces its Python work per flow the same way (:mod:`capture.sessiond.pacing`).
When the database cannot be reached every call fails at once with
:class:`Unavailable` naming the cause, and the store reconnects by itself:
the proxies keep their flows queued (and spilled) until ingest succeeds again.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg

from capture import filters
from capture.flow import Flow, iso_time
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
    INT64,
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
    flow_row,
    link_targets,
    plan,
    plain,
    session_dict,
    stats_result,
    summary_from_row,
)

SCHEMA_VERSION = 4
CHANNEL = "capture_sessions"

# How often a failed connection is tried again, and how long one attempt may take
# (a connect_timeout in the URL takes precedence).
RETRY_INTERVAL = 1.0
CONNECT_TIMEOUT = 5
# The planner's statistics are renewed by the store itself each time the flows it
# stored since the last renewal reach as many as the table held then (and at
# least ANALYZE_MIN): a session that grows from nothing would otherwise be
# planned from no statistics until autovacuum comes by, 5 to 25 times slower.
ANALYZE_MIN = 1000
# How long a call waits for the server to answer a connection attempt in progress,
# and then for the schema check; the attempt itself goes on in its own thread.
ANSWER_WAIT = 1.0
PREPARE_WAIT = 60.0
# The listener's check that its connection still works, between waits for notifications.
HEARTBEAT = 2.0
_SCAN_CHUNK = 500
# Any 64-bit key, the same on every appliance: only one migrates at a time.
_MIGRATION_LOCK = 0x63617074757265

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL,
            state text NOT NULL,
            created double precision NOT NULL,
            updated double precision NOT NULL,
            stopped double precision,
            clients text NOT NULL,
            filter text NOT NULL,
            capture_responses boolean NOT NULL,
            cookies_enabled boolean NOT NULL,
            cookie_domains text NOT NULL,
            flow_count bigint NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX sessions_state ON sessions (state)",
        # An identity is never reused, so a stale flow id never names another flow.
        """CREATE TABLE flows (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            instance text NOT NULL,
            seq bigint NOT NULL,
            appliance text NOT NULL,
            time double precision NOT NULL,
            client text NOT NULL,
            client_port bigint NOT NULL,
            method text NOT NULL,
            scheme text NOT NULL,
            host text NOT NULL,
            port bigint NOT NULL,
            path text NOT NULL,
            url text NOT NULL,
            status bigint NOT NULL,
            request_size bigint NOT NULL,
            response_size bigint NOT NULL,
            content_type text NOT NULL,
            duration_ms double precision,
            error text NOT NULL,
            kind text NOT NULL,
            has_response smallint NOT NULL,
            request_type text,
            response_type text,
            plain smallint NOT NULL,
            asset boolean NOT NULL,
            UNIQUE (instance, seq)
        )""",
        "CREATE INDEX flows_time ON flows (time)",
        "CREATE TABLE flow_records (id bigint PRIMARY KEY, record bytea NOT NULL)",
        """CREATE TABLE session_flows (
            session_id bigint NOT NULL,
            time double precision NOT NULL,
            flow_id bigint NOT NULL,
            PRIMARY KEY (session_id, time, flow_id)
        )""",
        "CREATE INDEX session_flows_flow ON session_flows (flow_id)",
        "CREATE TABLE delivered (instance text PRIMARY KEY, last_seq bigint NOT NULL)",
    ),
    # v2: WebSocket flows, stored while they are open, and their messages.
    (
        """CREATE TABLE websockets (
            flow_id bigint PRIMARY KEY,
            instance text NOT NULL,
            open_seq bigint NOT NULL,
            message_count bigint NOT NULL DEFAULT 0,
            close bytea,
            UNIQUE (instance, open_seq)
        )""",
        """CREATE TABLE websocket_messages (
            flow_id bigint NOT NULL,
            n bigint NOT NULL,
            record bytea NOT NULL,
            PRIMARY KEY (flow_id, n)
        )""",
    ),
    # v3: which proxy process opened each WebSocket flow, so that its next run closes
    # what an earlier one left open (close_orphans); the open ones found by their own index.
    (
        "ALTER TABLE websockets ADD COLUMN worker integer NOT NULL DEFAULT 0",
        "CREATE INDEX websockets_open ON websockets (worker) WHERE close IS NULL",
    ),
    # v4: no index on flows (time): listings and idle sessions read the time in
    # session_flows, so it only cost every insert a write.
    ("DROP INDEX IF EXISTS flows_time",),
)
_OPS = (None, "open", "messages", "close")

# A batch's flows are copied (``COPY``, binary) straight into their tables, ids
# drawn from the identity's sequence first: every byte is written once, and the
# flows need no temporary table, no join and no TOAST of a record twice.  Only
# flows past the instance's delivery mark, locked for the transaction, are
# copied, so none can already be there; the unique (instance, seq) index would
# refuse the batch rather than store a flow twice.
# ``gone`` holds the flows a session's deletion may orphan, per connection.
_GONE = "CREATE TEMPORARY TABLE IF NOT EXISTS gone (flow_id bigint PRIMARY KEY)"
TEMP_VACUUM = 2000
_FLOW_COLUMNS = (
    "time, client, client_port, method, scheme, host, port, path, url, status, request_size,"
    " response_size, content_type, duration_ms, error, kind, has_response, request_type,"
    " response_type, plain, asset"
)
_FLOW_IDS = "SELECT nextval(pg_get_serial_sequence('flows', 'id')) FROM generate_series(1, %s)"
# Binary: a record goes as it is (text would send bytea as hex, twice its size,
# for the server to decode), and each value is written by psycopg's C dumpers.
_COPY_FLOWS = f"COPY flows (id, instance, seq, appliance, {_FLOW_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_FLOW_TYPES = (
    "int8", "text", "int8", "text", "float8", "text", "int8", "text", "text", "text", "int8", "text", "text", "int8",
    "int8", "int8", "text", "float8", "text", "text", "int2", "text", "text", "int2", "bool",
)
_COPY_RECORDS = "COPY flow_records (id, record) FROM STDIN (FORMAT BINARY)"
_COPY_LINKS = "COPY session_flows (session_id, time, flow_id) FROM STDIN (FORMAT BINARY)"
_COUNT_FLOWS = ("UPDATE sessions SET flow_count = flow_count + c.n FROM unnest(%s::bigint[], %s::bigint[]) AS c(id, n)"
                " WHERE sessions.id = c.id")
_UPDATE_FLOW = (
    "UPDATE flows SET time = %s, client = %s, client_port = %s, method = %s, scheme = %s, host = %s, port = %s,"
    " path = %s, url = %s, status = %s, request_size = %s, response_size = %s, content_type = %s,"
    " duration_ms = %s, error = %s, kind = %s, has_response = %s, request_type = %s, response_type = %s,"
    " plain = %s, asset = %s WHERE id = %s"
)

_SESSION_FLOWS = "FROM session_flows sf JOIN flows f ON f.id = sf.flow_id WHERE sf.session_id = %s"
_STATUS_CLASS = (
    "CASE WHEN f.status BETWEEN 100 AND 599 THEN (f.status / 100) || 'xx'"
    " WHEN f.status != 0 THEN 'other'"
    " WHEN f.error != '' THEN 'error'"
    " ELSE 'none' END"
)
_STAT_GROUPS = {
    "by_method": "f.method",
    "by_host": "lower(f.host)",
    "by_status_class": _STATUS_CLASS,
    "by_content_type": "lower(f.content_type)",
    "by_client": "f.client",
}

_STAT_KEYS = ", ".join(_STAT_GROUPS.values())
_STATS = (
    f"SELECT GROUPING({_STAT_KEYS}), {_STAT_KEYS}, count(*), coalesce(sum(f.request_size), 0),"
    " coalesce(sum(f.response_size), 0), min(sf.time), max(sf.time), coalesce(sum(f.duration_ms), 0)"
    f" {_SESSION_FLOWS} GROUP BY GROUPING SETS ({', '.join(f'({key})' for key in _STAT_GROUPS.values())}, ())"
)
# GROUPING() sets a bit for each key a row is not grouped by, the first key's the highest.
_ALL_GROUPED = (1 << len(_STAT_GROUPS)) - 1
_STAT_BY_GROUPING = {_ALL_GROUPED ^ (1 << (len(_STAT_GROUPS) - 1 - i)): name for i, name in enumerate(_STAT_GROUPS)}

DIALECT = query.Dialect(
    param="%s",
    contains="strpos(lower({column}), {param}) > 0",
    like="{column} ILIKE {param} ESCAPE '\\'",
    # No Python in the server: a real regex runs on the decoded flow.
    search=None,
    asset="f.asset",
    nulls=True,
    # Text sorts in code point order, as SQLite's, whatever the database's locale.
    text_order=' COLLATE "C"',
)
_ASSET = filters.Flag("a")
# PostgreSQL's limit on one statement's parameters.
_MAX_PARAMS = 65535


class PostgresStore:
    """Sessions and flows in a PostgreSQL database that several appliances share.

    ``appliance`` is the identity stamped on every flow this store ingests.
    Calls must come one at a time from one thread; :meth:`watch` starts the
    listener thread, whose callback runs in that thread.
    """

    #: Calls wait on the network: run them off the reactor thread.
    blocking = True

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        appliance: str = "",
        connect_timeout: int = CONNECT_TIMEOUT,
        pace: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._pace = pace or Pacer()
        self._clock = clock
        self._appliance = appliance
        self._appliance_plain = plain(appliance)
        self._connect_timeout = _url_timeout(url) or connect_timeout
        self.rejected = 0
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # guards the health fields, read from any thread
        self._reachable: bool | None = None
        self._error = ""
        self._since = clock()
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        self._temp_rows = 0  # rows deleted from the temporary tables since their last VACUUM
        self._unanalyzed = 0  # flows stored since the statistics were last renewed
        self._analyzed: float | None = None  # the flows the table held then (None: not read yet)
        # Connecting starts now, in the background: the session manager listens at once
        # whether or not the database answers.
        self._attempt: _Attempt | None = _Attempt(self._open)

    # health and notifications -----------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Backend, whether the database answers, why not, and since when."""
        with self._lock:
            return {
                "backend": "postgresql",
                "url": _safe_url(self._url),
                "reachable": bool(self._reachable),
                "error": None if self._reachable else (self._error or "not connected yet"),
                "since": iso_time(self._since),
            }

    def watch(self, callback: Callable[[str], None]) -> None:
        """Start the listener: ``callback("sessions")`` when a session changes anywhere,
        ``callback("health")`` when the database goes away or comes back (then re-read
        everything: notifications sent while disconnected are lost)."""
        if self._listener is not None:
            return
        self._listener = threading.Thread(target=self._listen, args=(callback,), name="store-listener", daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._closing.set()
        if self._listener is not None:
            # A listener still waiting on a silent server is a daemon thread: left to the exit.
            self._listener.join(timeout=HEARTBEAT + 1)
        attempt, self._attempt = self._attempt, None
        if attempt is not None and attempt.done.is_set() and attempt.conn is not None:
            attempt.conn.close()  # made after the last call; one still under way closes its own
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PostgresStore:
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
        if "\x00" in filter:
            raise Invalid("filter must not contain NUL characters")
        if "\x00" in name:
            raise Invalid("name must not contain NUL characters")
        if not isinstance(capture_responses, bool):
            raise Invalid("capture_responses must be true or false")
        enabled, domains = check_cookies(cookies)
        now = self._clock()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO sessions (name, state, created, updated, stopped, clients, filter,"
                " capture_responses, cookies_enabled, cookie_domains, flow_count)"
                f" VALUES (%s, 'capturing', %s, %s, NULL, %s, %s, %s, %s, %s, 0) RETURNING {SESSION_COLUMNS}",
                (name, now, now, json.dumps(client_list), filter, capture_responses, enabled, json.dumps(domains)),
            )
            row = cur.fetchone()
            self._notify(cur, row[0])
        return session_dict(row)

    def get_session(self, session_id: int) -> dict[str, Any]:
        with self._read() as cur:
            return session_dict(self._session_row(cur, session_id))

    def list_sessions(self) -> list[dict[str, Any]]:
        with self._read() as cur:
            cur.execute(f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY id")
            return [session_dict(row) for row in cur.fetchall()]

    def rename(self, session_id: int, name: str) -> dict[str, Any]:
        name = check_name(name)
        if "\x00" in name:
            raise Invalid("name must not contain NUL characters")
        with self._write() as cur:
            self._session_row(cur, session_id, lock=True)
            cur.execute(f"UPDATE sessions SET name = %s, updated = %s WHERE id = %s RETURNING {SESSION_COLUMNS}",
                        (name, self._clock(), session_id))
            row = cur.fetchone()
            self._notify(cur, session_id)
        return session_dict(row)

    def pause(self, session_id: int) -> dict[str, Any]:
        return self._transition(session_id, ("capturing",), "paused", "pause")

    def resume(self, session_id: int) -> dict[str, Any]:
        return self._transition(session_id, ("paused",), "capturing", "resume")

    def stop(self, session_id: int) -> dict[str, Any]:
        return self._transition(session_id, ("capturing", "paused"), "stopped", "stop")

    def clear(self, session_id: int) -> dict[str, Any]:
        with self._write() as cur:
            row = self._session_row(cur, session_id, lock=True)
            if row[2] == "stopped":
                raise Conflict(f"session {session_id} is stopped; it can no longer be cleared")
            self._unlink(cur, session_id)
            cur.execute(
                f"UPDATE sessions SET flow_count = 0, updated = %s WHERE id = %s RETURNING {SESSION_COLUMNS}",
                (self._clock(), session_id),
            )
            row = cur.fetchone()
            self._notify(cur, session_id)
        return session_dict(row)

    def delete(self, session_id: int) -> None:
        with self._write() as cur:
            self._session_row(cur, session_id, lock=True)
            self._unlink(cur, session_id)
            cur.execute("DELETE FROM sessions WHERE id = %s", (session_id,))
            self._notify(cur, session_id)

    def idle_sessions(self, before: float) -> list[int]:
        """Sessions with no change and no flow since ``before`` (seconds since the epoch)."""
        with self._read() as cur:
            cur.execute(
                "SELECT s.id FROM sessions s WHERE s.updated < %s AND NOT EXISTS"
                " (SELECT 1 FROM session_flows sf WHERE sf.session_id = s.id AND sf.time >= %s) ORDER BY s.id",
                (before, before),
            )
            return [session_id for (session_id,) in cur.fetchall()]

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
        """Store a batch from one proxy instance, each flow once however often it comes.

        Flows (and live flows' ``open`` items) are copied and moved in one
        statement; a live flow's ``messages`` and ``close`` items follow, in
        order, naming the flow by the sequence number that opened it.  The
        instance's mark row is locked first, so two session managers replaying
        the same spill file take turns and the second skips what the first stored.
        ``worker`` and ``ended``: see the interface (a live flow of a run that
        is over is stored closed).
        """
        if not isinstance(instance, str) or not instance or "\x00" in instance:
            raise Invalid("instance must be a non-empty string")
        if not isinstance(batch, (list, tuple)):
            raise Invalid("batch must be a list")
        check_worker(worker, ended)
        orphan_close = pack_close(PROXY_STOPPED) if ended else None
        rejected = 0
        stored: list[tuple[int, list[int], Flow]] = []
        added: dict[int, list[Any]] = {}
        with self._write() as cur:
            named = {sid for item in batch if isinstance(item, (list, tuple)) and len(item) in (3, 5)
                     and isinstance(item[1], (list, tuple)) for sid in item[1] if type(sid) is int
                     and INT64[0] <= sid <= INT64[1]}
            first_mark, existing = self._lock_batch(cur, instance, named)
            mark = first_mark
            rows: list[tuple[Any, ...]] = []
            opened: set[int] = set()
            live: list[tuple[str, Any, Any]] = []
            for item in batch:
                op = ref = None
                try:
                    if len(item) == 5:
                        seq, session_ids, record, op, ref = item
                    else:
                        seq, session_ids, record = item
                except (TypeError, ValueError):
                    rejected += 1
                    continue
                if type(seq) is not int or not INT64[0] <= seq <= INT64[1] or op not in _OPS:
                    rejected += 1
                    continue
                if seq <= mark:
                    continue
                mark = seq
                if op in ("messages", "close"):
                    live.append((op, ref, record))
                    continue
                try:
                    targets = link_targets(session_ids, existing)
                    flow = Flow.unpack(record)
                    columns = _pg_columns(flow_row(flow), self._appliance_plain)
                except Exception:
                    rejected += 1
                    continue
                if not targets:
                    continue
                rows.append((seq, targets, columns, _ASSET(flow), record, flow))
                self._pace()
                if op == "open":
                    opened.add(seq)
            if rows:
                stored = self._copy_flows(cur, instance, rows)
                sockets = [(flow_id, instance, seq, worker, orphan_close)
                           for (flow_id, _, _), (seq, *_) in zip(stored, rows) if seq in opened]
                if sockets:
                    cur.executemany("INSERT INTO websockets (flow_id, instance, open_seq, worker, close)"
                                    " VALUES (%s, %s, %s, %s, %s)", sockets)
            for op, ref, record in live:
                try:
                    with cur.connection.transaction():  # a savepoint: a bad item costs only itself
                        self._live(cur, instance, op, ref, record, stored, added)
                except (ValueError, TypeError, psycopg.DataError):
                    rejected += 1
            if mark != first_mark:
                cur.execute("UPDATE delivered SET last_seq = %s WHERE instance = %s", (mark, instance))
        self.rejected += rejected
        self._unanalyzed += len(stored)
        if self._unanalyzed >= ANALYZE_MIN:
            self._renew_statistics()
        if on_stored is not None:
            for flow_id, session_ids, flow in stored:
                on_stored(flow_id, session_ids, flow)
        if on_messages is not None:
            for flow_id, (session_ids, count, new_count) in added.items():
                on_messages(flow_id, session_ids, count, new_count)
        return mark

    def _copy_flows(self, cur: psycopg.Cursor, instance: str,
                    rows: list[tuple[Any, ...]]) -> list[tuple[int, list[int], Flow]]:
        """Copy new flows, their records and session links, and count them in their sessions.

        ``rows`` are (seq, session ids, columns, asset, record, flow) in seq
        order; the flows get ids in that order.  (flow id, session ids, flow) each.
        """
        cur.execute(_FLOW_IDS, (len(rows),))
        ids = sorted(flow_id for (flow_id,) in cur.fetchall())
        appliance, pace = self._appliance, self._pace
        counts: dict[int, int] = {}
        with cur.copy(_COPY_FLOWS) as copy:
            copy.set_types(_COPY_FLOW_TYPES)
            for flow_id, (seq, _, columns, asset, _, _) in zip(ids, rows):
                copy.write_row((flow_id, instance, seq, appliance, *columns, asset))
                pace()
        with cur.copy(_COPY_RECORDS) as copy:
            copy.set_types(("int8", "bytea"))
            for flow_id, row in zip(ids, rows):
                copy.write_row((flow_id, row[4]))
                pace()
        with cur.copy(_COPY_LINKS) as copy:
            copy.set_types(("int8", "float8", "int8"))
            for flow_id, (_, targets, columns, _, _, _) in zip(ids, rows):
                for session_id in targets:
                    copy.write_row((session_id, columns[0], flow_id))
                    counts[session_id] = counts.get(session_id, 0) + 1
        cur.execute(_COUNT_FLOWS, (list(counts), list(counts.values())))
        return [(flow_id, row[1], row[5]) for flow_id, row in zip(ids, rows)]

    def _live(self, cur: psycopg.Cursor, instance: str, op: str, ref: Any, record: Any,
              stored: list[tuple[int, list[int], Flow]], added: dict[int, list[Any]]) -> None:
        """Messages for, or the end of, the live flow item ``ref`` opened; nothing if it is not stored."""
        if type(ref) is not int or not INT64[0] <= ref <= INT64[1]:
            raise ValueError("a live item names its flow by an integer")
        cur.execute("SELECT flow_id, message_count FROM websockets WHERE instance = %s AND open_seq = %s FOR UPDATE",
                    (instance, ref))
        row = cur.fetchone()
        if op == "messages":
            batch = unpack_messages(record)
            if row is None or not batch:
                return
            flow_id, count = row
            cur.executemany(
                "INSERT INTO websocket_messages (flow_id, n, record) VALUES (%s, %s, %s)",
                [(flow_id, count + i, pack_message(message)) for i, message in enumerate(batch, 1)],
            )
            cur.execute("UPDATE websockets SET message_count = %s WHERE flow_id = %s", (count + len(batch), flow_id))
            entry = added.get(flow_id)
            if entry is None:
                entry = added[flow_id] = [self._holders(cur, flow_id), count, 0]
            entry[1] = count + len(batch)
            entry[2] += len(batch)
            return
        flow_record, close_record = unpack_live_close(record)
        flow = Flow.unpack(flow_record)
        columns = _pg_columns(flow_row(flow), self._appliance_plain)
        if row is None:
            return
        flow_id = row[0]
        cur.execute(_UPDATE_FLOW, (*columns, _ASSET(flow), flow_id))
        cur.execute("UPDATE flow_records SET record = %s WHERE id = %s", (flow_record, flow_id))
        cur.execute("UPDATE websockets SET close = %s WHERE flow_id = %s", (close_record, flow_id))
        stored.append((flow_id, self._holders(cur, flow_id), flow))

    def _vacuum_temporary(self) -> None:
        """Reclaim the space of the rows deleted from this connection's temporary tables."""
        conn = self._conn
        self._temp_rows = 0
        if conn is None:
            return
        try:
            conn.execute("VACUUM gone")
        except psycopg.Error as e:
            if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
                self._lost(e)

    def _renew_statistics(self) -> None:
        """ANALYZE the tables listings plan from, once the new flows match what they held.

        SKIP_LOCKED: when another appliance (or autovacuum) is at it, this
        one need not wait.  A failure costs only the renewal.
        """
        conn = self._conn
        if conn is None:
            return
        try:
            if self._analyzed is None:
                self._analyzed = max(0.0, conn.execute(
                    "SELECT reltuples FROM pg_class WHERE oid = 'flows'::regclass").fetchone()[0])
            if self._unanalyzed < max(ANALYZE_MIN, self._analyzed):
                return
            conn.execute("ANALYZE (SKIP_LOCKED) flows, session_flows")
            self._analyzed = max(0.0, conn.execute(
                "SELECT reltuples FROM pg_class WHERE oid = 'flows'::regclass").fetchone()[0])
            self._unanalyzed = 0
        except psycopg.Error as e:
            if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
                self._lost(e)

    @staticmethod
    def _lock_batch(cur: psycopg.Cursor, instance: str, named: set[int]) -> tuple[int, set[int]]:
        """The instance's delivery mark and which of the ``named`` sessions exist, all locked until the commit.

        One statement: the mark's row first (made on the instance's first
        batch), then the sessions in id order, so a session deleted or
        cleared elsewhere waits for this batch.
        """
        cur.execute(
            "SELECT (SELECT last_seq FROM delivered WHERE instance = %s FOR UPDATE),"
            " ARRAY(SELECT id FROM sessions WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE)",
            (instance, sorted(named)),
        )
        mark, existing = cur.fetchone()
        if mark is None:
            cur.execute("INSERT INTO delivered (instance, last_seq) VALUES (%s, 0) ON CONFLICT DO NOTHING", (instance,))
            cur.execute("SELECT last_seq FROM delivered WHERE instance = %s FOR UPDATE", (instance,))
            mark = cur.fetchone()[0]
        return mark, set(existing)

    @staticmethod
    def _holders(cur: psycopg.Cursor, flow_id: int) -> list[int]:
        cur.execute("SELECT session_id FROM session_flows WHERE flow_id = %s ORDER BY session_id", (flow_id,))
        return [session_id for (session_id,) in cur.fetchall()]

    def messages(self, flow_id: int, offset: int = 0, limit: int = MAX_PAGE) -> tuple[list[WebSocketMessage], int]:
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        check_page(limit, offset)
        if not INT64[0] <= flow_id <= INT64[1]:
            raise NotFound(f"no flow {flow_id}")
        with self._read() as cur:
            return self._messages(cur, flow_id, offset, limit)

    def _messages(self, cur: psycopg.Cursor, flow_id: int, offset: int, limit: int) -> tuple[list[WebSocketMessage], int]:
        cur.execute("SELECT message_count FROM websockets WHERE flow_id = %s", (flow_id,))
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT 1 FROM flows WHERE id = %s", (flow_id,))
            if cur.fetchone() is None:
                raise NotFound(f"no flow {flow_id}")
            return [], 0
        cur.execute("SELECT record FROM websocket_messages WHERE flow_id = %s AND n > %s ORDER BY n LIMIT %s",
                    (flow_id, offset, limit))
        return [unpack_message(bytes(record)) for (record,) in cur.fetchall()], row[0]

    def _socket_messages(self, flow_id: int, cur: psycopg.Cursor | None = None) -> Iterator[WebSocketMessage]:
        """Every stored message of a WebSocket flow in order, a page at a time (for body filters).

        On ``cur`` inside a caller's read, else each page its own short read.
        """
        last = 0
        while True:
            with nullcontext(cur) if cur is not None else self._read() as reader:
                reader.execute("SELECT n, record FROM websocket_messages WHERE flow_id = %s AND n > %s ORDER BY n"
                               " LIMIT %s", (flow_id, last, _SCAN_CHUNK))
                rows = reader.fetchall()
            for _, record in rows:
                yield unpack_message(bytes(record))
            if len(rows) < _SCAN_CHUNK:
                return
            last = rows[-1][0]

    def websocket_close(self, flow_id: int) -> WebSocketClose | None:
        if type(flow_id) is not int or not INT64[0] <= flow_id <= INT64[1]:
            return None
        with self._read() as cur:
            return self._close(cur, flow_id)

    @staticmethod
    def _close(cur: psycopg.Cursor, flow_id: int) -> WebSocketClose | None:
        cur.execute("SELECT close FROM websockets WHERE flow_id = %s", (flow_id,))
        row = cur.fetchone()
        return None if row is None or row[0] is None else unpack_close(bytes(row[0]))

    def close_orphans(
        self, instance: str, worker: int, workers: int | None = None
    ) -> list[tuple[int, list[int], Flow]]:
        """Close the open WebSocket flows earlier runs of this proxy process left; never another appliance's."""
        beyond = check_orphans(instance, worker, workers)
        closed = []
        with self._write() as cur:
            cur.execute(
                "UPDATE websockets w SET close = %s FROM flows f WHERE f.id = w.flow_id AND w.close IS NULL"
                " AND w.instance <> %s AND (w.worker = %s OR w.worker >= %s) AND f.appliance = %s RETURNING w.flow_id",
                (pack_close(PROXY_STOPPED), instance, worker, beyond, self._appliance),
            )
            for flow_id in sorted(flow_id for (flow_id,) in cur.fetchall()):
                closed.append((flow_id, self._holders(cur, flow_id), self._load(cur, flow_id)[1]))
        return closed

    def last_seq(self, instance: str) -> int:
        with self._read() as cur:
            cur.execute("SELECT last_seq FROM delivered WHERE instance = %s", (instance,))
            row = cur.fetchone()
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
        check_page(limit, offset)
        try:
            ordering = query.order_by(sort, order, DIALECT)
        except query.QueryError as e:
            raise Invalid(str(e)) from None
        plan = _plan(filter)
        residual = combine(plan.residual, predicate)
        where = _SESSION_FLOWS if plan.where == query.TRUE else f"{_SESSION_FLOWS} AND {plan.where}"
        params = (session_id, *plan.params)
        with self._read() as cur:
            flow_count = self._session_row(cur, session_id)[11]
            if residual is not None and predicate is None and plan.plain_exact:
                # The SQL is exact on plain rows: when every candidate is one, it answers alone.
                cur.execute(f"SELECT EXISTS (SELECT 1 {where} AND f.plain = 0)", params)
                if not cur.fetchone()[0]:
                    residual = None
            if residual is None and plan.where == query.TRUE and sort == "time":
                # The page's rows found in the session's index alone; only they are joined.
                cur.execute(
                    f"SELECT {SUMMARY_COLUMNS} FROM (SELECT sf.time, sf.flow_id FROM session_flows sf"
                    f" WHERE sf.session_id = %s ORDER BY {ordering} LIMIT %s OFFSET %s) sf"
                    f" JOIN flows f ON f.id = sf.flow_id ORDER BY {ordering}",
                    (session_id, limit, offset),
                )
            elif residual is None:
                cur.execute(
                    f"SELECT {SUMMARY_COLUMNS} {where} ORDER BY {ordering} LIMIT %s OFFSET %s",
                    (*params, limit, offset),
                )
            if residual is None:
                rows = cur.fetchall()
                page = [summary_from_row(row) for row in rows]
                if plan.where == query.TRUE:
                    total = flow_count
                elif 0 < len(rows) < limit or (not rows and offset == 0):
                    total = offset + len(rows)
                else:
                    cur.execute(f"SELECT count(*) {where}", params)
                    total = cur.fetchone()[0]
                return page, total
            test = _row_test(residual) if predicate is None else None
            if test is not None:
                return self._column_page(cur, f"{where} ORDER BY {ordering}", params, residual, test, limit, offset)
            page = []
            total = 0
            view = FilterView(plan.residual, lambda flow_id: self._socket_messages(flow_id, cur))
            for flow_id, appliance, flow in self._candidates(cur, f"SELECT f.id {where} ORDER BY {ordering}", params):
                if not residual(view(flow_id, appliance, flow)):
                    continue
                if offset <= total < offset + limit:
                    page.append({"id": flow_id, **flow.summary(), "appliance": appliance or None})
                total += 1
            return page, total

    def _column_page(self, cur: psycopg.Cursor, rest: str, params: tuple[Any, ...], residual: filters.Filter,
                     test: Callable[[tuple[Any, ...]], bool], limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page where the residual needs only summary columns: it runs on them, no record is read.

        The columns hold exactly the text the filter searches on a plain row;
        another row (NUL in a text, say) is decoded and tested as a flow.
        """
        matches: list[int] = []
        total = 0
        with cur.connection.cursor(name="capture_scan") as scan:
            scan.itersize = _SCAN_ROWS
            scan.execute(f"SELECT f.id, f.plain, {_ROW_COLUMNS} {rest}", params)
            for row in scan:
                if row[1]:
                    if not test(row[2:]):
                        continue
                elif not self._decoded_test(cur, row[0], residual):
                    continue
                if offset <= total < offset + limit:
                    matches.append(row[0])
                total += 1
        if not matches:
            return [], total
        cur.execute(f"SELECT {SUMMARY_COLUMNS}, f.plain FROM flows f WHERE f.id = ANY(%s)", (matches,))
        rows = {row[0]: row for row in cur.fetchall()}
        page = []
        for flow_id in matches:
            row = rows[flow_id]
            if row[-1]:
                page.append(summary_from_row(row[:-1]))
            else:
                appliance, flow = self._load(cur, flow_id)
                page.append({"id": flow_id, **flow.summary(), "appliance": appliance or None})
        return page, total

    def _decoded_test(self, cur: psycopg.Cursor, flow_id: int, residual: filters.Filter) -> bool:
        appliance, flow = self._load(cur, flow_id)
        view = FilterView(residual, lambda flow_id: self._socket_messages(flow_id, cur))
        return residual(view(flow_id, appliance, flow))

    def iter_flows(self, session_id: int, filter: str | filters.Filter = "") -> Iterator[tuple[int, Flow]]:
        plan = _plan(filter)
        self.get_session(session_id)
        return self._scan(session_id, plan)

    def stats(self, session_id: int) -> dict[str, Any]:
        """One pass over the session's flows: the totals and every breakdown (GROUPING SETS)."""
        with self._read() as cur:
            self._session_row(cur, session_id)
            cur.execute(_STATS, (session_id,))
            groups: dict[str, list[tuple[Any, ...]]] = {name: [] for name in _STAT_GROUPS}
            totals = (0, 0, 0, None, None, 0)
            for grouping, *keys, count, sent, received, first, last, duration in cur.fetchall():
                if grouping == _ALL_GROUPED:
                    totals = (count, sent, received, first, last, duration)
                else:
                    name = _STAT_BY_GROUPING[grouping]
                    groups[name].append((keys[list(_STAT_GROUPS).index(name)], count, sent, received))
        for rows in groups.values():
            # Most first, then by key in code point order (as COLLATE "C" and SQLite sort).
            rows.sort(key=lambda row: (-row[1], row[0]))
        return stats_result(session_id, totals, groups)

    def get_flow(self, flow_id: int) -> dict[str, Any]:
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        with self._read() as cur:
            appliance, flow = self._load(cur, flow_id)
            session_ids = self._holders(cur, flow_id)
            detail = {"id": flow_id, "session_ids": session_ids, **flow.detail(), "appliance": appliance or None}
            grpc = grpc_section(flow)
            if grpc is not None:
                detail["grpc"] = grpc
            if flow.kind == "websocket":
                messages, count = self._messages(cur, flow_id, 0, DETAIL_MESSAGES)
                detail["websocket"] = websocket_section(messages, count, self._close(cur, flow_id))
        return detail

    def load_flow(self, flow_id: int) -> Flow:
        if type(flow_id) is not int:
            raise Invalid("flow id must be an integer")
        with self._read() as cur:
            return self._load(cur, flow_id)[1]

    # connection -------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        """The writer's connection; Unavailable at once, or within ANSWER_WAIT, while there is none.

        Connections are made by an attempt in its own thread (:class:`_Attempt`),
        so no call waits on a host that does not answer: a call waits at most
        ANSWER_WAIT for the server to answer (once per attempt), then for the
        schema check.  After a failed attempt a new one starts at most every
        RETRY_INTERVAL; calls in between fail at once with its reason.
        """
        if self._conn is not None and not self._conn.closed:
            return self._conn
        attempt = self._attempt
        if attempt is None or (attempt.done.is_set() and attempt.conn is None
                               and time.monotonic() - attempt.started >= RETRY_INTERVAL):
            attempt = self._attempt = _Attempt(self._open)
        if not attempt.done.is_set() and not attempt.waited:
            attempt.waited = True
            # Settled: the server answered, or the attempt is over (a refused connection
            # ends it at once, and the call fails at once with its reason).
            if attempt.settled.wait(ANSWER_WAIT) and attempt.answered.is_set():
                attempt.done.wait(PREPARE_WAIT)
        if attempt.done.is_set():
            if attempt.conn is not None:
                self._conn, self._attempt = attempt.conn, None
                return self._conn
            error = attempt.error or Unavailable("database unreachable")
            raise type(error)(str(error))
        if attempt.answered.is_set():
            reason = f"the database answered but its schema was not ready within {PREPARE_WAIT:g} s"
        else:
            reason = f"no answer within {ANSWER_WAIT:g} s, still trying"
        self._set_health(False, reason)
        raise Unavailable(f"database unreachable: {reason}")

    def _open(self, answered: threading.Event) -> psycopg.Connection:
        """Connect and bring the schema up to date (in an attempt's thread); health says how it went."""
        try:
            conn = _connect(self._url, self._connect_timeout)
            answered.set()
            try:
                _migrate(conn)
                conn.execute(_GONE)
                if self._closing.is_set():
                    raise Unavailable("the store is closing")
            except BaseException:
                conn.close()
                raise
        except psycopg.OperationalError as e:
            self._set_health(False, _reason(e))
            raise Unavailable(f"database unreachable: {_reason(e)}") from None
        except psycopg.Error as e:
            self._set_health(False, _reason(e))
            raise StoreError(f"database refused the schema: {_reason(e)}") from None
        self._set_health(True, "")
        return conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor]:
        """One transaction; Unavailable (and a new connection next time) when the database goes away."""
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self._lost(e)
            raise Unavailable(f"database unreachable: {_reason(e)}") from None
        except psycopg.errors.SerializationFailure as e:
            raise Unavailable(f"database busy, try again: {_reason(e)}") from None
        except psycopg.Error as e:
            raise StoreError(f"database error: {_reason(e)}") from None

    _read = _write

    def _lost(self, error: BaseException) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._set_health(False, _reason(error))

    def _set_health(self, reachable: bool, error: str) -> None:
        with self._lock:
            if reachable != self._reachable:
                self._since = self._clock()
            self._reachable = reachable
            self._error = error

    def _listen(self, callback: Callable[[str], None]) -> None:
        """The listener thread: LISTEN, hand notifications on, reconnect after a loss."""
        while not self._closing.is_set():
            try:
                conn = _connect(self._url, self._connect_timeout, autocommit=True)
            except psycopg.Error as e:
                self._report(callback, False, _reason(e))
                self._closing.wait(RETRY_INTERVAL)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._report(callback, True, "")
                    callback("sessions")  # what changed while nobody listened
                    while not self._closing.is_set():
                        # Each notification as it comes; between them, at most HEARTBEAT of quiet.
                        for _ in conn.notifies(timeout=HEARTBEAT):
                            callback("sessions")
                        conn.execute("SELECT 1")
            except psycopg.Error as e:
                self._report(callback, False, _reason(e))
                self._closing.wait(RETRY_INTERVAL)

    def _report(self, callback: Callable[[str], None], reachable: bool, error: str) -> None:
        """Note what the listener found; tell the session manager when reachability changed."""
        with self._lock:
            was = self._reachable
        self._set_health(reachable, error)
        if was != reachable:
            callback("health")

    # internals ------------------------------------------------------------

    def _notify(self, cur: psycopg.Cursor, session_id: int) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(session_id)))

    def _session_row(self, cur: psycopg.Cursor, session_id: int, lock: bool = False) -> tuple[Any, ...]:
        if type(session_id) is not int:
            raise Invalid("session id must be an integer")
        if not INT64[0] <= session_id <= INT64[1]:
            raise NotFound(f"no session {session_id}")
        cur.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = %s{' FOR UPDATE' if lock else ''}",
                    (session_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no session {session_id}")
        return row

    def _transition(self, session_id: int, allowed: tuple[str, ...], target: str, verb: str) -> dict[str, Any]:
        with self._write() as cur:
            state = self._session_row(cur, session_id, lock=True)[2]
            if state not in allowed:
                raise Conflict(
                    f"session {session_id} is {state}; only a {' or '.join(allowed)} session can {verb}"
                )
            now = self._clock()
            cur.execute(
                f"UPDATE sessions SET state = %s, updated = %s, stopped = %s WHERE id = %s RETURNING {SESSION_COLUMNS}",
                (target, now, now if target == "stopped" else None, session_id),
            )
            row = cur.fetchone()
            self._notify(cur, session_id)
        return session_dict(row)

    def _unlink(self, cur: psycopg.Cursor, session_id: int) -> None:
        """Remove a session's links, then the flows no other session holds."""
        cur.execute("INSERT INTO gone (flow_id) SELECT flow_id FROM session_flows WHERE session_id = %s"
                    " ON CONFLICT DO NOTHING", (session_id,))
        cur.execute("DELETE FROM session_flows WHERE session_id = %s", (session_id,))
        cur.execute("DELETE FROM gone g WHERE EXISTS (SELECT 1 FROM session_flows sf WHERE sf.flow_id = g.flow_id)")
        cur.execute("DELETE FROM flow_records WHERE id IN (SELECT flow_id FROM gone)")
        cur.execute("DELETE FROM websocket_messages WHERE flow_id IN (SELECT flow_id FROM gone)")
        cur.execute("DELETE FROM websockets WHERE flow_id IN (SELECT flow_id FROM gone)")
        cur.execute("DELETE FROM flows WHERE id IN (SELECT flow_id FROM gone)")
        cur.execute("DELETE FROM gone")
        self._temp_rows += cur.rowcount

    def _load(self, cur: psycopg.Cursor, flow_id: int) -> tuple[str, Flow]:
        if not INT64[0] <= flow_id <= INT64[1]:
            raise NotFound(f"no flow {flow_id}")
        cur.execute("SELECT f.appliance, r.record FROM flows f JOIN flow_records r ON r.id = f.id WHERE f.id = %s",
                    (flow_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no flow {flow_id}")
        return row[0], Flow.unpack(bytes(row[1]))

    def _candidates(self, cur: psycopg.Cursor, statement: str, params: tuple[Any, ...]) -> Iterator[tuple[int, str, Flow]]:
        """Decode the flows whose ids ``statement`` selects, in its order, a chunk at a time."""
        cur.execute(statement, params)
        ids = [flow_id for (flow_id,) in cur.fetchall()]
        for start in range(0, len(ids), _SCAN_CHUNK):
            chunk = ids[start : start + _SCAN_CHUNK]
            cur.execute("SELECT f.id, f.appliance, r.record FROM flows f JOIN flow_records r ON r.id = f.id"
                        " WHERE f.id = ANY(%s)", (chunk,))
            records = {flow_id: (appliance, record) for flow_id, appliance, record in cur.fetchall()}
            for flow_id in chunk:
                appliance, record = records[flow_id]
                yield flow_id, appliance, Flow.unpack(bytes(record))

    def _scan(self, session_id: int, plan: query.Query) -> Iterator[tuple[int, Flow]]:
        """Chunks keyed on the last row seen: each chunk is its own short read."""
        where = "" if plan.where == query.TRUE else f" AND {plan.where}"
        residual = plan.residual
        view = FilterView(residual, self._socket_messages)
        last_time, last_id = -math.inf, -1
        while True:
            with self._read() as cur:
                cur.execute(
                    "SELECT sf.time, f.id, f.appliance, r.record FROM session_flows sf"
                    " JOIN flows f ON f.id = sf.flow_id JOIN flow_records r ON r.id = sf.flow_id"
                    f" WHERE sf.session_id = %s AND (sf.time, sf.flow_id) > (%s, %s){where}"
                    " ORDER BY sf.time, sf.flow_id LIMIT %s",
                    (session_id, last_time, last_id, *plan.params, _SCAN_CHUNK),
                )
                rows = cur.fetchall()
            for _, flow_id, appliance, record in rows:
                flow = Flow.unpack(bytes(record))
                if residual is None or residual(view(flow_id, appliance, flow)):
                    yield flow_id, flow
            if len(rows) < _SCAN_CHUNK:
                return
            last_time, last_id = rows[-1][0], rows[-1][1]


class _Answered(threading.Event):
    """An attempt's ``answered`` event, which settles the attempt too."""

    def __init__(self, settled: threading.Event) -> None:
        super().__init__()
        self._settled = settled

    def set(self) -> None:
        super().set()
        self._settled.set()


class _Attempt:
    """One connection attempt, run in its own thread so that no call waits on a silent host.

    ``answered`` is set once the server has accepted the login, ``done``
    when the attempt is over, with ``conn`` or ``error``, and ``settled`` by
    whichever comes first; ``waited`` is set by the first call that waited
    for it, so later calls do not wait again.
    """

    def __init__(self, open_connection: Callable[[threading.Event], psycopg.Connection]) -> None:
        self.started = time.monotonic()
        self.settled = threading.Event()
        self.answered = _Answered(self.settled)
        self.done = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.error: StoreError | None = None
        self.waited = False
        threading.Thread(target=self._run, args=(open_connection,), name="store-connect", daemon=True).start()

    def _run(self, open_connection: Callable[[threading.Event], psycopg.Connection]) -> None:
        try:
            self.conn = open_connection(self.answered)
        except StoreError as e:
            self.error = e
        except Exception as e:  # catch-and-keep: the caller gets a reason, not a dead thread
            self.error = StoreError(f"cannot connect to the database: {e}")
        finally:
            self.done.set()
            self.settled.set()


def _url_timeout(url: str) -> int | None:
    """The URL's own ``connect_timeout`` in seconds, if it names a positive one."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        value = int(conninfo_to_dict(url).get("connect_timeout", ""))
    except (psycopg.Error, ValueError):
        return None
    return value if value > 0 else None


def _connect(url: str, timeout: int, autocommit: bool = True) -> psycopg.Connection:
    # Keepalives: a database host that vanishes without a word is noticed in seconds.
    return psycopg.connect(
        url, autocommit=autocommit, connect_timeout=timeout, application_name="capture sessiond",
        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
    )


def _migrate(conn: psycopg.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION under an advisory lock; refuse a newer one."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        version = 0
        if exists:
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            if len(rows) != 1:
                raise StoreError("store schema_version table is damaged: expected one row")
            version = rows[0][0]
        else:
            conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {version} is newer than this software supports ({SCHEMA_VERSION});"
                " upgrade capture on every appliance"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))


# What a residual filter may test without the record: the texts its regex terms
# search (see capture.filters: ~m ~u ~d ~src ~dst ~via ~tq ~ts, and ~t on either
# type), then the status, as _row_test reads them.
_ROW_TEXTS = {
    "m": "f.method", "u": "f.url", "d": "f.host", "src": "f.client || ':' || f.client_port",
    "dst": "f.host || ':' || f.port", "via": "f.appliance", "tq": "f.request_type", "ts": "f.response_type",
}
_ROW_COLUMNS = ", ".join((*_ROW_TEXTS.values(), "f.status"))
_ROW_INDEX = {name: i for i, name in enumerate(_ROW_TEXTS)}
_ROW_STATUS = len(_ROW_TEXTS)
_SCAN_ROWS = 2000


def _row_test(node: filters.Filter | None) -> Callable[[tuple[Any, ...]], bool] | None:
    """``node`` as a test of a row of _ROW_COLUMNS, or None when it needs more than they hold."""
    if isinstance(node, (filters.And, filters.Or)):
        left, right = _row_test(node.left), _row_test(node.right)
        if left is None or right is None:
            return None
        if isinstance(node, filters.And):
            return lambda row: left(row) and right(row)
        return lambda row: left(row) or right(row)
    if isinstance(node, filters.Not):
        inner = _row_test(node.inner)
        return None if inner is None else (lambda row: not inner(row))
    if isinstance(node, filters.Const):
        value = node.value
        return lambda row: value
    if isinstance(node, filters.StatusCode):
        code = node.code
        return lambda row: row[_ROW_STATUS] == code
    if isinstance(node, filters.Regex):
        search = node.pattern.search
        if node.name == "t":
            request, response = _ROW_INDEX["tq"], _ROW_INDEX["ts"]
            return lambda row: ((row[request] is not None and search(row[request]) is not None)
                                or (row[response] is not None and search(row[response]) is not None))
        i = _ROW_INDEX.get(node.name)
        if i is None:
            return None
        return lambda row: row[i] is not None and search(row[i]) is not None
    return None


def _plan(expression: str | filters.Filter) -> query.Query:
    return plan(expression, DIALECT, _MAX_PARAMS)


def _pg_columns(columns: tuple[Any, ...], appliance_plain: int) -> tuple[Any, ...]:
    """The summary columns as PostgreSQL text can hold them.

    Text there cannot hold NUL: such a character becomes U+FFFD in the
    column, and the row is marked not plain, so every search of it runs on
    the record, which keeps the flow exactly as captured.  A plain row's
    searched texts are printable, so only its other texts need a look.
    """
    if columns[19] and appliance_plain and "\x00" not in columns[4] + columns[7] + columns[14] + columns[15]:
        return columns
    cleaned = tuple(value.replace("\x00", "\ufffd") if isinstance(value, str) else value for value in columns)
    plain_flag = columns[19] and appliance_plain and cleaned == columns
    return (*cleaned[:19], int(bool(plain_flag)))


def _reason(error: BaseException) -> str:
    """The first line of a driver error: what an operator needs in status."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for status and logs."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host = params.get("host", "")
    port = params.get("port")
    user = params.get("user")
    where = f"{host}:{port}" if port else host
    return f"postgresql://{user + '@' if user else ''}{where}/{params.get('dbname', '')}"

