"""gRPC messages for display: framing split from bodies, protobuf decoded without a schema.

The protobufs are encoded by the protobuf library itself (descriptor.proto's
own messages, which have strings, nested messages, enums, packed repeated
fields and doubles), so the decoder is checked against real encodings.
"""

from __future__ import annotations

import base64
import gzip
import struct

from google.protobuf import descriptor_pb2, struct_pb2

from capture.flow import Flow, Message
from capture.grpcview import decode_protobuf, grpc_section, split_messages
from capture.http.grpc import MAX_ENTRIES, MessageOrder, PrefixCounter


def framed(data: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + struct.pack(">I", len(data)) + data


def sample() -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(name="chat.proto", package="chat")
    message = proto.message_type.add(name="Hello")
    message.field.add(name="text", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    location = proto.source_code_info.location.add()
    location.path.extend([4, 0, 2, 300])  # packed repeated int32
    return proto.SerializeToString()


def by_number(fields: list[dict], number: int) -> list[dict]:
    return [field for field in fields if field["number"] == number]


def test_decodes_strings_nested_messages_and_packed_numbers():
    """Field numbers, wire types and values; nested messages where they parse; packed varints; raw bytes kept."""
    data = sample()
    fields = decode_protobuf(data)
    (name,) = by_number(fields, 1)
    assert name["wire_type"] == "len" and name["string"] == "chat.proto"
    assert base64.b64decode(name["bytes"]) == b"chat.proto"
    (message_type,) = by_number(fields, 4)
    nested = message_type["message"]
    assert by_number(nested, 1)[0]["string"] == "Hello"
    field = by_number(nested, 2)[0]["message"]
    assert by_number(field, 3)[0] == {"number": 3, "wire_type": "varint", "value": 1}
    assert by_number(field, 5)[0]["value"] == descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    (source,) = by_number(fields, 9)
    (location,) = by_number(source["message"], 1)
    (path,) = by_number(location["message"], 1)
    assert path["packed"] == [4, 0, 2, 300]


def test_fixed_width_and_negative_numbers():
    """A double comes as fixed64 with its float reading; a negative int64 shows its signed value."""
    value = struct_pb2.Value(number_value=2.5).SerializeToString()
    (field,) = decode_protobuf(value)
    assert field["wire_type"] == "fixed64" and field["float"] == 2.5
    proto = descriptor_pb2.UninterpretedOption(negative_int_value=-5)
    (field,) = decode_protobuf(proto.SerializeToString())
    assert field["signed"] == -5


def test_not_protobuf_is_none():
    """Bytes that do not parse as a message to the end (bad wire type, cut length) are not one."""
    assert decode_protobuf(b"\x0f\x01") is None  # wire type 7
    assert decode_protobuf(b"\x0a\x05ab") is None  # length past the end
    assert decode_protobuf(b"\x00\x01") is None  # field number 0
    assert decode_protobuf(b"") == []


def test_split_messages_marks_a_cut_last_message():
    """Length-prefixed messages split in order; a body stored short marks the last one cut."""
    body = framed(b"one") + framed(b"", compressed=False) + framed(b"three")
    assert [(m.data, m.cut) for m in split_messages(body)] == [(b"one", False), (b"", False), (b"three", False)]
    (first, second) = split_messages(framed(b"one") + framed(b"three")[:6])
    assert second.cut and second.length == 5 and second.data == b"t"


def grpc_flow(request_body: bytes, response_body: bytes, encoding: bytes | None = None) -> Flow:
    extra = ((b"grpc-encoding", encoding),) if encoding else ()
    return Flow(client="10.0.0.1", client_port=1, scheme="https", host="api", port=443, method="POST",
                path="/chat.Greeter/SayHello", http_version="2.0",
                request=Message(((b"content-type", b"application/grpc"), *extra), request_body, len(request_body)),
                status=200, response=Message(((b"content-type", b"application/grpc+proto"), *extra),
                                             response_body, len(response_body),
                                             trailers=((b"grpc-status", b"0"), (b"grpc-message", b"ok"))))


def test_flow_section_lists_service_method_and_messages_by_direction():
    """The gRPC section names service and method, status, and each message with its direction and fields."""
    section = grpc_section(grpc_flow(framed(sample()), framed(b"\x08\x01") + framed(b"\x08\x02")))
    assert (section["service"], section["method"]) == ("chat.Greeter", "SayHello")
    assert (section["status"], section["status_message"]) == ("0", "ok")
    assert [m["from_client"] for m in section["messages"]] == [True, False, False]
    assert section["messages"][2]["fields"] == [{"number": 1, "wire_type": "varint", "value": 2}]
    assert base64.b64decode(section["messages"][0]["data"]) == sample()


def test_prefixes_are_counted_however_the_bytes_are_cut():
    """Each message is counted once, when its 5-byte prefix is complete, whether it comes whole, split
    byte by byte, or several to a chunk; message bytes that look like prefixes are skipped."""
    body = framed(b"") + framed(b"\x00\x00\x00\x00\x09" * 3) + framed(sample()) + framed(b"\x08\x01")
    assert PrefixCounter().feed(body) == 4
    counter = PrefixCounter()
    assert sum(counter.feed(body[i: i + 1]) for i in range(len(body))) == 4
    counter = PrefixCounter()
    assert [counter.feed(part) for part in (body[:3], body[3:24], body[24:])] == [0, 2, 2]


def test_order_notes_direction_and_time_up_to_a_bound():
    """Entries follow the bytes as fed, one per message, and stop at MAX_ENTRIES."""
    order = MessageOrder()
    order.feed(True, framed(b"a"), 1.0)
    order.feed(False, framed(b"b") + framed(b"c"), 2.0)
    order.feed(True, framed(b"d")[:3], 3.0)
    order.feed(True, framed(b"d")[3:], 4.0)
    assert order.entries == [(True, 1.0), (False, 2.0), (False, 2.0), (True, 4.0)]
    order.feed(False, framed(b"") * (MAX_ENTRIES + 10), 5.0)
    assert len(order.entries) == MAX_ENTRIES


def test_messages_are_listed_in_the_order_they_passed():
    """With the order the proxy noted, a bidirectional call's messages interleave as they passed, each
    with its time; messages the order does not cover (or a body cut short) follow or drop out."""
    flow = grpc_flow(framed(b"\x08\x01") + framed(b"\x08\x02") + framed(b"\x08\x03"),
                     framed(b"\x08\x0b") + framed(b"\x08\x0c"))
    order = ((True, 1700000000.0), (False, 1700000000.5), (True, 1700000001.0), (False, 1700000001.5),
             (False, 1700000002.0))  # the last response message was not stored
    section = grpc_section(flow._replace(grpc_order=order))
    values = [(m["from_client"], m["fields"][0]["value"], m["time"]) for m in section["messages"]]
    assert values == [(True, 1, "2023-11-14T22:13:20.000Z"), (False, 11, "2023-11-14T22:13:20.500Z"),
                      (True, 2, "2023-11-14T22:13:21.000Z"), (False, 12, "2023-11-14T22:13:21.500Z"),
                      (True, 3, None)]


def test_compressed_messages_are_inflated_for_display():
    """A message with the compressed flag is read after gzip, per grpc-encoding; its raw bytes stay as sent."""
    packed = gzip.compress(b"\x08\x07")
    section = grpc_section(grpc_flow(framed(packed, compressed=True), b"", b"gzip"))
    (message,) = section["messages"]
    assert message["compressed"] and message["fields"] == [{"number": 1, "wire_type": "varint", "value": 7}]
    assert base64.b64decode(message["data"]) == packed


def test_other_flows_have_no_grpc_section():
    """A flow whose request is not application/grpc gets no section."""
    flow = grpc_flow(b"", b"")._replace(request=Message(((b"content-type", b"application/json"),)))
    assert grpc_section(flow) is None


def test_trailers_only_answer_has_its_status_in_the_headers():
    """An error answered without messages (trailers-only) gives its status from the response headers."""
    flow = grpc_flow(framed(b"\x08\x01"), b"")
    flow = flow._replace(response=Message(((b"content-type", b"application/grpc"), (b"grpc-status", b"5"),
                                           (b"grpc-message", b"not found"))))
    section = grpc_section(flow)
    assert (section["status"], section["status_message"]) == ("5", "not found")
    assert [m["from_client"] for m in section["messages"]] == [True]
