"""Tests for capture.flow: the flow record, its packed form and its API forms."""

from __future__ import annotations

import base64
import re

import msgpack
import pytest

from capture.flow import WIRE_VERSION, Flow, Message, TLSFacts, iso_time, pack_fields

T0 = 1700000000.0  # 2023-11-14T22:13:20Z


def make_flow(**overrides) -> Flow:
    """A completed HTTPS GET with a JSON response, changed by ``overrides``."""
    values = dict(
        client="10.0.0.7",
        client_port=51000,
        scheme="https",
        host="api.example.com",
        port=443,
        method="GET",
        path="/v1/items?page=2",
        request=Message(
            headers=((b"Host", b"api.example.com"), (b"Accept", b"*/*"), (b"X-Dup", b"1"), (b"X-Dup", b"2")),
            body=b"",
            size=0,
        ),
        status=200,
        reason="OK",
        response=Message(
            headers=((b"Content-Type", b"application/json; charset=utf-8"), (b"Content-Length", b"11")),
            body=b'{"a": "\xc3\xa9"}',
            size=11,
        ),
        start=T0,
        request_done=T0 + 0.010,
        response_start=T0 + 0.100,
        end=T0 + 0.1234,
        server_ip="93.184.216.34",
    )
    values.update(overrides)
    return Flow(**values)


# -- packed form -----------------------------------------------------------------


def _v1_map(flow: Flow) -> dict:
    """The version 1 map form that releases before the packed form wrote (to test reading it)."""
    def message(m: Message) -> dict:
        return {"headers": [list(pair) for pair in m.headers], "body": m.body, "size": m.size,
                "truncated": m.truncated}
    return {
        "v": 1, "kind": flow.kind, "client": flow.client, "client_port": flow.client_port,
        "scheme": flow.scheme, "host": flow.host, "port": flow.port, "method": flow.method,
        "path": flow.path, "http_version": flow.http_version, "request": message(flow.request),
        "status": flow.status, "reason": flow.reason,
        "response": None if flow.response is None else message(flow.response),
        "start": flow.start, "request_done": flow.request_done, "response_start": flow.response_start,
        "end": flow.end, "error": flow.error, "server_ip": flow.server_ip,
    }


def _fields(flow: Flow) -> list:
    """The packed form as a mutable list, to spoil one field at a time."""
    return list(msgpack.unpackb(flow.pack(), raw=False))


def test_pack_round_trip() -> None:
    """pack -> unpack gives back an equal flow, bytes kept as bytes."""
    flow = make_flow(
        request=Message(headers=((b"X-Bin", b"\xff\x00"),), body=b"\x00\x01\xfe", size=3, truncated=True),
    )
    back = Flow.unpack(flow.pack())
    assert back == flow
    assert back.request.headers == ((b"X-Bin", b"\xff\x00"),)
    assert back.request.body == b"\x00\x01\xfe"
    assert back.request.truncated is True


def test_packed_form_is_a_versioned_array() -> None:
    """Version first, then the fields in Flow's order, messages as arrays."""
    flow = make_flow()
    fields = _fields(flow)
    assert fields[0] == WIRE_VERSION == 4
    assert len(fields) == 1 + len(Flow._fields)
    assert fields[1 + Flow._fields.index("host")] == flow.host
    assert fields[1 + Flow._fields.index("request")][1] == flow.request.body


def _plain(flow: Flow) -> tuple:
    """The flow's fields as a plain tuple, messages as plain 5-tuples with header lists: how the proxy gathers a flow."""
    def message(m: Message) -> tuple:
        return (list(m.headers), *m[1:4], list(m.trailers))
    def tls(facts: TLSFacts | None) -> tuple | None:
        return None if facts is None else tuple(facts)
    return (*flow[:8], message(flow.request), *flow[9:11], None if flow.response is None else message(flow.response),
            *flow[12:20], tls(flow.client_tls), tls(flow.server_tls), [list(entry) for entry in flow.grpc_order])


@pytest.mark.parametrize("response", [True, False])
def test_plain_fields_pack_and_build_as_the_flow(response: bool) -> None:
    """Plain tuples in field order pack to the Flow's own bytes, and from_fields builds that same Flow."""
    flow = make_flow(request=Message(headers=((b"Host", b"h"), (b"X-A", b"1")), body=b"q", size=1,
                                     trailers=((b"X-Sum", b"1"),)),
                     stream_id=3, client_tls=TLSFacts("h", "h2", "TLSv1.3", "TLS_AES_128_GCM_SHA256"),
                     grpc_order=((True, T0), (False, T0 + 0.5)))
    if not response:
        flow = flow._replace(response=None, status=0, error="refused")
    fields = _plain(flow)
    assert type(fields) is tuple and type(fields[8]) is tuple and type(fields[8][0]) is list
    assert pack_fields(fields) == flow.pack()
    built = Flow.from_fields(fields)
    assert built == flow
    assert isinstance(built.request, Message) and type(built.request.headers) is tuple
    assert built.response is None if not response else isinstance(built.response, Message)
    assert Flow.from_fields(flow) is flow


