"""The session manager's end of the UNIX socket.

Each proxy process connects once; flows are stored in one transaction per
message and acknowledged, calls are answered from the store, and every
session change pushes fresh rules to every connected proxy.

Store calls go through a runner (:mod:`capture.sessiond.runner`): inline
for SQLite, one worker thread for a store that blocks on the network.  A
proxy's batches are stored strictly in the order they came, one at a time;
while the database is unreachable the batch at the front waits and is tried
again every RETRY_INTERVAL, nothing is acknowledged, and the proxy keeps
the rest in its queue and spill file.  Rules read from the store are kept
in a file, so a session manager starting while the database is down still
tells its proxies what to capture.

A proxy's hello names its instance (new each time the process starts) and
which of the appliance's proxy processes it is (``worker``, 0 the main
one): the WebSocket flows that process opened in an earlier run, killed or
crashed before their close was shipped, are closed then (``close_orphans``);
batches of an earlier instance, replayed from its spill file, are stored as
``ended``.  A session manager restarted under a live proxy closes nothing of
it: the instance is the same.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from capture import filters, wire
from capture.flow import Flow
from capture.sessiond import runner as runners
from capture.sessiond.exports import Exports
from capture.sessiond.passthrough import Passthrough
from capture.sessiond.store import Invalid, Store, StoreError, Unavailable

# Calls that change which sessions capture, so the rules must be pushed again.
_RULE_CHANGES = {"sessions.create", "sessions.rename", "sessions.pause", "sessions.resume", "sessions.stop", "sessions.clear",
                 "sessions.delete", "sessions.prune"}
RETRY_INTERVAL = 1.0
MAX_MERGED = 1024  # items of queued batches stored in one call at most


class SessionManager:
    """Binds the store to the connected proxies."""

    log = Logger()

    def __init__(self, store: Store, pid: int, reactor: Any = None, appliance: str = "",
                 rules_cache: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.pid = pid
        self.appliance = appliance
        self.runner = runners.for_store(store, reactor)
        self.proxies: set[SessionProtocol] = set()
        self._rules_cache = rules_cache
        self._rules: list[dict[str, Any]] | None = _read_rules(rules_cache)
        self._session_count: int | None = None
        self._database_seen = False  # reachable once already: the store reports changes only, so the next is a return
        exports = Exports(store)
        self._calls: dict[str, Callable[..., Any]] = {
            "sessions.list": lambda: {"sessions": store.list_sessions()},
            "sessions.create": self._create,
            "sessions.get": store.get_session,
            "sessions.rename": store.rename,
            "sessions.pause": store.pause,
            "sessions.resume": store.resume,
            "sessions.stop": store.stop,
            "sessions.clear": store.clear,
            "sessions.delete": store.delete,
            "sessions.prune": self._prune,
            "flows.list": self._list_flows,
            "sessions.stats": store.stats,
            "flows.get": store.get_flow,
            "flows.messages": self._messages,
            "flows.curl": exports.curl,
            "flows.body": exports.raw_body,
            "export.har": exports.har,
            "export.postman": exports.postman,
            "export.cookies": exports.cookies,
        }
        # Answered in the reactor thread without the store: they must work while it is away.
        self._local: dict[str, Callable[..., Any]] = {
            "status": self._status,
            "proxies": lambda: [proxy.stats for proxy in self.proxies if proxy.stats is not None],
        }
        # The auto-passthrough table is in memory, not in the store.
        self.passthrough = Passthrough(self.broadcast)
        self._local.update(self.passthrough.calls)
        store.watch(lambda event: reactor.callFromThread(self._store_event, event))

    def stop(self) -> None:
        self.runner.stop()

    # -- rules ---------------------------------------------------------------------

    def refresh_rules(self, proxies: Any = None) -> defer.Deferred:
        """Read the sessions again and push the capturing ones as rules (to ``proxies``, default all).

        When the store cannot answer, the proxies keep the rules they have;
        one that has none gets the last rules read (from the cache file).
        """
        d = self.runner.run(self.store.list_sessions)

        def read(sessions: list[dict[str, Any]]) -> None:
            self._session_count = len(sessions)
            self._rules = [_for_appliance(session, self.appliance) for session in sessions
                           if session["state"] == "capturing"]
            _write_rules(self._rules_cache, self._rules)
            message = wire.encode("rules", sessions=self._rules)
            for proxy in list(self.proxies if proxies is None else proxies):
                proxy.transport.write(message)

        def failed(reason: Any) -> None:
            reason.trap(StoreError)
            self.log.warn("cannot read the sessions for the rules: {error}", error=reason.getErrorMessage())
            if proxies is not None and self._rules is not None:
                message = wire.encode("rules", sessions=self._rules)
                for proxy in proxies:
                    proxy.transport.write(message)

        return d.addCallbacks(read, failed)

    def _store_event(self, event: str) -> None:
        """From the store's listener: a session changed elsewhere, or the database came or went."""
        if event == "health":
            health = self.store.health()
            if health["reachable"]:
                self.log.info("database reachable again" if self._database_seen else "database reachable")
                self._database_seen = True
            else:
                self.log.warn("database unreachable: {error}", error=health["error"])
                return
            for proxy in list(self.proxies):
                proxy.pump(now=True)
        self.refresh_rules()

    # -- calls ---------------------------------------------------------------------

    def call(self, method: str, args: dict[str, Any]) -> defer.Deferred:
        """Fires with (result, None) or (None, error) for one admin call."""
        local = self._local.get(method)
        handler = self._calls.get(method)
        if local is None and handler is None:
            return defer.succeed((None, {"status": 400, "message": f"unknown call {method!r}"}))
        if local is not None:
            d = defer.maybeDeferred(local, **args)
        else:
            d = self.runner.run(handler, **args)

        def done(result: Any) -> defer.Deferred | tuple[Any, None]:
            if method not in _RULE_CHANGES:
                return result, None
            session_id = args.get("session_id", result.get("id") if isinstance(result, dict) else None)
            refreshed = self.refresh_rules()
            if isinstance(session_id, int):
                self.publish(session_id, "state",
                             result if isinstance(result, dict) else {"id": session_id, "state": "deleted"})
            return refreshed.addCallback(lambda _: (result, None))

        def failed(reason: Any) -> tuple[None, dict[str, Any]]:
            error = reason.value
            if isinstance(error, StoreError):
                return None, {"status": error.status, "message": str(error)}
            if isinstance(error, (TypeError, OverflowError)):
                return None, {"status": 400, "message": f"bad arguments for {method}: {error}"}
            self.log.failure("call {method} failed", reason, method=method)
            return None, {"status": 500, "message": f"{method} failed; see the session manager's log"}

        return d.addCallbacks(done, failed)

    def watched(self) -> set[int]:
        """Sessions some admin client follows live."""
        return set().union(*(proxy.subscriptions for proxy in self.proxies)) if self.proxies else set()

    def flows_stored(self, watched: set[int], stored: list[tuple[int, list[int], Flow]]) -> None:
        """One event per followed session each new flow belongs to (watched: computed once per batch)."""
        for flow_id, session_ids, flow in stored:
            summary = None
            for session_id in session_ids:
                if session_id in watched:
                    summary = summary or {"id": flow_id, **flow.summary(), "appliance": self.appliance or None}
                    self.publish(session_id, "flow", summary)

    def messages_stored(self, watched: set[int], added: list[tuple[int, list[int], int, int]]) -> None:
        """A ``messages`` event per followed session of a live flow: how many it has now, how many are new."""
        for flow_id, session_ids, count, new in added:
            for session_id in session_ids:
                if session_id in watched:
                    self.publish(session_id, "messages", {"id": flow_id, "message_count": count, "added": new})

    def publish(self, session_id: int, event: str, data: Any) -> None:
        """Send a live event to the proxies whose admin clients follow this session."""
        message = None
        for proxy in self.proxies:
            if session_id in proxy.subscriptions:
                message = message or wire.encode("event", session=session_id, event=event, data=data)
                proxy.transport.write(message)

    def broadcast(self, data: bytes) -> None:
        for proxy in self.proxies:
            proxy.transport.write(data)

    def _status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "sessions": self._session_count,
            "rejected_flows": self.store.rejected,
            "appliance": self.appliance,
            "database": self.store.health(),
        }

    def _create(self, **fields: Any) -> dict[str, Any]:
        _check_filter(fields.get("filter") or "")
        return self.store.create_session(**fields)

    def _messages(self, flow_id: int, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        messages, total = self.store.messages(flow_id, offset, limit)
        return {"messages": [message.detail() for message in messages], "total": total}

    def _prune(self, older_than: float) -> dict[str, Any]:
        """Delete every session idle (no change, no flow) for ``older_than`` seconds; runs in the runner."""
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not 0 < older_than < 1e11:
            raise Invalid("older_than must be a positive number of seconds")
        deleted = []
        for session_id in self.store.idle_sessions(time.time() - older_than):
            self.store.delete(session_id)
            deleted.append(session_id)
        return {"deleted": deleted}

    def _list_flows(
        self,
        session_id: int,
        limit: int = 100,
        offset: int = 0,
        filter: str = "",
        sort: str = "time",
        order: str = "asc",
    ) -> dict[str, Any]:
        flows, total = self.store.list_flows(
            session_id, limit=limit, offset=offset, filter=filter, sort=sort, order=order
        )
        return {"flows": flows, "total": total}


def _check_filter(expression: str) -> filters.Filter:
    if not isinstance(expression, str):
        raise Invalid("filter must be a string")
    try:
        return filters.parse(expression)
    except filters.FilterError as e:
        raise Invalid(f"bad filter: {e}") from None


def _for_appliance(session: dict[str, Any], appliance: str) -> dict[str, Any]:
    """A session's rule as this appliance's proxies apply it: ``~via`` decided here, once.

    The proxy's flows do not carry the appliance's name; a capture filter
    ``~via floor-2`` means "capture on floor-2", so each term becomes true or
    false for this appliance before the rule is pushed.
    """
    expression = session.get("filter") or ""
    if "~via" not in expression:
        return session
    try:
        tree = filters.parse(expression)
    except filters.FilterError:
        return session
    return {**session, "filter": str(_decide_via(tree, appliance))}


def _decide_via(node: filters.Filter, appliance: str) -> filters.Filter:
    if isinstance(node, filters.And):
        return filters.And(_decide_via(node.left, appliance), _decide_via(node.right, appliance))
    if isinstance(node, filters.Or):
        return filters.Or(_decide_via(node.left, appliance), _decide_via(node.right, appliance))
    if isinstance(node, filters.Not):
        return filters.Not(_decide_via(node.inner, appliance))
    if isinstance(node, filters.Regex) and node.name == "via":
        return filters.Const(node.pattern.search(appliance) is not None)
    return node


def _read_rules(path: str | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            rules = json.load(f)
    except (OSError, ValueError):
        return None
    return rules if isinstance(rules, list) else None


def _write_rules(path: str | None, rules: list[dict[str, Any]]) -> None:
    """Keep the rules for a start while the database is away; best effort."""
    if path is None:
        return
    temporary = f"{path}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rules, f)
        os.replace(temporary, path)
    except OSError as e:
        SessionManager.log.warn("cannot keep the rules in {path}: {error}", path=path, error=e)


class SessionProtocol(Protocol):
    """One proxy process's connection."""

    log = Logger()

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._decoder = wire.Decoder()
        self._instance: str | None = None
        self._worker = 0
        self._workers: int | None = None
        self.subscriptions: set[int] = set()
        self.stats: dict[str, Any] | None = None  # the proxy process's last report of itself
        # Batches waiting to be stored, in order: (instance, items).
        self._batches: deque[tuple[str, list[tuple[Any, ...]]]] = deque()
        self._storing = False
        self._holding = False  # the store refused a batch and it waits for a retry
        self._retry: Any = None
        self._orphans_retry: Any = None

    def connectionMade(self) -> None:
        self.manager.proxies.add(self)

    def connectionLost(self, reason: Any) -> None:
        self.connected = 0  # answers still on their way from the runner are dropped
        self.manager.proxies.discard(self)
        self._batches.clear()  # unacknowledged: the proxy sends them again
        for call in (self._retry, self._orphans_retry):
            if call is not None and call.active():
                call.cancel()

    def dataReceived(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                self._handle(message)
        except (wire.WireError, AttributeError, KeyError, TypeError, ValueError) as e:
            # Catch-and-log so one bad peer cannot take the store down with it.
            self.log.warn("dropping proxy connection after a bad message: {error}", error=e)
            self.transport.abortConnection()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "flows":
            if self._instance is None:
                raise wire.WireError("flows before hello")
            # A proxy may replay an earlier instance's flows from its spill file.
            self._batches.append((str(message["instance"]), [tuple(item) for item in message["items"]]))
            self.pump()
        elif kind == "call":
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise wire.WireError("call arguments must be a map")
            call_id = message["id"]
            self.manager.call(str(message["method"]), args).addCallback(self._answer, call_id)
        elif kind == "stats":
            data = message["data"]
            self.stats = data if isinstance(data, dict) else None
        elif kind == "subscribe":
            self.subscriptions.add(int(message["session"]))
        elif kind == "unsubscribe":
            self.subscriptions.discard(int(message["session"]))
        elif kind == "hello":
            self._instance = str(message["instance"])
            worker, workers = message.get("worker", 0), message.get("workers")
            if type(worker) is not int or not (workers is None or type(workers) is int):
                raise wire.WireError("worker and workers must be integers")
            self._worker, self._workers = worker, workers
            self.manager.runner.run(self.manager.store.last_seq, self._instance).addBoth(self._welcome)
            self._close_orphans()
        else:
            raise wire.WireError(f"unknown message type {kind!r}")

    def _welcome(self, last: Any) -> None:
        """Rules first (read now, or the last read when the store is away), then the welcome:
        a proxy that is told it is connected captures from its first request on."""
        if not self.connected:
            return
        if not isinstance(last, int):
            # The database is away: 0 makes the proxy resend all it holds, and the
            # store skips what it already has, so nothing is lost or doubled.
            last.trap(StoreError)
            last = 0

        def welcome(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                self.log.failure("reading the rules for a proxy failed", outcome)
            if not self.connected:
                return
            self.transport.write(wire.encode("welcome", pid=self.manager.pid, last_seq=last))
            self.transport.write(self.manager.passthrough.message())

        self.manager.refresh_rules([self]).addBoth(welcome)

    def _close_orphans(self) -> None:
        """Close what earlier runs of this proxy process left open; tried again while the store is away."""
        self._orphans_retry = None
        watched = self.manager.watched()

        def closed(flows: list[tuple[int, list[int], Flow]]) -> None:
            if flows:
                self.log.info("closed {n} WebSocket flows an earlier run of proxy process {worker} left open",
                              n=len(flows), worker=self._worker)
                self.manager.flows_stored(watched, flows)

        def failed(reason: Any) -> None:
            reason.trap(StoreError)
            if not self.connected:
                return
            if reason.check(Unavailable):
                self._orphans_retry = self.manager.reactor.callLater(RETRY_INTERVAL, self._close_orphans)
            else:
                self.log.error("cannot close the WebSocket flows of earlier proxy runs: {error}",
                               error=reason.getErrorMessage())

        d = self.manager.runner.run(self.manager.store.close_orphans, self._instance, self._worker, self._workers)
        d.addCallbacks(closed, failed)

    def _answer(self, outcome: tuple[Any, dict | None], call_id: Any) -> None:
        result, error = outcome
        if not self.connected:
            return
        if error is not None:
            self.transport.write(wire.encode("reply", id=call_id, error=error))
        elif isinstance(result, Iterator):
            self._stream(call_id, result)
        else:
            self.transport.write(wire.encode("reply", id=call_id, result=result))

    # -- ingest ----------------------------------------------------------------------

    def pump(self, now: bool = False) -> None:
        """Store the batch at the front (with those of its instance queued behind it), unless one is being
        stored or (``now`` aside) waits for a retry."""
        if self._storing or not self._batches or not self.connected:
            return
        if self._retry is not None and self._retry.active():
            if not now:
                return
            self._retry.cancel()
        self._retry = None
        instance, items = self._batches[0]
        count = 1
        # Batches that queued while the last was stored go in together: one transaction, one
        # ack (acks are cumulative), and the store's cost per call spread over more flows.
        for other, more in itertools.islice(self._batches, 1, None):
            if other != instance or len(items) + len(more) > MAX_MERGED:
                break
            items = [*items, *more]
            count += 1
        watched = self.manager.watched()
        # Noted in the runner's thread, published from the reactor's once the batch is in.
        stored: list[tuple[int, list[int], Flow]] = []
        added: list[tuple[int, list[int], int, int]] = []
        on_stored = (lambda *entry: stored.append(entry)) if watched else None
        on_messages = (lambda *entry: added.append(entry)) if watched else None
        self._storing = True
        # Items of another instance come from an earlier run's spill file: that run is over.
        d = self.manager.runner.run(self.manager.store.ingest, instance, items, on_stored, on_messages,
                                    worker=self._worker, ended=instance != self._instance)
        d.addCallbacks(self._stored, self._not_stored, callbackArgs=(instance, count, watched, stored, added))

    def _stored(self, last: int, instance: str, count: int, watched: set[int], stored: list, added: list) -> None:
        self._storing = False
        if not self.connected:
            return
        for _ in range(count):
            self._batches.popleft()
        if self._holding:
            self.log.info("storing flows again")
            self._holding = False
        self.transport.write(wire.encode("ack", instance=instance, seq=last))
        if stored:
            self.manager.flows_stored(watched, stored)
        if added:
            self.manager.messages_stored(watched, added)
        self.pump()

    def _not_stored(self, reason: Any) -> None:
        self._storing = False
        if not self.connected:
            return
        if reason.check(Unavailable):
            # Nothing acked: the batch waits at the front and goes again shortly.
            if not self._holding:
                self.log.warn("cannot store flows, holding them until the store answers: {error}",
                              error=reason.getErrorMessage())
                self._holding = True
            if self._retry is None or not self._retry.active():
                self._retry = self.manager.reactor.callLater(RETRY_INTERVAL, self.pump, True)
            return
        if reason.check(StoreError):
            # Nothing was acked, so the proxy resends once it reconnects.
            self.log.error("store failed, dropping the proxy connection: {error}", error=reason.getErrorMessage())
        else:
            self.log.failure("storing flows failed, dropping the proxy connection", reason)
        self.transport.abortConnection()

    def _stream(self, call_id: Any, chunks: Iterator[bytes]) -> None:
        """Send a long answer a chunk at a time, each read by the runner, so ingest keeps its turn."""
        done = object()

        def step() -> None:
            if self.connected:
                self.manager.runner.run(next, chunks, done).addCallbacks(sent, failed)

        def sent(data: Any) -> None:
            if not self.connected:
                return
            if data is done:
                self.transport.write(wire.encode("reply", id=call_id, result=None))
                return
            self.transport.write(wire.encode("chunk", id=call_id, data=data))
            self.manager.reactor.callLater(0, step)

        def failed(reason: Any) -> None:
            if not self.connected:
                return
            if reason.check(StoreError):
                error = {"status": reason.value.status, "message": reason.getErrorMessage()}
            else:
                self.log.failure("streamed call failed", reason)
                error = {"status": 500, "message": "export failed; see the log"}
            self.transport.write(wire.encode("reply", id=call_id, error=error))

        step()


class SessionFactory(Factory):
    noisy = False

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> SessionProtocol:
        return SessionProtocol(self.manager)
