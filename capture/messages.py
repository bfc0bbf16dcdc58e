"""WebSocket messages as captured: the record, its packed form, and how the API shows it.

A WebSocket flow is opened when the upgrade completes and its messages are
shipped in batches while the socket stays open (see :mod:`capture.delivery`),
so messages travel apart from the flow record.  A batch packs to a msgpack
array ``[2, [message, ...]]``, each message ``[from_client, type, content,
size, truncated, time, omitted]``; the end of a socket packs to ``[1, code,
reason, closed_by]``.  Version 1 batches, and messages stored before
``omitted`` existed, have the first six fields only, and are read as not
omitted.  Everything here is pure data.
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

import msgpack

from capture.flow import iso_time

VERSION = 2
# The batch versions read, and how many fields each one's messages have.
_MESSAGE_FIELDS = {1: 6, 2: 7}
CLOSE_VERSION = 1
TYPES = ("text", "binary")
CLOSERS = ("client", "server", "proxy")
# Chrome's opcodes, as HAR's _webSocketMessages carry them.
OPCODES = {"text": 1, "binary": 2}
# Messages the flow detail lists; the rest are paged (``GET /api/flows/ID/messages``).
DETAIL_MESSAGES = 1000


class WebSocketMessage(NamedTuple):
    """One text or binary message that crossed the proxy.

    ``content`` holds at most ``max_capture_body`` bytes of the message as
    the application sent it (after permessage-deflate is undone); ``size``
    is its true decompressed size.  ``time`` is when its last frame passed.
    ``omitted``: the content was not kept at all (a message from the server
    in a socket no session captures responses for); ``content`` is empty and
    ``size`` still the true size.
    """

    from_client: bool
    type: str
    content: bytes
    size: int
    truncated: bool
    time: float
    omitted: bool = False

    def detail(self) -> dict[str, Any]:
        """JSON-ready: text as it is, binary (or text that is not UTF-8) as base64."""
        content, encoding = text_or_base64(self.content)
        return {
            "from_client": self.from_client,
            "type": self.type,
            "content": content,
            "encoding": encoding,
            "size": self.size,
            "truncated": self.truncated,
            "omitted": self.omitted,
            "time": iso_time(self.time),
        }


class WebSocketClose(NamedTuple):
    """How a socket ended: the close code and reason, and which side ended it.

    ``code`` is None when no close frame was seen at all; 1006 means a side's
    connection dropped without one.  ``closed_by`` is ``client``, ``server``
    or ``proxy`` (a protocol error, a message over the size bound, or the
    proxy process gone: ``PROXY_STOPPED``).
    """

    code: int | None
    reason: str
    closed_by: str

    def detail(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "closed_by": self.closed_by}


#: How the store ends a socket whose proxy process was killed or crashed: that run's
#: close never comes, so the next run of the same proxy process closes it thus.
PROXY_STOPPED = WebSocketClose(1006, "proxy stopped", "proxy")


def pack_messages(messages: list[WebSocketMessage] | list[tuple[Any, ...]]) -> bytes:
    """A batch of messages as shipped and stored."""
    return msgpack.packb((VERSION, [tuple(m) for m in messages]), use_bin_type=True)


def unpack_messages(data: bytes) -> list[WebSocketMessage]:
    """Read a packed batch; ValueError for anything malformed."""
    version, items = _unpack(data, 2)
    fields = _MESSAGE_FIELDS.get(version) if type(version) is int else None
    if fields is None or type(items) is not tuple:
        raise ValueError("unsupported WebSocket message batch")
    return [_message(item, fields) for item in items]


def pack_message(message: WebSocketMessage) -> bytes:
    """One message alone, as the store keeps it (one row each)."""
    return msgpack.packb(tuple(message), use_bin_type=True)


def unpack_message(data: bytes) -> WebSocketMessage:
    """One stored message: seven fields, or the six of one stored before ``omitted`` existed."""
    item = _unpack(data, 6, 7)
    return _message(item, len(item))


def pack_close(close: WebSocketClose) -> bytes:
    return msgpack.packb((CLOSE_VERSION, *close), use_bin_type=True)


def unpack_close(data: bytes) -> WebSocketClose:
    version, code, reason, closed_by = _unpack(data, 4)
    if version != CLOSE_VERSION or not (code is None or type(code) is int) or type(reason) is not str \
            or closed_by not in CLOSERS:
        raise ValueError("malformed WebSocket close record")
    return WebSocketClose(code, reason, closed_by)


def unpack_live_close(data: Any) -> tuple[bytes, bytes]:
    """The end of a live flow as shipped: (its final packed flow, its packed close), the close checked."""
    flow, close = _unpack(data, 2)
    if type(flow) is not bytes or type(close) is not bytes:
        raise ValueError("malformed end of a live flow")
    unpack_close(close)
    return flow, close


def websocket_section(messages: list[WebSocketMessage], count: int, close: WebSocketClose | None) -> dict[str, Any]:
    """The flow detail's ``websocket`` part: the first messages, how many there are, how it ended."""
    return {
        "open": close is None,
        "message_count": count,
        "messages": [message.detail() for message in messages],
        "close": None if close is None else close.detail(),
    }


def text_or_base64(data: bytes) -> tuple[str, str]:
    """(content, encoding): UTF-8 text as it is, anything else as base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _unpack(data: Any, *lengths: int) -> tuple[Any, ...]:
    if type(data) is not bytes:
        raise ValueError("a packed record must be bytes")
    try:
        value = msgpack.unpackb(data, raw=False, use_list=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ValueError(f"malformed record: {e}") from None
    if type(value) is not tuple or len(value) not in lengths:
        raise ValueError("malformed record")
    return value


def _message(item: Any, fields: int) -> WebSocketMessage:
    if type(item) is not tuple or len(item) != fields:
        raise ValueError("malformed WebSocket message")
    from_client, kind, content, size, truncated, moment = item[:6]
    omitted = item[6] if fields == 7 else False
    if not (type(from_client) is bool and kind in TYPES and type(content) is bytes and type(size) is int
            and type(truncated) is bool and type(moment) in (int, float) and type(omitted) is bool):
        raise ValueError("malformed WebSocket message")
    return WebSocketMessage(from_client, kind, content, size, truncated, float(moment), omitted)