def test_pack_round_trip_without_response() -> None:
    """A failed flow (no response, error text, unset times) survives the round trip."""
    flow = make_flow(status=0, reason="", response=None, response_start=None, end=None, error="connect refused")
    back = Flow.unpack(flow.pack())
    assert back == flow
    assert back.response is None
    assert back.end is None


def test_pack_round_trip_tunnel() -> None:
    """The kind of a tunnel flow is kept."""
    flow = make_flow(kind="tunnel", method="CONNECT", path="", response=None)
    assert Flow.unpack(flow.pack()).kind == "tunnel"


def test_unpack_reads_version_1_maps() -> None:
    """Records stored or spilled by earlier releases (a map) still read back equal."""
    for flow in (make_flow(), make_flow(response=None, end=None, error="refused")):
        assert Flow.unpack(msgpack.packb(_v1_map(flow), use_bin_type=True)) == flow


def _v2_array(flow: Flow) -> list:
    """The version 2 array that the release before trailers and TLS facts wrote (to test reading it)."""
    def message(m: Message) -> list:
        return [[list(pair) for pair in m.headers + m.trailers], m.body, m.size, m.truncated]
    return [2, *flow[:8], message(flow.request), *flow[9:11],
            None if flow.response is None else message(flow.response), *flow[12:19]]


def test_unpack_reads_version_2_arrays() -> None:
    """Records stored or spilled by the previous release (version 2) read back with the new fields empty."""
    for flow in (make_flow(), make_flow(response=None, end=None, error="refused")):
        assert Flow.unpack(msgpack.packb(_v2_array(flow), use_bin_type=True)) == flow
    old = make_flow(request=Message(headers=((b"A", b"1"),), trailers=((b"T", b"2"),)))
    back = Flow.unpack(msgpack.packb(_v2_array(old), use_bin_type=True))
    assert back.request.headers == ((b"A", b"1"), (b"T", b"2")) and back.request.trailers == ()
    assert (back.stream_id, back.client_tls, back.server_tls) == (0, None, None)


