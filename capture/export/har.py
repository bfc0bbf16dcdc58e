"""HAR 1.2 (HTTP Archive) export of captured flows.

The format browsers' developer tools save and load, so a session opens in
any HAR viewer.  Tunnels and failed CONNECTs are not HTTP requests and are
left out.  Bodies are text when they are UTF-8 and base64 otherwise (HAR has
an ``encoding`` field for responses only; a base64 request body says so in
its ``comment``); a body cut at ``max_capture_body`` says so in a comment.
Bodies sent with a Content-Encoding (gzip, deflate, br, zstd) are given
decoded (capture.decoding), as browsers save them, and a comment says from
what; ``content.compression`` is the bytes the encoding saved.
A WebSocket is an entry as Chrome writes one: the upgrade exchange with
``_resourceType: "websocket"`` and its messages in ``_webSocketMessages``
(``type`` send or receive, ``time`` in epoch seconds, ``opcode`` 1 for
text and 2 for binary, ``data`` the text, or base64 for binary).  Flows come
alone, or as ``(flow, messages)`` pairs for WebSockets.
:func:`stream` writes a document one entry at a time, so exporting a large
session never builds one giant string.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any, Iterable, Iterator, Sequence, Union
from urllib.parse import parse_qsl

from capture.decoding import Decoded, decode_message
from capture.export import header_values, is_exchange, media_type, split_target, utf8
from capture.export.cookies import parse_cookie_header, parse_set_cookie
from capture.flow import Flow, Headers, Message, iso_time
from capture.messages import OPCODES, WebSocketMessage

__all__ = ["document", "entry", "stream"]

VERSION = "1.2"
_UNKNOWN_MIME = "x-unknown"  # what browsers write when there is no Content-Type

#: A flow, or a WebSocket flow with its messages.
Exported = Union[Flow, tuple[Flow, Sequence[WebSocketMessage]]]


def document(flows: Iterable[Exported], creator_version: str) -> dict[str, Any]:
    """A whole HAR document: ``{"log": {...}}`` with one entry per HTTP flow or WebSocket, in order."""
    return {"log": {**_log_head(creator_version), "entries": [entry(*pair) for pair in _pairs(flows)]}}


def stream(flows: Iterable[Exported], creator_version: str) -> Iterator[bytes]:
    """The same document as :func:`document`, as UTF-8 JSON pieces, one entry per piece."""
    head = json.dumps(_log_head(creator_version), ensure_ascii=False)
    yield ('{"log": ' + head[:-1] + ', "entries": [').encode("utf-8")
    separator = ""
    for flow, messages in _pairs(flows):
        yield (separator + json.dumps(entry(flow, messages), ensure_ascii=False)).encode("utf-8")
        separator = ", "
    yield b"]}}"


def _pairs(flows: Iterable[Exported]) -> Iterator[tuple[Flow, Sequence[WebSocketMessage]]]:
    for item in flows:
        flow, messages = item if isinstance(item, tuple) and not isinstance(item, Flow) else (item, ())
        if is_exchange(flow) or flow.kind == "websocket":
            yield flow, messages


def _log_head(creator_version: str) -> dict[str, Any]:
    return {"version": VERSION, "creator": {"name": "capture", "version": creator_version}, "pages": []}


def entry(flow: Flow, messages: Sequence[WebSocketMessage] = ()) -> dict[str, Any]:
    """One HAR entry for an HTTP flow or a WebSocket (with its messages).

    A flow that got no response has status 0 and says why in ``comment``.
    """
    timings = _timings(flow)
    result: dict[str, Any] = {
        "startedDateTime": iso_time(flow.start),
        "time": round(timings["send"] + timings["wait"] + timings["receive"], 3),
        "request": _request(flow),
        "response": _response(flow),
        "cache": {},
        "timings": timings,
    }
    if _is_ip(flow.server_ip):
        result["serverIPAddress"] = flow.server_ip
    if flow.error:
        result["comment"] = flow.error
    if flow.kind == "websocket":
        result["_resourceType"] = "websocket"
        result["_webSocketMessages"] = [_websocket_message(message) for message in messages]
    return result


def _websocket_message(message: WebSocketMessage) -> dict[str, Any]:
    if message.type == "text":
        data = message.content.decode("utf-8", "replace")
    else:
        data = base64.b64encode(message.content).decode("ascii")
    exported = {"type": "send" if message.from_client else "receive", "time": message.time,
                "opcode": OPCODES[message.type], "data": data}
    if message.omitted:
        exported["_omitted"] = True  # data is empty: the session did not capture responses
    return exported


def _request(flow: Flow) -> dict[str, Any]:
    message = flow.request
    _, query = split_target(flow.path)
    request: dict[str, Any] = {
        "method": flow.method,
        "url": flow.url,
        "httpVersion": f"HTTP/{flow.http_version}",
        "cookies": [
            {"name": name, "value": value}
            for header in header_values(message.headers, "cookie")
            for name, value in parse_cookie_header(header)
        ],
        "headers": _headers(message.headers),
        "queryString": [
            {"name": name, "value": value}
            for name, value in parse_qsl(query, keep_blank_values=True, errors="replace")
        ],
        "headersSize": _head_size(f"{flow.method} {flow.path} HTTP/{flow.http_version}", message.headers),
        "bodySize": message.size,
    }
    if message.body or message.size:
        request["postData"] = _post_data(message)
    return request


def _post_data(message: Message) -> dict[str, Any]:
    post: dict[str, Any] = {"mimeType": (header_values(message.headers, "content-type") or [""])[0]}
    comments = []
    decoded = decode_message(message.headers, message.body)
    text = utf8(decoded.body)
    if text is None:
        post["text"] = base64.b64encode(decoded.body).decode("ascii")
        comments.append("base64")
    else:
        post["text"] = text
        if media_type(message.headers) == "application/x-www-form-urlencoded" and not message.truncated:
            post["params"] = [
                {"name": name, "value": value}
                for name, value in parse_qsl(text, keep_blank_values=True, errors="replace")
            ]
    comments += _decoding_notes(decoded)
    if message.truncated:
        comments.append(_truncated(message))
    if comments:
        post["comment"] = "; ".join(comments)
    return post


def _decoding_notes(decoded: Decoded) -> list[str]:
    """What a reader must know about a decoded body: from what, and whether it is all there."""
    notes = []
    if decoded.error:
        notes.append(f"not decoded: {decoded.error}")
    elif decoded.encoding:
        notes.append(f"decoded from Content-Encoding {decoded.encoding}")
        if decoded.cut:
            notes.append(f"decoded content cut at {len(decoded.body)} bytes")
        if decoded.partial:
            notes.append("the stored bytes end early, so the decoded content does too")
    return notes


def _response(flow: Flow) -> dict[str, Any]:
    message = flow.response
    if message is None:
        return {
            "status": 0,
            "statusText": "",
            "httpVersion": "",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": _UNKNOWN_MIME},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }
    moment = flow.response_start or flow.end or flow.start
    return {
        "status": flow.status,
        "statusText": flow.reason,
        "httpVersion": f"HTTP/{flow.http_version}",
        "cookies": [cookie for header in header_values(message.headers, "set-cookie") if (cookie := _set_cookie(header, moment))],
        "headers": _headers(message.headers),
        "content": _content(message),
        "redirectURL": (header_values(message.headers, "location") or [""])[0],
        "headersSize": _head_size(f"HTTP/{flow.http_version} {flow.status} {flow.reason}", message.headers),
        "bodySize": message.size,
    }


def _content(message: Message) -> dict[str, Any]:
    """Response content: decoded (gzip, deflate, br, zstd), as text or base64."""
    content: dict[str, Any] = {
        "size": message.size,
        "mimeType": (header_values(message.headers, "content-type") or [_UNKNOWN_MIME])[0],
    }
    decoded = decode_message(message.headers, message.body)
    body = decoded.body
    if decoded.encoding:
        content["size"] = len(body)
        if not (decoded.cut or decoded.partial or message.truncated):
            content["compression"] = len(body) - message.size
    if body:
        text = utf8(body)
        if text is None:
            content["text"] = base64.b64encode(body).decode("ascii")
            content["encoding"] = "base64"
        else:
            content["text"] = text
    comments = _decoding_notes(decoded)
    if message.truncated:
        comments.append(_truncated(message))
    if comments:
        content["comment"] = "; ".join(comments)
    return content


def _set_cookie(header: str, moment: float) -> dict[str, Any] | None:
    parsed = parse_set_cookie(header)
    if parsed is None:
        return None
    cookie: dict[str, Any] = {"name": parsed.name, "value": parsed.value}
    if parsed.path is not None:
        cookie["path"] = parsed.path
    if parsed.domain is not None:
        cookie["domain"] = parsed.domain
    expiry = parsed.expiry(moment)
    if expiry is not None:
        cookie["expires"] = iso_time(max(expiry, 0.0))
    cookie["httpOnly"] = parsed.http_only
    cookie["secure"] = parsed.secure
    if parsed.same_site is not None:
        cookie["sameSite"] = parsed.same_site
    return cookie


def _timings(flow: Flow) -> dict[str, float]:
    """send, wait and receive in ms from the flow's phase times; phases never reached last 0.

    Connection setup is not measured apart from sending, so blocked, dns,
    connect and ssl are -1 (not applicable) and ``time`` is send + wait + receive.
    """
    start = flow.start
    known = [t for t in (flow.request_done, flow.response_start, flow.end) if t is not None]
    end = max(start, flow.end if flow.end is not None else max(known, default=start))
    request_done = _between(flow.request_done, start, end, default=end if flow.response_start is None else flow.response_start)
    response_start = _between(flow.response_start, request_done, end, default=end)
    return {
        "blocked": -1,
        "dns": -1,
        "connect": -1,
        "ssl": -1,
        "send": _ms(request_done - start),
        "wait": _ms(response_start - request_done),
        "receive": _ms(end - response_start),
    }


def _between(moment: float | None, low: float, high: float, default: float) -> float:
    return min(max(default if moment is None else moment, low), high)


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 3)


def _headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": key.decode("latin-1"), "value": value.decode("latin-1")} for key, value in headers]


def _head_size(start_line: str, headers: Headers) -> int:
    """Bytes of the message head as re-serialised: start line, ``Name: value`` lines, blank line."""
    return len(start_line) + 2 + sum(len(key) + 2 + len(value) + 2 for key, value in headers) + 2


def _truncated(message: Message) -> str:
    return f"truncated: {len(message.body)} of {message.size} bytes stored"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
