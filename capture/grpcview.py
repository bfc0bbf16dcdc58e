"""gRPC messages for display: length-prefixed messages split from bodies, protobuf read without a schema.

A gRPC body is a run of messages, each a 5-byte prefix (a compressed flag
and a big-endian length) and that many bytes.  Without the ``.proto``
files a message is shown as protobuf's wire format says it: each field's
number, wire type and value; a length-delimited field is shown as a nested
message where its bytes parse as one completely, as text where they are
UTF-8, as packed numbers where they are plausible as such, and is always
kept as raw bytes (base64) too, since no reading of them is certain.
Pure functions: what the flow detail shows, computed from stored bodies.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any, NamedTuple

from capture.flow import Flow, iso_time
from capture.http.grpc import is_grpc

MAX_DEPTH = 8  # nested messages read this deep; deeper ones stay bytes
MAX_FIELDS = 10_000  # fields shown per message
MAX_INFLATED = 4 * 1024 * 1024  # a compressed message is shown only up to this size once inflated

WIRE_TYPES = {0: "varint", 1: "fixed64", 2: "len", 5: "fixed32"}


class GrpcMessage(NamedTuple):
    """One length-prefixed message; ``cut`` when the stored body ends inside it."""

    compressed: bool
    data: bytes
    length: int
    cut: bool


def split_messages(body: bytes) -> list[GrpcMessage]:
    """The messages of a gRPC body, in order; the last one marked cut if the body ends early."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < 5:
            messages.append(GrpcMessage(False, body[offset:], 0, True))
            break
        flag = body[offset]
        (length,) = struct.unpack_from(">I", body, offset + 1)
        data = body[offset + 5: offset + 5 + length]
        messages.append(GrpcMessage(bool(flag & 1), data, length, len(data) < length))
        offset += 5 + length
    return messages


def decode_protobuf(data: bytes, depth: int = 0) -> list[dict[str, Any]] | None:
    """The fields of a protobuf message, or None when the bytes are not one (exactly, to the end)."""
    fields: list[dict[str, Any]] = []
    offset = 0
    while offset < len(data):
        if len(fields) >= MAX_FIELDS:
            return None
        key, offset = _varint(data, offset)
        if key is None:
            return None
        number, wire_type = key >> 3, key & 7
        if number == 0 or wire_type not in WIRE_TYPES:
            return None
        field: dict[str, Any] = {"number": number, "wire_type": WIRE_TYPES[wire_type]}
        if wire_type == 0:
            value, offset = _varint(data, offset)
            if value is None:
                return None
            field["value"] = value
            if value >= 1 << 63:
                field["signed"] = value - (1 << 64)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if offset + size > len(data):
                return None
            raw = data[offset: offset + size]
            offset += size
            field["value"] = int.from_bytes(raw, "little")
            field["float"] = struct.unpack("<d" if size == 8 else "<f", raw)[0]
            if field["float"] != field["float"] or field["float"] in (float("inf"), float("-inf")):
                del field["float"]  # NaN and infinities do not go into JSON
        else:
            length, offset = _varint(data, offset)
            if length is None or offset + length > len(data):
                return None
            raw = data[offset: offset + length]
            offset += length
            field.update(_length_delimited(raw, depth))
        fields.append(field)
    return fields


def _length_delimited(raw: bytes, depth: int) -> dict[str, Any]:
    """What a length-delimited field may be: a nested message, text, packed numbers; always its bytes."""
    shown: dict[str, Any] = {"bytes": base64.b64encode(raw).decode("ascii")}
    nested = decode_protobuf(raw, depth + 1) if raw and depth < MAX_DEPTH else None
    if nested:
        shown["message"] = nested
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        shown["string"] = text
    elif nested is None:
        packed = _packed_varints(raw)
        if packed is not None:
            shown["packed"] = packed
    return shown


def _packed_varints(raw: bytes) -> list[int] | None:
    """Varints end to end, where that reading holds (a plausible packed repeated field)."""
    values = []
    offset = 0
    while offset < len(raw):
        value, offset = _varint(raw, offset)
        if value is None:
            return None
        values.append(value)
    return values or None


def _varint(data: bytes, offset: int) -> tuple[int | None, int]:
    value = shift = 0
    while offset < len(data) and shift < 70:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, offset) if value < 1 << 64 else (None, offset)
        shift += 7
    return None, offset


def grpc_section(flow: Flow) -> dict[str, Any] | None:
    """The flow detail's ``grpc`` part, or None for a flow that is not a gRPC call.

    Messages are listed in the order they passed, each with its time, as the
    proxy noted them (``Flow.grpc_order``); flows stored before it did so,
    and messages past what it notes, list the request's first, then the
    response's: the stored bodies say the order within each direction only.
    """
    if not is_grpc(flow.request.header("content-type")):
        return None
    path = flow.path.split("?", 1)[0]
    service, _, method = path.lstrip("/").rpartition("/")
    requests = _shown(flow.request.body, True, flow.request.header("grpc-encoding"))
    responses: list[dict[str, Any]] = []
    status = message = None
    if flow.response is not None:
        responses = _shown(flow.response.body, False, flow.response.header("grpc-encoding"))
    messages = _interleaved(requests, responses, flow.grpc_order)
    if flow.response is not None:
        # In the trailers; a trailers-only answer (an error before any message) has them in its headers.
        response = flow.response
        status = response.trailer("grpc-status") or response.header("grpc-status")
        message = response.trailer("grpc-message") or response.header("grpc-message")
    return {"service": service, "method": method, "status": status, "status_message": message,
            "messages": messages}


def _interleaved(requests: list[dict[str, Any]], responses: list[dict[str, Any]],
                 order: tuple[tuple[bool, float], ...]) -> list[dict[str, Any]]:
    """Both directions' messages merged as ``order`` says they passed, with times; the rest after.

    A direction's stored body may hold fewer messages than passed (the
    capture limit, responses not captured): order entries past them are skipped.
    """
    merged = []
    sides = {True: iter(requests), False: iter(responses)}
    for from_client, moment in order:
        shown = next(sides[from_client], None)
        if shown is not None:
            shown["time"] = iso_time(moment)
            merged.append(shown)
    merged.extend(sides[True])
    merged.extend(sides[False])
    return merged


def _shown(body: bytes, from_client: bool, encoding: str | None) -> list[dict[str, Any]]:
    shown = []
    for grpc_message in split_messages(body):
        entry: dict[str, Any] = {
            "from_client": from_client,
            "time": None,
            "compressed": grpc_message.compressed,
            "length": grpc_message.length,
            "cut": grpc_message.cut,
            "data": base64.b64encode(grpc_message.data).decode("ascii"),
        }
        data = grpc_message.data
        if grpc_message.compressed:
            data = _inflate(data, encoding)
        if data is not None and not grpc_message.cut:
            fields = decode_protobuf(data)
            if fields is not None:
                entry["fields"] = fields
        shown.append(entry)
    return shown


def _inflate(data: bytes, encoding: str | None) -> bytes | None:
    """A compressed message's bytes (gzip or deflate), bounded; None when that cannot be done."""
    wbits = {"gzip": 31, "deflate": 15}.get((encoding or "").strip().lower())
    if wbits is None:
        return None
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out