def test_trailers_stream_and_tls_facts_round_trip() -> None:
    """Version 3 keeps trailers apart from headers, the stream id and both sides' TLS facts."""
    flow = make_flow(
        http_version="2.0", stream_id=5,
        response=Message(headers=((b"content-type", b"application/grpc"),), body=b"\0\0\0\0\0", size=5,
                         trailers=((b"grpc-status", b"0"), (b"grpc-message", b""))),
        client_tls=TLSFacts("api.example.com", "h2", "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        server_tls=TLSFacts("api.example.com", "h2", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
    )
    back = Flow.unpack(flow.pack())
    assert back == flow
    assert back.response.trailer("GRPC-Status") == "0" and back.response.header("grpc-status") is None
    detail = back.detail()
    assert detail["response"]["trailers"] == [["grpc-status", "0"], ["grpc-message", ""]]
    assert detail["stream_id"] == 5 and detail["http_version"] == "2.0"
    assert detail["client_tls"] == {"sni": "api.example.com", "alpn": "h2", "version": "TLSv1.3",
                                    "cipher": "TLS_AES_256_GCM_SHA384"}
    assert detail["server_tls"]["version"] == "TLSv1.2"


def test_unpack_reads_version_3_arrays() -> None:
    """Records of the release before the gRPC order (version 3) read back with an empty order."""
    for flow in (make_flow(stream_id=3, client_tls=TLSFacts("h", "h2", "TLSv1.3", "X")),
                 make_flow(response=None, end=None, error="refused")):
        assert Flow.unpack(msgpack.packb([3, *flow[:-1]], use_bin_type=True)) == flow


def test_grpc_order_round_trips() -> None:
    """Which way each gRPC message went and when comes back in order."""
    order = ((True, T0), (False, T0 + 0.25), (True, T0 + 0.5))
    assert Flow.unpack(make_flow(grpc_order=order).pack()).grpc_order == order


@pytest.mark.parametrize("field, value", [("stream_id", "1"), ("client_tls", ["a", "b"]), ("server_tls", [1, 2, 3, 4]),
                                          ("grpc_order", [[1, 2.0]]), ("grpc_order", [[True]]), ("grpc_order", 5)])
def test_unpack_rejects_bad_new_fields(field: str, value: object) -> None:
    """A stream id or TLS facts of the wrong shape are refused with ValueError."""
    fields = _fields(make_flow())
    fields[1 + Flow._fields.index(field)] = value
    with pytest.raises(ValueError, match="malformed"):
        Flow.unpack(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("version", [5, 3, 0, None])
def test_unpack_rejects_wrong_version(version: object) -> None:
    """A record of another (or no) version is refused with ValueError."""
    fields = _fields(make_flow())
    fields[0] = version
    with pytest.raises(ValueError, match="version"):
        Flow.unpack(msgpack.packb(fields, use_bin_type=True))
    old = _v1_map(make_flow())
    old["v"] = version
    with pytest.raises(ValueError, match="version"):
        Flow.unpack(msgpack.packb(old, use_bin_type=True))


@pytest.mark.parametrize("record", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x02", "text", None,
                                    msgpack.packb([2, 1]) + b"extra"])
def test_unpack_rejects_what_is_not_a_record(record: object) -> None:
    """Empty, invalid, short, trailing bytes or not bytes at all: ValueError, never another error."""
    with pytest.raises(ValueError):
        Flow.unpack(record)  # type: ignore[arg-type]


@pytest.mark.parametrize("field, value", [
    ("host", None), ("port", "eighty"), ("port", 1.5), ("status", True), ("start", "now"), ("end", "later"),
    ("request", [[], b"", 0]), ("request", "x"), ("response", 5), ("kind", 1), ("server_ip", b"1.2.3.4"),
])
def test_unpack_rejects_a_bad_field(field: str, value: object) -> None:
    """A field of the wrong type or shape is refused with ValueError."""
    fields = _fields(make_flow())
    fields[1 + Flow._fields.index(field)] = value
    with pytest.raises(ValueError, match="malformed"):
        Flow.unpack(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("spoil", [
    lambda m: m.__setitem__(1, 5),                       # body an int
    lambda m: m.__setitem__(0, [["Host", b"x"]]),        # header name text, not bytes
    lambda m: m.__setitem__(0, [[b"Host"]]),             # header without a value
    lambda m: m.__setitem__(3, 1),                       # truncated not a bool
    lambda m: m.__setitem__(4, [[b"T"]]),                # trailer without a value
])
def test_unpack_rejects_a_bad_message(spoil) -> None:
    """A message with a bad body, header or flag is refused with ValueError."""
    fields = _fields(make_flow())
    index = 1 + Flow._fields.index("response")
    message = list(fields[index])
    spoil(message)
    fields[index] = message
    with pytest.raises(ValueError, match="malformed"):
        Flow.unpack(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("key", ["host", "request", "response", "start", "end", "server_ip", "kind"])
def test_unpack_rejects_a_version_1_map_missing_a_key(key: str) -> None:
    """An old map missing any field is refused with ValueError (not KeyError)."""
    data = _v1_map(make_flow())
    del data[key]
    with pytest.raises(ValueError, match="malformed flow"):
        Flow.unpack(msgpack.packb(data, use_bin_type=True))


def test_unpack_accepts_whole_number_times() -> None:
    """A time packed as an integer reads back as a float."""
    fields = _fields(make_flow())
    fields[1 + Flow._fields.index("start")] = 1700000000
    assert Flow.unpack(msgpack.packb(fields, use_bin_type=True)).start == 1700000000.0


def test_flow_is_immutable() -> None:
    """Flows are immutable records."""
    with pytest.raises(AttributeError):
        make_flow().host = "other"  # type: ignore[misc]


# -- summary ---------------------------------------------------------------------


def test_summary_fields() -> None:
    """summary() gives the listing form with every field computed."""
    assert make_flow().summary() == {
        "time": "2023-11-14T22:13:20.000Z",
        "client": "10.0.0.7",
        "method": "GET",
        "scheme": "https",
        "host": "api.example.com",
        "port": 443,
        "path": "/v1/items?page=2",
        "url": "https://api.example.com/v1/items?page=2",
        "status": 200,
        "request_size": 0,
        "response_size": 11,
        "content_type": "application/json",
        "duration_ms": 123.4,
        "error": None,
    }


@pytest.mark.parametrize(
    ("scheme", "host", "port", "url"),
    [
        ("http", "example.com", 80, "http://example.com/p"),
        ("http", "example.com", 8080, "http://example.com:8080/p"),
        ("https", "example.com", 443, "https://example.com/p"),
        ("https", "example.com", 80, "https://example.com:80/p"),
        ("http", "::1", 80, "http://[::1]/p"),
        ("https", "2001:db8::1", 8443, "https://[2001:db8::1]:8443/p"),
    ],
)
def test_url(scheme: str, host: str, port: int, url: str) -> None:
    """The URL leaves out the scheme's default port and brackets IPv6 hosts."""
    assert make_flow(scheme=scheme, host=host, port=port, path="/p").url == url


def test_tunnel_url_is_authority() -> None:
    """A tunnel flow's URL is its authority only."""
    assert make_flow(kind="tunnel", host="example.com", port=8443).url == "example.com:8443"
    assert make_flow(kind="tunnel", host="example.com", port=443).url == "example.com"


def test_content_type_without_parameters() -> None:
    """content_type drops parameters and spaces, and is empty without a response or header."""
    flow = make_flow(response=Message(headers=((b"content-type", b" text/html ; charset=latin-1"),)))
    assert flow.content_type == "text/html"
    assert make_flow(response=None).content_type == ""
    assert make_flow(response=Message(headers=((b"X-Other", b"1"),))).content_type == ""


def test_status_none_when_zero_and_error_shown() -> None:
    """A flow without a response lists status None, response size 0 and its error."""
    summary = make_flow(status=0, response=None, end=None, error="timeout").summary()
    assert summary["status"] is None
    assert summary["response_size"] == 0
    assert summary["duration_ms"] is None
    assert summary["error"] == "timeout"


def test_duration_ms_rounded() -> None:
    """duration_ms is end minus start in milliseconds, rounded to 3 places."""
    assert make_flow(start=100.0, end=100.0123456).duration_ms == 12.346
    assert make_flow(start=100.0, end=None).duration_ms is None


def test_message_header_case_insensitive_first_value() -> None:
    """Message.header finds the first value, ignoring case, decoded as latin-1."""
    message = Message(headers=((b"X-Dup", b"1"), (b"x-dup", b"2"), (b"X-L1", b"caf\xe9")))
    assert message.header("x-DUP") == "1"
    assert message.header("X-L1") == "caf\u00e9"
    assert message.header("missing") is None


# -- detail ----------------------------------------------------------------------


def test_detail_utf8_body_as_text_and_headers_as_pairs() -> None:
    """detail() shows UTF-8 bodies as text and headers as ordered [name, value] pairs."""
    detail = make_flow().detail()
    response = detail["response"]
    assert response["body"] == '{"a": "\u00e9"}'
    assert response["body_encoding"] == "utf-8"
    assert response["status"] == 200
    assert response["reason"] == "OK"
    assert response["headers"] == [
        ["Content-Type", "application/json; charset=utf-8"],
        ["Content-Length", "11"],
    ]
    assert detail["request"]["headers"] == [
        ["Host", "api.example.com"],
        ["Accept", "*/*"],
        ["X-Dup", "1"],
        ["X-Dup", "2"],
    ]
    assert detail["request"]["body"] == ""
    assert detail["request"]["body_encoding"] == "utf-8"


def test_detail_binary_body_as_base64() -> None:
    """A body that is not UTF-8 is base64 with body_encoding "base64"; sizes are reported."""
    body = b"\x89PNG\r\n\x1a\n\xff"
    flow = make_flow(response=Message(headers=(), body=body, size=5000, truncated=True))
    response = flow.detail()["response"]
    assert response["body_encoding"] == "base64"
    assert response["body"] == base64.b64encode(body).decode("ascii")
    assert base64.b64decode(response["body"]) == body
    assert response["size"] == 5000
    assert response["stored_size"] == len(body)
    assert response["truncated"] is True


def test_detail_other_fields() -> None:
    """detail() has the summary plus kind, client port, server ip, request line and timings."""
    detail = make_flow().detail()
    assert detail["url"] == "https://api.example.com/v1/items?page=2"
    assert detail["kind"] == "http"
    assert detail["client_port"] == 51000
    assert detail["server_ip"] == "93.184.216.34"
    assert detail["request"]["method"] == "GET"
    assert detail["request"]["http_version"] == "1.1"
    assert detail["timings"] == {
        "start": "2023-11-14T22:13:20.000Z",
        "request_done": "2023-11-14T22:13:20.010Z",
        "response_start": "2023-11-14T22:13:20.100Z",
        "end": "2023-11-14T22:13:20.123Z",
    }


def test_detail_without_response() -> None:
    """detail() of a failed flow has response None, unset timings None and server_ip None."""
    detail = make_flow(response=None, status=0, response_start=None, end=None, server_ip="").detail()
    assert detail["response"] is None
    assert detail["server_ip"] is None
    assert detail["timings"]["end"] is None
    assert detail["timings"]["response_start"] is None


# -- times -----------------------------------------------------------------------


def test_iso_time_format() -> None:
    """iso_time is UTC ISO 8601 with milliseconds and a trailing Z."""
    assert iso_time(T0) == "2023-11-14T22:13:20.000Z"
    assert iso_time(T0 + 0.5) == "2023-11-14T22:13:20.500Z"
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_time(1234567890.123456))
