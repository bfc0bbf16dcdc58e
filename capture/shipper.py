"""The proxy's side of the UNIX socket: ship flows, make calls, take rules.

Captured flows wait here, numbered, until the session manager acknowledges
them; after a reconnect everything unacknowledged is sent again and the
store skips sequence numbers it already has, so each flow is kept exactly
once.  Traffic never waits on this: ``submit`` only appends to a bounded
queue, and the oldest unshipped flows are dropped (and counted) when the
queue is full.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from capture import wire
from capture.flow import Flow
from capture.rules import RuleSet

BATCH_ITEMS = 256
WINDOW_BYTES = 16 * 1024 * 1024
CALL_TIMEOUT = 15.0


class Unavailable(Exception):
    """The session manager is not connected, or did not answer in time."""


class CallFailed(Exception):
    """The session manager answered a call with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Pending:
    __slots__ = ("seq", "sessions", "flow", "size")

    def __init__(self, seq: int, sessions: list[int], flow: Flow) -> None:
        self.seq = seq
        self.sessions = sessions
        self.flow = flow
        response = flow.response
        self.size = 1024 + len(flow.request.body) + (len(response.body) if response else 0)


class Shipper:
    """Queue, acknowledgements, resend, calls and rules: one per proxy process."""

    log = Logger()

    def __init__(self, reactor: Any, max_pending_bytes: int = 256 * 1024 * 1024) -> None:
        self._reactor = reactor
        self.instance = uuid.uuid4().hex
        self.max_pending_bytes = max_pending_bytes
        self.rules = RuleSet()
        self.session_manager_pid: int | None = None
        self.dropped = 0
        self.shipped = 0
        self._next_seq = 1
        self._unsent: deque[_Pending] = deque()
        self._unacked: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._inflight_bytes = 0
        self._protocol: ShipperProtocol | None = None
        self._flush_call: Any = None
        self._calls: dict[int, tuple[defer.Deferred, Any]] = {}
        self._next_call = 1
        self._drained: list[defer.Deferred] = []

    # -- what the proxy and the admin API use ---------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.ready

    @property
    def pending(self) -> int:
        return len(self._unsent) + len(self._unacked)

    def submit(self, flow: Flow, sessions: list[int]) -> None:
        """Queue a finished flow for the given sessions; never blocks."""
        item = _Pending(self._next_seq, sessions, flow)
        self._next_seq += 1
        self._unsent.append(item)
        self._pending_bytes += item.size
        while self._pending_bytes > self.max_pending_bytes and self._unsent:
            dropped = self._unsent.popleft()
            self._pending_bytes -= dropped.size
            self.dropped += 1
        self._schedule_flush()

    def call(self, method: str, **args: Any) -> defer.Deferred:
        """Ask the session manager; fires with the result or fails with Unavailable/CallFailed."""
        if not self.connected:
            return defer.fail(Unavailable("session manager is not connected"))
        call_id = self._next_call
        self._next_call += 1
        d: defer.Deferred = defer.Deferred()
        timer = self._reactor.callLater(CALL_TIMEOUT, self._call_timed_out, call_id)
        self._calls[call_id] = (d, timer)
        self._protocol.send(wire.encode("call", id=call_id, method=method, args=args))
        return d

    def drained(self, timeout: float) -> defer.Deferred:
        """Fires (with True if empty) once every pending flow is acked, or after ``timeout``."""
        if not self.pending:
            return defer.succeed(True)
        d: defer.Deferred = defer.Deferred()
        self._drained.append(d)
        timer = self._reactor.callLater(timeout, self._drain_timed_out, d)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "pid": self.session_manager_pid,
            "pending": self.pending,
            "dropped": self.dropped,
            "shipped": self.shipped,
        }

    # -- connection life ------------------------------------------------------

    def attached(self, protocol: ShipperProtocol) -> None:
        self._protocol = protocol
        protocol.send(wire.encode("hello", instance=self.instance, pid=os.getpid()))

    def detached(self, protocol: ShipperProtocol) -> None:
        if self._protocol is not protocol:
            return
        self._protocol = None
        self.session_manager_pid = None
        # Everything unacknowledged goes out again on the next connection.
        self._unsent.extendleft(reversed(self._unacked))
        self._unacked.clear()
        self._inflight_bytes = 0
        calls, self._calls = self._calls, {}
        for d, timer in calls.values():
            timer.cancel()
            d.errback(Unavailable("session manager connection lost"))

    def received(self, message: dict[str, Any]) -> None:
        """Handle one decoded message; raises wire.WireError for nonsense."""
        kind = message["t"]
        if kind == "ack":
            self._acked(int(message["seq"]))
        elif kind == "reply":
            self._replied(message)
        elif kind == "rules":
            self.rules = RuleSet.from_sessions(list(message["sessions"]))
        elif kind == "welcome":
            self.session_manager_pid = int(message["pid"])
            self._discard_stored(int(message["last_seq"]))
            self._protocol.ready = True
            self._schedule_flush()
        elif kind != "event":
            raise wire.WireError(f"unknown message type {kind!r}")

    # -- internals ------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self.connected and self._unsent:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send queued flows in batches, keeping at most a window in flight."""
        self._flush_call = None
        protocol = self._protocol
        while protocol is not None and self._unsent and self._inflight_bytes < WINDOW_BYTES:
            batch = []
            while self._unsent and len(batch) < BATCH_ITEMS:
                item = self._unsent.popleft()
                self._unacked.append(item)
                self._inflight_bytes += item.size
                batch.append([item.seq, item.sessions, item.flow.to_wire()])
            protocol.send(wire.encode("flows", instance=self.instance, items=batch))

    def _discard_stored(self, last_seq: int) -> None:
        """Forget flows the store already has (sent before a crash, acked never)."""
        while self._unsent and self._unsent[0].seq <= last_seq:
            self._pending_bytes -= self._unsent.popleft().size
            self.shipped += 1
        self._notify_drained()

    def _acked(self, seq: int) -> None:
        while self._unacked and self._unacked[0].seq <= seq:
            item = self._unacked.popleft()
            self._pending_bytes -= item.size
            self._inflight_bytes -= item.size
            self.shipped += 1
        self._notify_drained()
        self._schedule_flush()

    def _notify_drained(self) -> None:
        if not self.pending:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(True)

    def _replied(self, message: dict[str, Any]) -> None:
        entry = self._calls.pop(int(message["id"]), None)
        if entry is None:
            return
        d, timer = entry
        timer.cancel()
        error = message.get("error")
        if error:
            d.errback(CallFailed(int(error["status"]), str(error["message"])))
        else:
            d.callback(message.get("result"))

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
