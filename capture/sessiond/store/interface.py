"""The store interface: everything the session manager asks of a store backend.

The session manager (its socket server and exports) holds a :class:`Store`
and calls nothing else: no SQL, no connection, no backend's own names.  A
backend is a module under :mod:`capture.sessiond.store` with a class that
satisfies this protocol; :func:`capture.sessiond.store.open_store` picks it
from ``[store] database``.

Every method is synchronous and raises the :class:`StoreError` subclasses
below for what the admin API answers as 400, 404 and 409.  Session and flow
dictionaries are the shapes the admin API returns (see SPEC section 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from capture import filters
from capture.flow import Flow
from capture.messages import WebSocketClose, WebSocketMessage

MAX_NAME = 200
MAX_PAGE = 1000


class StoreError(Exception):
    """A store operation refused; ``status`` is what the admin API answers."""

    status: int = 500


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    """The session is in a state that does not allow the change."""

    status = 409


class Invalid(StoreError):
    status = 400


class Unavailable(StoreError):
    """The database failed or cannot be reached; the call changed nothing and may be retried."""

    status = 503


#: ``(seq, session_ids, packed_flow)``: one captured flow as the proxy ships it; a live
#: (WebSocket) flow's items are ``(seq, session_ids, payload, op, ref)`` (see capture.delivery).
BatchItem = tuple[Any, ...]
#: Called with ``(flow_id, session_ids, flow)`` for each flow a batch stored (or a live flow's end).
OnStored = Callable[[int, list[int], Flow], None]
#: Called with ``(flow_id, session_ids, message_count, added)`` for each live flow a batch added messages to.
OnMessages = Callable[[int, list[int], int, int], None]


class Store(Protocol):
    """Sessions, captured flows and the delivery marks that make ingest exactly-once."""

    #: Flows dropped by :meth:`ingest` because they could not be decoded.
    rejected: int
    #: True when calls wait on the network: the session manager then makes
    #: every call from one worker thread, never from its reactor.
    blocking: bool

    def close(self) -> None:
        """Release the connection(s); no call may follow."""

    def health(self) -> dict[str, Any]:
        """``backend``, ``reachable``, ``error`` (why not, or None) and ``since``: safe from any thread."""

    def watch(self, callback: Callable[[str], None]) -> None:
        """Have ``callback`` told, from any thread, ``"sessions"`` when sessions changed
        through another appliance and ``"health"`` when the database went or came back."""

    # sessions

    def create_session(
        self,
        name: str,
        clients: Iterable[str] = (),
        filter: str = "",
        capture_responses: bool = True,
        cookies: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a new session, capturing at once; Invalid for a bad field."""

    def get_session(self, session_id: int) -> dict[str, Any]:
        """One session; NotFound when there is none."""

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every session, oldest first."""

    def rename(self, session_id: int, name: str) -> dict[str, Any]:
        """Give a session, in any state, a new name; Invalid for a bad one."""

    def pause(self, session_id: int) -> dict[str, Any]:
        """capturing -> paused; Conflict from any other state."""

    def resume(self, session_id: int) -> dict[str, Any]:
        """paused -> capturing; Conflict from any other state."""

    def stop(self, session_id: int) -> dict[str, Any]:
        """capturing or paused -> stopped, for good; the flows stay as history."""

    def clear(self, session_id: int) -> dict[str, Any]:
        """Drop the session's flows and keep its state; Conflict when stopped."""

    def delete(self, session_id: int) -> None:
        """Remove a session in any state, and every flow only it held."""

    def idle_sessions(self, before: float) -> list[int]:
        """Sessions with no change and no flow since ``before`` (seconds since the epoch): for pruning."""

    # ingest

    def ingest(
        self, instance: str, batch: Sequence[BatchItem], on_stored: OnStored | None = None,
        on_messages: OnMessages | None = None, worker: int = 0, ended: bool = False,
    ) -> int:
        """Store a batch from one proxy instance, each flow exactly once; returns the new mark.

        Items at or below the instance's mark (a resend after a lost ack) are
        skipped; the flows and the mark commit together.  A flow naming no
        existing session is dropped; one that cannot be decoded is counted
        in :attr:`rejected`.  ``on_stored`` and ``on_messages`` run after the
        commit.  A live flow's ``open`` is stored as a flow and remembered by
        (instance, seq) with ``worker``, the number of the proxy process that
        shipped it (0 the main one); its ``messages`` are appended in order
        and its ``close`` replaces its record and its close; items for a live
        flow that was never stored (no session wanted it) or is gone
        (cleared) are skipped.  ``ended``: the batch comes from a proxy run
        that is over (a later run replays its spill file), so a live flow it
        opens is closed at once with ``PROXY_STOPPED``; its messages that
        follow are still appended, and a close of its own still replaces that.
        """

    def close_orphans(
        self, instance: str, worker: int, workers: int | None = None
    ) -> list[tuple[int, list[int], Flow]]:
        """Close with ``PROXY_STOPPED`` the open WebSocket flows this appliance's proxy runs left behind.

        ``instance`` has just said hello as proxy process ``worker`` of this
        appliance: the flows that process opened in any other run, and those
        of processes numbered ``workers`` or more (a run with fewer workers
        has none of them), have lost their sockets.  The flows of ``instance``
        itself, of other workers and of other appliances stay as they are.
        Returns ``(flow_id, session_ids, flow)`` for each flow closed.
        """

    def last_seq(self, instance: str) -> int:
        """The highest sequence number stored for ``instance``; 0 if none."""

    # queries

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
        """A page of a session's flow summaries and how many match in all.

        The filter goes to the database where it can be said exactly there,
        and is run on the decoded flows for the rest; ``predicate`` is one
        more test on the decoded flow.
        """

    def iter_flows(self, session_id: int, filter: str | filters.Filter = "") -> Iterator[tuple[int, Flow]]:
        """``(flow_id, Flow)`` for each flow of the session the filter selects, oldest first.

        For exports and cookies: the filter and the session are checked
        before this returns; the rows are read a chunk at a time.
        """

    def stats(self, session_id: int) -> dict[str, Any]:
        """Counts and sizes, overall and by method, host, status class, content type and client."""

    def get_flow(self, flow_id: int) -> dict[str, Any]:
        """The full flow (detail) with the ids of the sessions holding it."""

    def load_flow(self, flow_id: int) -> Flow:
        """The stored Flow itself (for copy as curl and the like)."""

    def messages(self, flow_id: int, offset: int = 0, limit: int = MAX_PAGE) -> tuple[list[WebSocketMessage], int]:
        """A page of a WebSocket flow's messages, in the order they passed, and how many it has.

        ``offset`` skips that many; a flow that is not a WebSocket has none;
        NotFound when there is no such flow.
        """

    def websocket_close(self, flow_id: int) -> WebSocketClose | None:
        """How a WebSocket flow ended: None while it is open, and for other flows."""
