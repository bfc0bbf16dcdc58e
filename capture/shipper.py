"""The proxy's side of the UNIX socket: ship flows, make calls, take rules.

Captured flows wait in a DeliveryQueue, numbered, until the session manager
acknowledges them; after a reconnect everything unacknowledged is sent again
and the store skips sequence numbers it already has, so each flow is kept
exactly once.  Traffic never waits on this: ``submit`` only appends to a
bounded queue that spills to disk and, past that, drops the oldest (counted).

A WebSocket flow is live: ``open_live`` queues it when the upgrade completes,
``live_messages`` gathers its messages for a moment (up to ``LIVE_BATCH``)
and queues them as one item, and ``close_live`` queues its final record.

``instance`` is new each time a proxy process starts: the hello names it
with ``worker``, which of the appliance's proxy processes this is (0 the
main one, of ``workers``), so the session manager can tell an earlier run
of the same process, whose open sockets died with it, from this one.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

import msgpack

from capture import wire
from capture.delivery import DeliveryQueue, SpillFile
from capture.flow import pack_fields
from capture.messages import WebSocketClose, WebSocketMessage, pack_close, pack_messages
from capture.rules import RuleSet

BATCH_ITEMS = 256
FLUSH_DELAY = 0.02
STATS_INTERVAL = 1.0
CALL_TIMEOUT = 15.0
LIVE_BATCH = 256  # messages of one live flow gathered into one item at most


class Unavailable(Exception):
    """The session manager is not connected, or did not answer in time."""


class Interrupted(Unavailable):
    """The connection to the session manager was lost while a call waited for its answer."""


class CallFailed(Exception):
    """The session manager answered a call with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Shipper:
    """Delivery queue, acknowledgements, resend, calls, rules and events: one per proxy process."""

    log = Logger()

    def __init__(self, reactor: Any, memory_limit: int = 64 * 1024 * 1024, spill: SpillFile | None = None,
                 spill_limit: int = 0, worker: int = 0, workers: int = 1) -> None:
        self._reactor = reactor
        self.instance = uuid.uuid4().hex
        self.worker = worker
        self.workers = workers
        self.queue = DeliveryQueue(self.instance, memory_limit, spill, spill_limit)
        self.rules = RuleSet()
        # The appliance's auto-passthrough table as last pushed (capture.rejection): (client, host) -> since,
        # and the pairs with connections closed before a request counted against them.
        self.passthrough: dict[tuple[str, str], float] = {}
        self.suspects: set[tuple[str, str]] = set()
        self.session_manager_pid: int | None = None
        self._protocol: ShipperProtocol | None = None
        self._flush_call: Any = None
        self._calls: dict[int, tuple[defer.Deferred, Any, Any]] = {}
        self._listeners: dict[int, set[Callable[[str, Any], None]]] = {}
        self._next_call = 1
        self._drained: list[defer.Deferred] = []
        self._waiting: list[defer.Deferred] = []  # admin calls waiting for the session manager
        # What this process reports about itself, sent every STATS_INTERVAL (workers' status).
        self.stats: Callable[[], dict[str, Any]] = self.status
        self._stats_call: Any = None
        # Messages of live flows not yet queued, by the sequence number of the item that opened each.
        self._live: dict[int, list[WebSocketMessage]] = {}
        self._live_call: Any = None

    # -- what the proxy and the admin API use ---------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.ready

    @property
    def pending(self) -> int:
        return self.queue.pending + sum(1 for messages in self._live.values() if messages)

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def submit(self, flow: tuple[Any, ...], sessions: list[int]) -> None:
        """Queue a finished flow (a ``Flow`` or its fields, see ``pack_fields``) for the given sessions; never blocks."""
        self.queue.add(flow, sessions)
        self._schedule_flush()

    def open_live(self, flow: tuple[Any, ...], sessions: list[int]) -> int:
        """Queue a flow that stays open (a WebSocket); returns the ``ref`` its later items name."""
        ref = self.queue.add_live("open", pack_fields(flow), sessions)
        self._live[ref] = []
        self._schedule_flush()
        return ref

    def live_messages(self, ref: int, messages: list[WebSocketMessage]) -> None:
        """Messages of a live flow: queued together within ``FLUSH_DELAY``, or at once past ``LIVE_BATCH``."""
        pending = self._live.get(ref)
        if pending is None:
            return
        pending.extend(messages)
        if len(pending) >= LIVE_BATCH:
            self._queue_messages(ref)
        elif self._live_call is None:
            self._live_call = self._reactor.callLater(FLUSH_DELAY, self._queue_live)

    def close_live(self, ref: int, flow: tuple[Any, ...], close: WebSocketClose) -> None:
        """The live flow's final record and how it closed, after every message queued before."""
        if ref not in self._live:
            return
        self._queue_messages(ref)
        del self._live[ref]
        payload = msgpack.packb((pack_fields(flow), pack_close(close)), use_bin_type=True)
        self.queue.add_live("close", payload, [], ref)
        self._schedule_flush()

    def call(self, method: str, on_chunk: Callable[[bytes], None] | None = None, **args: Any) -> defer.Deferred:
        """Ask the session manager; fires with the result or fails with Unavailable/CallFailed.

        A streamed answer (an export) arrives as chunks passed to ``on_chunk``
        before the final reply; the timeout restarts with every chunk.
        """
        if not self.connected:
            return defer.fail(Unavailable("session manager is not connected"))
        call_id = self._next_call
        self._next_call += 1

        def cancel(d: defer.Deferred) -> None:
            entry = self._calls.pop(call_id, None)
            if entry is not None:
                entry[1].cancel()

        d: defer.Deferred = defer.Deferred(cancel)
        timer = self._reactor.callLater(CALL_TIMEOUT, self._call_timed_out, call_id)
        self._calls[call_id] = (d, timer, on_chunk)
        self._protocol.send(wire.encode("call", id=call_id, method=method, args=args))
        return d

    def wait_ready(self, timeout: float) -> defer.Deferred:
        """Fires once the session manager is connected (at once if it is); Unavailable after ``timeout``.

        For the admin API, so a call made while the session manager starts or
        restarts waits for it; the proxy path never waits on this.
        """
        if self.connected:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred(lambda d: self._waiting.remove(d) if d in self._waiting else None)
        self._waiting.append(d)

        def expired() -> None:
            if d in self._waiting:
                self._waiting.remove(d)
                d.errback(Unavailable(f"session manager is not connected (waited {timeout:g} s)"))

        timer = self._reactor.callLater(timeout, expired)
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d

    def subscribe(self, session_id: int, listener: Callable[[str, Any], None]) -> None:
        """Have ``listener(event, data)`` called for the session's live events."""
        listeners = self._listeners.setdefault(session_id, set())
        listeners.add(listener)
        if len(listeners) == 1 and self.connected:
            self._protocol.send(wire.encode("subscribe", session=session_id))

    def unsubscribe(self, session_id: int, listener: Callable[[str, Any], None]) -> None:
        listeners = self._listeners.get(session_id)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[session_id]
            if self.connected:
                self._protocol.send(wire.encode("unsubscribe", session=session_id))

    def drained(self, timeout: float) -> defer.Deferred:
        """Fires (with True if empty) once every pending flow is acked, or after ``timeout``."""
        self._queue_live()
        if not self.pending:
            return defer.succeed(True)
        d: defer.Deferred = defer.Deferred()
        self._drained.append(d)
        timer = self._reactor.callLater(timeout, self._drain_timed_out, d)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    def status(self) -> dict[str, Any]:
        queue = self.queue
        return {
            "connected": self.connected,
            "pid": self.session_manager_pid,
            "pending": queue.pending,
            "spilled": queue.spilled,
            "dropped": queue.dropped,
            "shipped": queue.shipped,
        }

    # -- connection life ------------------------------------------------------

    def attached(self, protocol: ShipperProtocol) -> None:
        self._protocol = protocol
        protocol.send(wire.encode("hello", instance=self.instance, pid=os.getpid(), worker=self.worker,
                                  workers=self.workers))
        if self._stats_call is None:
            self._stats_call = self._reactor.callLater(STATS_INTERVAL, self._report)

    def _report(self) -> None:
        self._stats_call = None
        if self._protocol is not None:
            if self._protocol.ready:
                self._protocol.send(wire.encode("stats", instance=self.instance, data=self.stats()))
            self._stats_call = self._reactor.callLater(STATS_INTERVAL, self._report)

    def detached(self, protocol: ShipperProtocol) -> None:
        if self._protocol is not protocol:
            return
        self._protocol = None
        self.session_manager_pid = None
        if self._stats_call is not None and self._stats_call.active():
            self._stats_call.cancel()
        self._stats_call = None
        self.queue.disconnected()  # everything unacknowledged goes out again on the next connection
        calls, self._calls = self._calls, {}
        for d, timer, _ in calls.values():
            timer.cancel()
            d.errback(Interrupted("session manager connection lost"))

    def received(self, message: dict[str, Any]) -> None:
        """Handle one decoded message; raises wire.WireError for nonsense."""
        kind = message["t"]
        if kind == "ack":
            self.queue.acked(str(message["instance"]), int(message["seq"]))
            self._notify_drained()
            self._schedule_flush()
        elif kind == "reply":
            self._replied(message)
        elif kind == "chunk":
            self._chunk(int(message["id"]), message["data"])
        elif kind == "event":
            for listener in list(self._listeners.get(int(message["session"]), ())):
                listener(str(message["event"]), message["data"])
        elif kind == "rules":
            self.rules = RuleSet.from_sessions(list(message["sessions"]))
        elif kind == "passthrough":
            self.passthrough = {(str(c), str(h)): float(since) for c, h, since in message["hosts"]}
            self.suspects = {(str(c), str(h)) for c, h in message["suspects"]}
        elif kind == "welcome":
            self.session_manager_pid = int(message["pid"])
            self.queue.discard_stored(int(message["last_seq"]))
            self._notify_drained()
            self._protocol.ready = True
            for session_id in self._listeners:
                self._protocol.send(wire.encode("subscribe", session=session_id))
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
            if self.passthrough:  # a restarted session manager learns again what was decided
                hosts = [[c, h, since] for (c, h), since in self.passthrough.items()]
                self.call("passthrough.seed", hosts=hosts).addErrback(lambda _: None)
            self._schedule_flush()
        else:
            raise wire.WireError(f"unknown message type {kind!r}")

    # -- internals ------------------------------------------------------------

    def _queue_live(self) -> None:
        self._live_call = None
        for ref in list(self._live):
            self._queue_messages(ref)

    def _queue_messages(self, ref: int) -> None:
        pending = self._live.get(ref)
        if pending:
            self._live[ref] = []
            self.queue.add_live("messages", pack_messages(pending), [], ref)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Gathering a few milliseconds of flows makes one store transaction of many:
        # the per-commit cost, not the per-flow one, is what the store pays most for.
        if self._flush_call is None and self.connected and self.queue.has_work():
            self._flush_call = self._reactor.callLater(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """Send queued flows in batches, keeping at most a window in flight."""
        self._flush_call = None
        protocol, queue = self._protocol, self.queue
        while protocol is not None and queue.has_work() and queue.inflight_bytes < queue.window:
            batch = queue.next_batch(BATCH_ITEMS)
            if not batch:
                break
            items = [item.wire() for item in batch]
            protocol.send(wire.encode("flows", instance=batch[0].instance, items=items))

    def _notify_drained(self) -> None:
        if not self.pending:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(True)

    def _replied(self, message: dict[str, Any]) -> None:
        entry = self._calls.pop(int(message["id"]), None)
        if entry is None:
            return
        d, timer, _ = entry
        timer.cancel()
        error = message.get("error")
        if error:
            d.errback(CallFailed(int(error["status"]), str(error["message"])))
        else:
            d.callback(message.get("result"))

    def _chunk(self, call_id: int, data: bytes) -> None:
        entry = self._calls.get(call_id)
        if entry is None or entry[2] is None:
            return
        entry[1].reset(CALL_TIMEOUT)
        entry[2](data)

    def _call_timed_out(self, call_id: int) -> None:
        entry = self._calls.pop(call_id, None)
        if entry is not None:
            entry[0].errback(Unavailable("session manager did not answer in time"))

    def _drain_timed_out(self, d: defer.Deferred) -> None:
        if d in self._drained:
            self._drained.remove(d)
            d.callback(False)


class ShipperProtocol(Protocol):
    """One connection to the session manager; the Shipper outlives it."""

    log = Logger()

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper
        self.ready = False
        self._decoder = wire.Decoder()

    def connectionMade(self) -> None:
        self.shipper.attached(self)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                self.shipper.received(message)
        except (wire.WireError, AttributeError, KeyError, TypeError, ValueError) as e:
            self.log.error("bad message from the session manager, reconnecting: {error}", error=e)
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self.shipper.detached(self)


class ShipperFactory(Factory):
    noisy = False

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper

    def buildProtocol(self, addr: Any) -> ShipperProtocol:
        return ShipperProtocol(self.shipper)
