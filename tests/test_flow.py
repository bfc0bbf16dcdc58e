"""Tests for capture.flow: the flow record, its wire form and its API forms."""

from __future__ import annotations

import base64
import dataclasses
import re

import msgpack
import pytest

from capture.flow import WIRE_VERSION, Flow, Message, iso_time

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


# -- wire form -------------------------------------------------------------------


def test_wire_round_trip_through_msgpack() -> None:
    """to_wire -> msgpack -> from_wire gives back an equal flow, bytes kept as bytes."""
    flow = make_flow(
        request=Message(headers=((b"X-Bin", b"\xff\x00"),), body=b"\x00\x01\xfe", size=3, truncated=True),
    )
    packed = msgpack.packb(flow.to_wire(), use_bin_type=True)
    back = Flow.from_wire(msgpack.unpackb(packed, raw=False))
    assert back == flow
    assert back.request.headers == ((b"X-Bin", b"\xff\x00"),)
    assert back.request.body == b"\x00\x01\xfe"
    assert back.request.truncated is True


def test_wire_round_trip_without_response() -> None:
    """A failed flow (no response, error text, unset times) survives the round trip."""
    flow = make_flow(status=0, reason="", response=None, response_start=None, end=None, error="connect refused")
    wire_form = flow.to_wire()
    assert wire_form["response"] is None
    assert wire_form["v"] == WIRE_VERSION
    back = Flow.from_wire(msgpack.unpackb(msgpack.packb(wire_form, use_bin_type=True), raw=False))
    assert back == flow
    assert back.response is None
    assert back.end is None


def test_wire_round_trip_tunnel() -> None:
    """The kind of a tunnel flow is kept."""
    flow = make_flow(kind="tunnel", method="CONNECT", path="", response=None)
    assert Flow.from_wire(flow.to_wire()).kind == "tunnel"


@pytest.mark.parametrize("version", [2, 0, None])
def test_from_wire_rejects_wrong_version(version: object) -> None:
    """A wire form with another (or no) version is refused with ValueError."""
    data = make_flow().to_wire()
    if version is None:
        del data["v"]
    else:
        data["v"] = version
    with pytest.raises(ValueError, match="version"):
        Flow.from_wire(data)


def test_from_wire_rejects_non_dict() -> None:
    """Something that is not a map is refused with ValueError."""
    with pytest.raises(ValueError):
        Flow.from_wire([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["host", "request", "response", "start", "end", "server_ip", "kind"])
def test_from_wire_rejects_missing_key(key: str) -> None:
    """A wire form missing any field is refused with ValueError (not KeyError)."""
    data = make_flow().to_wire()
    del data[key]
    with pytest.raises(ValueError, match="malformed flow"):
        Flow.from_wire(data)


def test_from_wire_rejects_missing_message_key() -> None:
    """A message without its body is refused with ValueError."""
    data = make_flow().to_wire()
    del data["request"]["body"]
    with pytest.raises(ValueError, match="malformed flow"):
        Flow.from_wire(data)


def test_from_wire_rejects_int_body() -> None:
    """A body that is not bytes (an int) is refused with ValueError."""
    data = make_flow().to_wire()
    data["response"]["body"] = 5
    with pytest.raises(ValueError, match="malformed flow"):
        Flow.from_wire(data)


def test_from_wire_rejects_str_header() -> None:
    """A header name that is text instead of bytes is refused."""
    data = make_flow().to_wire()
    data["request"]["headers"] = [["Host", b"x"]]
    with pytest.raises(ValueError):
        Flow.from_wire(data)


def test_from_wire_rejects_bad_number() -> None:
    """A port that is not a number is refused with ValueError."""
    data = make_flow().to_wire()
    data["port"] = "eighty"
    with pytest.raises(ValueError):
        Flow.from_wire(data)


def test_flow_is_frozen() -> None:
    """Flows are immutable records."""
    with pytest.raises(dataclasses.FrozenInstanceError):
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
