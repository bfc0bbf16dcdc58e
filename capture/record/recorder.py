"""The recorder: every flow the proxy captures is built here, and handed to the shipper.

On the hot path of every captured request, so a flow stays a plain tuple
of ``Flow``'s fields (``pack_fields``): a named tuple costs several times as
much to build.  A body that came in one chunk is kept without a copy, and
sessions that take everything never make the flow be built as a ``Flow``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from capture.messages import WebSocketClose, WebSocketMessage
from capture.rules import SessionRule, matching_sessions

REDACTED = b"[redacted]"
Headers = list[tuple[bytes, bytes]]


class Live(NamedTuple):
    """An open WebSocket flow as the recorder knows it.

    ``ref`` names it to the shipper; ``sessions`` took it when it opened;
    ``responses``: one of them captures responses, so the origin's messages
    are kept with their content (else they are recorded as omitted).
    """

    ref: int
    sessions: frozenset[int]
    responses: bool


class Recorder:
    """Builds flows as plain field tuples and submits them to the shipper for each session that wants them."""

    def __init__(self, shipper: Any, redact: tuple[str, ...] = ()) -> None:
        self.shipper = shipper
        self._redact = frozenset(name.encode("ascii") for name in redact)

    def candidates(self, client: str) -> tuple[SessionRule, ...]:
        """The sessions that may want this client's flows; empty: nothing is gathered at all."""
        return self.shipper.rules.for_client(client)

    def redact(self, headers: Headers) -> Headers:
        """Headers (or trailers) as stored: [capture] redact names masked, so secrets never reach the store.

        Without names to mask, the list itself comes back: it is packed at once, not kept.
        """
        names = self._redact
        if not names:
            return headers
        return [(n, REDACTED) if n.lower() in names else (n, v) for n, v in headers]

    def submit(self, candidates: tuple[SessionRule, ...], flow: tuple[Any, ...]) -> None:
        sessions = matching_sessions(candidates, flow)
        if sessions:
            self.shipper.submit(flow, sessions)

    def http(self, candidates: tuple[SessionRule, ...], client: str, client_port: int, scheme: str, host: str,
             port: int, method: str, path: str, version: str,
             request: tuple[Headers, Headers, list[bytes], int],
             status: int, reason: str, response: tuple[Headers, Headers, list[bytes] | None, int] | None,
             times: tuple[float, float | None, float | None, float], error: str, server_ip: str,
             stream_id: int = 0, client_tls: tuple[str, str, str, str] | None = None,
             server_tls: tuple[str, str, str, str] | None = None,
             grpc_order: list[tuple[bool, float]] | tuple[()] = ()) -> None:
        """One HTTP exchange.  Messages come as (headers, trailers, captured chunks, true size):
        the response's chunks are None when responses are not captured; ``grpc_order`` is which
        way each gRPC message went and when (capture.http.grpc)."""
        headers, trailers, chunks, size = request
        body = b"".join(chunks)
        packed_response = None
        if response is not None:
            r_headers, r_trailers, r_chunks, r_size = response
            r_body = b"".join(r_chunks) if r_chunks is not None else b""
            packed_response = (self.redact(r_headers), r_body, r_size, r_chunks is None or r_size > len(r_body),
                               self.redact(r_trailers))
        start, request_done, response_start, end = times
        self.submit(candidates, (
            client, client_port, scheme, host, port, method, path, version,
            (self.redact(headers), body, size, size > len(body), self.redact(trailers)),
            status, reason, packed_response, start, request_done, response_start, end, error, server_ip, "http",
            stream_id, client_tls, server_tls, grpc_order,
        ))

    def tunnel(self, client: str, client_port: int, scheme: str, host: str, port: int, start: float, end: float,
               up: int, down: int, error: str) -> None:
        """A tunnel (or a failed TLS handshake) as a flow: bytes each way and how long it lasted."""
        candidates = self.candidates(client)
        if candidates:
            self.submit(candidates, (
                client, client_port, scheme, host, port, "CONNECT", "", "1.1", ((), b"", up, False, ()),
                0, "", ((), b"", down, False, ()) if not error else None, start, None, None, end, error, "", "tunnel",
                0, None, None, (),
            ))

    # -- WebSocket: a flow that stays open ---------------------------------------------------

    def websocket(self, client: str, client_port: int, scheme: str, host: str, port: int, path: str,
                  version: str, request_headers: Headers, reason: str, response_headers: Headers,
                  times: tuple[float, float | None, float | None, float | None], error: str, server_ip: str,
                  client_tls: tuple[str, str, str, str] | None,
                  server_tls: tuple[str, str, str, str] | None) -> tuple[Any, ...]:
        """A WebSocket's flow fields: the upgrade request, its 101, kind websocket; ``end`` None while open."""
        start, request_done, response_start, end = times
        return (
            client, client_port, scheme, host, port, "GET", path, version,
            (self.redact(request_headers), b"", 0, False, ()), 101, reason,
            (self.redact(response_headers), b"", 0, False, ()), start, request_done, response_start, end,
            error, server_ip, "websocket", 0, client_tls, server_tls, (),
        )

    def open_websocket(self, candidates: tuple[SessionRule, ...], flow: tuple[Any, ...]) -> Live | None:
        """Ship an open WebSocket flow to the sessions that want it; None when none does.

        The sessions' filters see the upgrade request and its 101, never a
        message: those are yet to come.  The origin's messages are the
        socket's responses, kept with their content only if one of these
        sessions captures responses.
        """
        sessions = matching_sessions(candidates, flow)
        if not sessions:
            return None
        responses = any(rule.capture_responses for rule in candidates if rule.session_id in sessions)
        return Live(self.shipper.open_live(flow, sessions), frozenset(sessions), responses)

    def websocket_messages(self, live: Live, client: str, messages: list[WebSocketMessage]) -> None:
        """Messages go to the open flow while one of its sessions still captures (a paused one records none).

        An origin's message with content, where no session captures responses, is stored as omitted.
        """
        if any(rule.session_id in live.sessions for rule in self.candidates(client)):
            if not live.responses:
                messages = [m if m.from_client or m.omitted else _omitted(m) for m in messages]
            self.shipper.live_messages(live.ref, messages)

    def close_websocket(self, live: Live, flow: tuple[Any, ...], close: WebSocketClose) -> None:
        """The WebSocket's final flow and how it closed."""
        self.shipper.close_live(live.ref, flow, close)


def _omitted(message: WebSocketMessage) -> WebSocketMessage:
    return message._replace(content=b"", truncated=message.size > 0, omitted=True)
