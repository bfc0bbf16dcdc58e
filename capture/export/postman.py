"""Postman Collection v2.1 export of captured flows.

Laid out as Postman's own capture does with "organize by domain and
endpoints": a folder per host, then nested folders for the path segments
(all but the last), one request item per distinct request (method, URL and
body; the first occurrence wins), and, when asked, every captured response
as a saved example of its request.  Requests must run as they stand under
Postman or ``newman``: connection and proxy headers, Host and Content-Length
are left for the client to write, and a body Postman cannot send faithfully
(binary, or a multipart file it does not have) is described rather than
mangled.  A collection holds HTTP requests only: WebSockets are left out,
and the collection's description says how many and why.
"""

from __future__ import annotations

import hashlib
import uuid
from http import HTTPStatus
from typing import Any, Iterable
from urllib.parse import parse_qsl

from capture.decoding import decode_message
from capture.export import (
    FormPart,
    header_values,
    is_exchange,
    language,
    media_type,
    multipart_parts,
    replay_headers,
    split_target,
    utf8,
)
from capture.flow import Flow, Message

__all__ = ["SCHEMA", "collection"]

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# Methods for which Postman drops a body unless told not to.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "COPY", "UNLINK", "PURGE"})


def collection(flows: Iterable[Flow], name: str, with_responses: bool) -> dict[str, Any]:
    """A Postman v2.1 collection of the HTTP flows; tunnels, failed CONNECTs and WebSockets are skipped."""
    root: list[dict[str, Any]] = []
    folders: dict[tuple[str, ...], dict[str, Any]] = {}
    items: dict[tuple[str, str, bytes], dict[str, Any]] = {}

    def folder(names: tuple[str, ...]) -> list[dict[str, Any]]:
        if not names:
            return root
        if names not in folders:
            node = {"name": names[-1], "item": []}
            folder(names[:-1]).append(node)
            folders[names] = node
        return folders[names]["item"]

    websockets = 0
    for flow in flows:
        if flow.kind == "websocket":
            websockets += 1
            continue
        if not is_exchange(flow):
            continue
        # A digest, not the body: duplicates need not keep their bodies alive.
        key = (flow.method, flow.url, hashlib.sha256(flow.request.body).digest())
        item = items.get(key)
        if item is None:
            item = items[key] = _item(flow)
            path, _ = split_target(flow.path)
            segments = tuple(segment or "/" for segment in path[1:].split("/")[:-1])
            folder((_authority(flow), *segments)).append(item)
        if with_responses and flow.response is not None:
            item["response"].append(_example(flow, item["request"]))
    info: dict[str, Any] = {"_postman_id": str(uuid.uuid4()), "name": name, "schema": SCHEMA}
    if websockets:
        plural = "s are" if websockets > 1 else " is"
        info["description"] = (f"{websockets} WebSocket connection{plural} left out: a Postman collection holds"
                               " HTTP requests only. The HAR export of this session carries them with their"
                               " messages.")
    return {"info": info, "item": root}


def _authority(flow: Flow) -> str:
    default = 443 if flow.scheme == "https" else 80
    return flow.host if flow.port == default else f"{flow.host}:{flow.port}"


def _item(flow: Flow) -> dict[str, Any]:
    request = _request(flow)
    item: dict[str, Any] = {"name": f"{flow.method} {flow.path}", "request": request, "response": []}
    if "body" in request and flow.method.upper() in _BODYLESS:
        item["protocolProfileBehavior"] = {"disableBodyPruning": True}
    return item


