"""The session manager's end of the UNIX socket.

Each proxy process connects once; flows are stored in one transaction per
message and acknowledged, calls are answered from the store, and every
session change pushes fresh rules to every connected proxy.
"""

from __future__ import annotations

from functools import partial
from collections.abc import Iterator
from typing import Any, Callable

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import cooperate
from twisted.logger import Logger

from capture import filters, wire
from capture.flow import Flow
from capture.sessiond.exports import Exports
from capture.sessiond.passthrough import Passthrough
from capture.sessiond.store import Invalid, Store, StoreError

# Calls that change which sessions capture, so the rules must be pushed again.
_RULE_CHANGES = {"sessions.create", "sessions.pause", "sessions.resume", "sessions.stop", "sessions.clear", "sessions.delete"}


class SessionManager:
    """Binds the store to the connected proxies."""

    log = Logger()

    def __init__(self, store: Store, pid: int) -> None:
        self.store = store
        self.pid = pid
        self.proxies: set[SessionProtocol] = set()
        exports = Exports(store)
        self._calls: dict[str, Callable[..., Any]] = {
            "status": self._status,
            "sessions.list": lambda: {"sessions": store.list_sessions()},
            "sessions.create": self._create,
            "sessions.get": store.get_session,
            "sessions.rename": store.rename,
            "sessions.pause": store.pause,
            "sessions.resume": store.resume,
            "sessions.stop": store.stop,
            "sessions.clear": store.clear,
            "sessions.delete": store.delete,
            "flows.list": self._list_flows,
            "proxies": lambda: [proxy.stats for proxy in self.proxies if proxy.stats is not None],
            "sessions.stats": store.stats,
            "flows.get": store.get_flow,
            "flows.messages": self._messages,
            "flows.curl": exports.curl,
            "flows.body": exports.raw_body,
            "export.har": exports.har,
            "export.postman": exports.postman,
            "export.cookies": exports.cookies,
        }
        self.passthrough = Passthrough(self.broadcast)
        self._calls.update(self.passthrough.calls)

    def rules_message(self) -> bytes:
        return wire.encode("rules", sessions=self.store.capturing_sessions())

    def call(self, method: str, args: dict[str, Any]) -> tuple[Any, dict | None]:
        """(result, None) or (None, error) for one admin call."""
        handler = self._calls.get(method)
        if handler is None:
            return None, {"status": 400, "message": f"unknown call {method!r}"}
        try:
            result = handler(**args)
        except StoreError as e:
            return None, {"status": e.status, "message": str(e)}
        except (TypeError, OverflowError) as e:
            return None, {"status": 400, "message": f"bad arguments for {method}: {e}"}
        if method in _RULE_CHANGES:
            self.broadcast(self.rules_message())
            session_id = args.get("session_id", result.get("id") if isinstance(result, dict) else None)
            if session_id is not None:
                self.publish(int(session_id), "state", result if isinstance(result, dict) else {"id": session_id, "state": "deleted"})
        return result, None

    def watched(self) -> set[int]:
        """Sessions some admin client follows live."""
        return set().union(*(proxy.subscriptions for proxy in self.proxies)) if self.proxies else set()

    def flow_stored(self, watched: set[int], flow_id: int, session_ids: list[int], flow: Flow) -> None:
        """One event per followed session the new flow belongs to (watched: computed once per batch)."""
        summary = None
        for session_id in session_ids:
            if session_id in watched:
                summary = summary or {"id": flow_id, **flow.summary()}
                self.publish(session_id, "flow", summary)

    def messages_stored(self, watched: set[int], flow_id: int, session_ids: list[int], count: int,
                        added: int) -> None:
        """A ``messages`` event per followed session of a live flow: how many it has now, how many are new."""
        for session_id in session_ids:
            if session_id in watched:
                self.publish(session_id, "messages", {"id": flow_id, "message_count": count, "added": added})

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
        return {"pid": self.pid, "sessions": len(self.store.list_sessions()), "rejected_flows": self.store.rejected}

    def _create(self, **fields: Any) -> dict[str, Any]:
        _check_filter(fields.get("filter") or "")
        return self.store.create_session(**fields)

    def _messages(self, flow_id: int, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        messages, total = self.store.messages(flow_id, offset, limit)
        return {"messages": [message.detail() for message in messages], "total": total}

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


class SessionProtocol(Protocol):
    """One proxy process's connection."""

    log = Logger()

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._decoder = wire.Decoder()
        self._instance: str | None = None
        self.subscriptions: set[int] = set()
        self.stats: dict[str, Any] | None = None  # the proxy process's last report of itself

    def connectionMade(self) -> None:
        self.manager.proxies.add(self)

    def connectionLost(self, reason: Any) -> None:
        self.manager.proxies.discard(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                self._handle(message)
        except (wire.WireError, AttributeError, KeyError, TypeError, ValueError) as e:
            # Catch-and-log so one bad peer cannot take the store down with it.
            self.log.warn("dropping proxy connection after a bad message: {error}", error=e)
            self.transport.abortConnection()
        except StoreError as e:
            # Nothing was acked, so the proxy resends once it reconnects.
            self.log.error("store failed, dropping the proxy connection: {error}", error=e)
            self.transport.abortConnection()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "flows":
            if self._instance is None:
                raise wire.WireError("flows before hello")
            # A proxy may replay an earlier instance's flows from its spill file.
            instance = str(message["instance"])
            watched = self.manager.watched()
            on_stored = partial(self.manager.flow_stored, watched) if watched else None
            on_messages = partial(self.manager.messages_stored, watched) if watched else None
            last = self.manager.store.ingest(instance, [tuple(item) for item in message["items"]], on_stored,
                                             on_messages)
            self.transport.write(wire.encode("ack", instance=instance, seq=last))
        elif kind == "call":
            args = message.get("args") or {}
            if not isinstance(args, dict):
                raise wire.WireError("call arguments must be a map")
            result, error = self.manager.call(str(message["method"]), args)
            if error is not None:
                self.transport.write(wire.encode("reply", id=message["id"], error=error))
            elif isinstance(result, Iterator):
                self._stream(message["id"], result)
            else:
                self.transport.write(wire.encode("reply", id=message["id"], result=result))
        elif kind == "stats":
            data = message["data"]
            self.stats = data if isinstance(data, dict) else None
        elif kind == "subscribe":
            self.subscriptions.add(int(message["session"]))
        elif kind == "unsubscribe":
            self.subscriptions.discard(int(message["session"]))
        elif kind == "hello":
            self._instance = str(message["instance"])
            last = self.manager.store.last_seq(self._instance)
            self.transport.write(wire.encode("welcome", pid=self.manager.pid, last_seq=last))
            self.transport.write(self.manager.rules_message())
            self.transport.write(self.manager.passthrough.message())
        else:
            raise wire.WireError(f"unknown message type {kind!r}")


    def _stream(self, call_id: Any, chunks: Iterator[bytes]) -> None:
        """Send a long answer in chunks, a few at a time, so ingest keeps its turn."""

        def send() -> Iterator[None]:
            try:
                for data in chunks:
                    if not self.connected:
                        return
                    self.transport.write(wire.encode("chunk", id=call_id, data=data))
                    yield None
            except StoreError as e:
                self.transport.write(wire.encode("reply", id=call_id, error={"status": e.status, "message": str(e)}))
                return
            except Exception:
                self.log.failure("streamed call failed")
                self.transport.write(wire.encode("reply", id=call_id, error={"status": 500, "message": "export failed; see the log"}))
                return
            self.transport.write(wire.encode("reply", id=call_id, result=None))

        cooperate(send())


class SessionFactory(Factory):
    noisy = False

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> SessionProtocol:
        return SessionProtocol(self.manager)
