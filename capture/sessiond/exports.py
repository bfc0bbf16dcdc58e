"""Exports the session manager answers: HAR, Postman, cookies, curl.

Large answers are generators of byte chunks; the socket server sends them a
few at a time, so a big export never stops flows from being stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from capture import __version__
from capture.export import cookies, curl, har, is_exchange, postman
from capture.flow import Flow
from capture.messages import WebSocketMessage
from capture.sessiond.store import MAX_PAGE, Conflict, Invalid, NotFound, Store

CHUNK = 256 * 1024


class Exports:
    def __init__(self, store: Store) -> None:
        self.store = store

    def har(self, session_id: int, filter: str = "") -> Iterator[bytes]:
        self.store.get_session(session_id)  # NotFound before the first chunk
        flows = self.store.iter_flows(session_id, filter=filter)  # the filter checked before the first chunk
        return _rechunk(har.stream(self._with_messages(flows), __version__))

    def postman(self, session_id: int, filter: str = "") -> Iterator[bytes]:
        session = self.store.get_session(session_id)
        # WebSockets go in too, only to be counted in the collection's description.
        flows = (flow for _, flow in self.store.iter_flows(session_id, filter=filter)
                 if is_exchange(flow) or flow.kind == "websocket")
        document = postman.collection(flows, session["name"], session["capture_responses"])
        data = json.dumps(document, indent=1).encode("utf-8")
        return iter([data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""])

    def cookies(self, session_id: int, format: str = "json", filter: str = "") -> Any:
        session = self.store.get_session(session_id)
        settings = session["cookies"]
        if not settings["enabled"]:
            raise Conflict(f"cookie capture is off for session {session_id}; create it with \"cookies\": {{\"enabled\": true}}")
        jar = cookies.jar(self._flows(session_id, filter), settings["domains"])
        return cookies.netscape(jar) if format == "netscape" else {"cookies": jar}

    def raw_body(self, flow_id: int, part: str) -> bytes:
        """A message's body as stored: the bytes that crossed the wire (still compressed, if they were)."""
        flow = self.store.load_flow(flow_id)
        if part not in ("request", "response"):
            raise Invalid("part must be request or response")
        message = flow.request if part == "request" else flow.response
        if message is None:
            raise NotFound(f"flow {flow_id} has no response")
        return message.body

    def curl(self, flow_id: int) -> str:
        flow = self.store.load_flow(flow_id)
        try:
            return curl.command(flow)
        except ValueError as e:  # a tunnel or a CONNECT is no request to replay
            raise Invalid(f"flow {flow_id} cannot be replayed with curl: {e}") from None

    def _flows(self, session_id: int, expression: str) -> Iterator[Flow]:
        """The session's HTTP exchanges, oldest first, through the filter if one is given.

        The store checks the filter at once, so a bad one is a 400 rather
        than an export cut off after its first chunk.
        """
        return (flow for _, flow in self.store.iter_flows(session_id, filter=expression) if is_exchange(flow))


    def _with_messages(self, flows: Iterable[tuple[int, Flow]]) -> Iterator[har.Exported]:
        """Each HTTP flow, and each WebSocket with every message it has stored."""
        for flow_id, flow in flows:
            if flow.kind == "websocket":
                yield flow, self._messages(flow_id)
            elif is_exchange(flow):
                yield flow

    def _messages(self, flow_id: int) -> list[WebSocketMessage]:
        messages: list[WebSocketMessage] = []
        while True:
            try:
                page, total = self.store.messages(flow_id, len(messages), MAX_PAGE)
            except NotFound:  # cleared while the export ran
                return messages
            messages.extend(page)
            if not page or len(messages) >= total:
                return messages


def _rechunk(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Gather small pieces into chunks of about CHUNK bytes."""
    buffer: list[bytes] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)