def _request(flow: Flow) -> dict[str, Any]:
    message = flow.request
    decoded = decode_message(message.headers, message.body)
    if decoded.encoding and not (decoded.cut or decoded.partial):
        # Postman sends the body as given: it goes decoded, so it must not claim an encoding.
        headers_kept = [(k, v) for k, v in message.headers if k.lower() != b"content-encoding"]
        message = message._replace(headers=tuple(headers_kept), body=decoded.body, size=len(decoded.body))
    body, note = _body(message)
    if message is not flow.request:
        note = " ".join(filter(None, [f"The request body was sent with Content-Encoding {decoded.encoding}; "
                                      "it is included decoded, without that header.", note]))
    headers = [
        {"key": key.decode("latin-1"), "value": value.decode("latin-1")}
        for key, value in replay_headers(message.headers)
        if key.lower() != b"host"
        # formdata: Postman writes a Content-Type with its own boundary.
        and not (body is not None and body["mode"] == "formdata" and key.lower() == b"content-type")
    ]
    request: dict[str, Any] = {"method": flow.method, "header": headers, "url": _url(flow)}
    if body is not None:
        request["body"] = body
    if note:
        request["description"] = note
    return request


def _url(flow: Flow) -> dict[str, Any]:
    path, query = split_target(flow.path)
    url: dict[str, Any] = {
        "raw": flow.url,
        "protocol": flow.scheme,
        "host": [f"[{flow.host}]"] if ":" in flow.host else flow.host.split("."),
    }
    if flow.port != (443 if flow.scheme == "https" else 80):
        url["port"] = str(flow.port)
    url["path"] = path[1:].split("/") if path.startswith("/") else [path]
    if query:
        # Kept as captured (still percent-encoded): Postman rebuilds the URL from these.
        url["query"] = [
            {"key": key, "value": value if equals else None}
            for key, equals, value in (pair.partition("=") for pair in query.split("&"))
        ]
    return url


def _body(message: Message) -> tuple[dict[str, Any] | None, str]:
    """The Postman body for a request, and a note for what could not be kept."""
    if not message.body and not message.size:
        return None, ""
    content_type = (header_values(message.headers, "content-type") or [""])[0]
    media = media_type(message.headers)
    text = utf8(message.body)
    if message.truncated:
        note = f"The request body was truncated at capture: {len(message.body)} of {message.size} bytes stored."
        if text is None:
            return None, note + " It is binary and is not included."
        return _raw(text, media), note + " Only the stored bytes are sent."
    if media == "application/x-www-form-urlencoded" and text is not None:
        pairs = parse_qsl(text, keep_blank_values=True, errors="replace")
        return {"mode": "urlencoded", "urlencoded": [{"key": k, "value": v} for k, v in pairs]}, ""
    if media == "multipart/form-data":
        parts = multipart_parts(message.body, content_type)
        if parts is not None:
            return {"mode": "formdata", "formdata": [_form_field(part) for part in parts]}, _files_note(parts)
    if text is None:
        kind = f" {media}" if media else ""
        return None, f"The request had a binary{kind} body of {message.size} bytes, not included."
    return _raw(text, media), ""


def _raw(text: str, media: str) -> dict[str, Any]:
    return {"mode": "raw", "raw": text, "options": {"raw": {"language": language(media)}}}


def _form_field(part: FormPart) -> dict[str, Any]:
    value = utf8(part.value)
    if part.filename is None and value is not None:
        field = {"key": part.name, "value": value, "type": "text"}
    else:
        field = {"key": part.name, "type": "file", "src": part.filename or part.name}
    if part.content_type:
        field["contentType"] = part.content_type
    return field


def _files_note(parts: list[FormPart]) -> str:
    files = [part.filename or part.name for part in parts if part.filename is not None or utf8(part.value) is None]
    if not files:
        return ""
    return "Uploaded files are not in the collection; choose them before sending: " + ", ".join(files) + "."


def _example(flow: Flow, request: dict[str, Any]) -> dict[str, Any]:
    message = flow.response
    assert message is not None
    reason = flow.reason or _phrase(flow.status)
    example: dict[str, Any] = {
        "name": f"{flow.status} {reason}".strip(),
        "originalRequest": request,
        "status": reason,
        "code": flow.status,
        "_postman_previewlanguage": language(media_type(message.headers)),
        "header": [{"key": k.decode("latin-1"), "value": v.decode("latin-1")} for k, v in message.headers],
        "cookie": [],
    }
    if flow.duration_ms is not None:
        example["responseTime"] = flow.duration_ms
    text = utf8(decode_message(message.headers, message.body).body)
    if text is not None:
        example["body"] = text
    return example


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
