"""Tests for capture.export.har: HAR 1.2 documents, streamed and whole, valid and faithful."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import jsonschema
import pytest

from capture.export import har
from capture.flow import Flow
from capture.messages import WebSocketMessage
from test_export_samples import GZIPPED, HTTP_SAMPLES, JSON_BODY, PNG, T0, flow, message, samples

SCHEMA = json.loads((Path(__file__).parent / "data" / "har-1.2.json").read_text())


def validate(document: dict) -> None:
    """Validate against the HAR 1.2 schema, checking formats too (serverIPAddress needs them)."""
    validator = jsonschema.Draft6Validator(SCHEMA, format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def entries_by_name() -> dict[str, dict]:
    """HAR entries of the HTTP samples, by sample name."""
    flows = samples()
    return {name: har.entry(flows[name]) for name in HTTP_SAMPLES}


# -- the document ----------------------------------------------------------------


def test_document_of_every_sample_is_valid_har() -> None:
    """The whole sample set exports to a document the HAR 1.2 schema accepts."""
    document = har.document(samples().values(), "0.1.0")
    validate(document)
    log = document["log"]
    assert log["version"] == "1.2"
    assert log["creator"] == {"name": "capture", "version": "0.1.0"}
    assert log.get("pages", []) == []


def test_each_entry_is_valid_on_its_own() -> None:
    """Each sample's entry is valid in a one-entry document, so a failure names the sample."""
    for name, entry in entries_by_name().items():
        document = {"log": {"version": "1.2", "creator": {"name": "capture", "version": "x"}, "entries": [entry]}}
        try:
            validate(document)
        except AssertionError as e:
            raise AssertionError(f"sample {name}: {e}") from None


def test_tunnels_and_failed_connects_are_left_out() -> None:
    """Only HTTP requests become entries, in the order given."""
    document = har.document(samples().values(), "1")
    urls = [e["request"]["url"] for e in document["log"]["entries"]]
    assert urls == [samples()[name].url for name in HTTP_SAMPLES]


def test_empty_session_is_a_valid_document() -> None:
    """No flows still give a valid document with no entries."""
    document = har.document([], "1")
    validate(document)
    assert document["log"]["entries"] == []


def test_stream_concatenates_to_the_document() -> None:
    """stream() yields UTF-8 pieces, one per entry plus head and tail, that parse to document()."""
    flows = list(samples().values())
    pieces = list(har.stream(flows, "0.1.0"))
    assert all(isinstance(piece, bytes) for piece in pieces)
    assert len(pieces) == len(HTTP_SAMPLES) + 2
    assert json.loads(b"".join(pieces).decode("utf-8")) == har.document(flows, "0.1.0")


def test_stream_of_nothing_parses() -> None:
    """An empty stream is still a complete JSON document."""
    assert json.loads(b"".join(har.stream([], "1"))) == har.document([], "1")


def test_stream_is_lazy() -> None:
    """stream() pulls flows one at a time, so a large session is never all in memory."""
    pulled = []

    def flows():
        for i in range(3):
            pulled.append(i)
            yield flow(path=f"/{i}")

    pieces = har.stream(flows(), "1")
    next(pieces)
    assert pulled == []
    next(pieces)
    assert pulled == [0]


# -- requests --------------------------------------------------------------------


def test_request_line_headers_and_query() -> None:
    """Method, URL, version, headers in wire order and case, and the decoded query string."""
    request = entries_by_name()["get_query"]["request"]
    assert request["method"] == "GET"
    assert request["url"] == "https://api.example.com/v1/items?page=2&q=caf%C3%A9+latte&empty=&flag&sort=name%2Cdesc"
    assert request["httpVersion"] == "HTTP/1.1"
    assert [(h["name"], h["value"]) for h in request["headers"]] == [
        ("Host", "api.example.com"),
        ("User-Agent", "ExampleApp/3.1 (iPhone; iOS 17.1)"),
        ("Accept", "application/json"),
        ("Cookie", "sid=abc123; theme=dark"),
        ("X-Dup", "1"),
        ("X-Dup", "2"),
        ("Connection", "keep-alive"),
    ]
    assert request["queryString"] == [
        {"name": "page", "value": "2"},
        {"name": "q", "value": "café latte"},
        {"name": "empty", "value": ""},
        {"name": "flag", "value": ""},
        {"name": "sort", "value": "name,desc"},
    ]
    assert request["cookies"] == [{"name": "sid", "value": "abc123"}, {"name": "theme", "value": "dark"}]
    assert "postData" not in request
    assert request["bodySize"] == 0


def test_request_headers_size_counts_the_head() -> None:
    """headersSize is the re-serialised head: request line, header lines, blank line."""
    f = flow(path="/x", request=message([("Host", "a"), ("B", "cd")]))
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nB: cd\r\n\r\n"
    assert har.entry(f)["request"]["headersSize"] == len(head)


def test_form_post_has_params() -> None:
    """A form body keeps its text and gets decoded params."""
    post = entries_by_name()["form_post"]["request"]["postData"]
    assert post["mimeType"] == "application/x-www-form-urlencoded"
    assert post["text"] == "user=alice&pass=s%26cr%C3%A9t&remember="
    assert post["params"] == [
        {"name": "user", "value": "alice"},
        {"name": "pass", "value": "s&crét"},
        {"name": "remember", "value": ""},
    ]
    assert "comment" not in post


def test_json_post_is_text() -> None:
    """A UTF-8 JSON body is kept as text, bodySize is the true size."""
    request = entries_by_name()["json_post"]["request"]
    assert request["postData"] == {"mimeType": "application/json", "text": JSON_BODY.decode()}
    assert request["bodySize"] == len(JSON_BODY)


def test_binary_request_body_is_base64_with_a_comment() -> None:
    """HAR postData has no encoding field: binary bodies are base64 text marked by a comment."""
    post = entries_by_name()["binary_request"]["request"]["postData"]
    assert post["comment"] == "base64"
    assert base64.b64decode(post["text"]) == bytes(range(256)) * 4
    multipart = entries_by_name()["multipart"]["request"]["postData"]
    assert multipart["comment"] == "base64"  # the PNG part makes the body binary
    assert multipart["mimeType"].startswith("multipart/form-data; boundary=")


def test_truncated_bodies_say_so() -> None:
    """Truncated request and response bodies carry 'truncated: N of M bytes stored'; sizes are true sizes."""
    entry = entries_by_name()["truncated"]
    request, response = entry["request"], entry["response"]
    assert request["postData"]["comment"] == "truncated: 14 of 1000000 bytes stored"
    assert request["postData"]["text"] == "line 1\nline 2\n"
    assert request["bodySize"] == 1_000_000
    assert response["content"]["comment"] == "truncated: 1024 of 5000000 bytes stored"
    assert response["content"]["size"] == 5_000_000
    assert response["bodySize"] == 5_000_000


# -- responses -------------------------------------------------------------------


def test_response_fields_and_cookies() -> None:
    """Status, reason, headers, content and Set-Cookie parsed with their attributes."""
    response = entries_by_name()["get_query"]["response"]
    assert (response["status"], response["statusText"], response["httpVersion"]) == (200, "OK", "HTTP/1.1")
    assert response["content"] == {
        "size": len(JSON_BODY),
        "mimeType": "application/json; charset=utf-8",
        "text": JSON_BODY.decode(),
    }
    assert response["redirectURL"] == ""
    assert response["cookies"] == [
        {"name": "sid", "value": "xyz789", "path": "/", "httpOnly": True, "secure": True, "sameSite": "Lax"},
        {
            "name": "pref",
            "value": "1",
            "domain": "example.com",
            "expires": "2023-11-14T23:13:20.100Z",  # Max-Age from the response time
            "httpOnly": False,
            "secure": False,
        },
    ]


def test_redirect_url_and_expires() -> None:
    """Location becomes redirectURL; an Expires attribute becomes an ISO time."""
    response = entries_by_name()["form_post"]["response"]
    assert response["status"] == 302
    assert response["redirectURL"] == "https://shop.example.com/account"
    assert response["cookies"][0]["expires"] == "2037-10-21T07:28:00.000Z"
    assert response["cookies"][0]["path"] == "/account"


def test_binary_response_is_base64() -> None:
    """A non-UTF-8 response body is base64 with encoding 'base64'."""
    content = entries_by_name()["binary_response"]["response"]["content"]
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"]) == PNG
    assert content["size"] == len(PNG)
    assert content["mimeType"] == "image/png"


def test_gzip_response_is_decoded() -> None:
    """A complete gzip body is shown decoded, with size and compression as HAR defines them."""
    response = entries_by_name()["json_post"]["response"]
    content = response["content"]
    plain = gzip.decompress(GZIPPED)
    assert content["text"] == plain.decode()
    assert "encoding" not in content
    assert content["size"] == len(plain)
    assert content["compression"] == len(plain) - len(GZIPPED)
    assert response["bodySize"] == len(GZIPPED)


def test_corrupt_gzip_is_kept_as_stored() -> None:
    """A body that claims gzip but is not stays as the stored bytes."""
    f = flow(response=message([("Content-Encoding", "gzip")], b"\x1f\x8b not really"))
    content = har.entry(f)["response"]["content"]
    assert base64.b64decode(content["text"]) == b"\x1f\x8b not really"
    assert content["size"] == len(b"\x1f\x8b not really")


def test_head_and_204_have_no_content_text() -> None:
    """HEAD and 204 responses have an empty content without text."""
    entries = entries_by_name()
    for name in ("head", "no_content"):
        content = entries[name]["response"]["content"]
        assert content["size"] == 0
        assert "text" not in content
    assert entries["head"]["request"]["method"] == "HEAD"
    assert entries["no_content"]["response"]["status"] == 204
    assert entries["no_content"]["response"]["content"]["mimeType"] == "x-unknown"


def test_error_flow_without_response() -> None:
    """A flow that failed before a response has status 0, empty content and the error as comment."""
    entry = entries_by_name()["error"]
    response = entry["response"]
    assert response["status"] == 0
    assert response["statusText"] == ""
    assert response["content"]["size"] == 0
    assert response["headers"] == [] and response["cookies"] == []
    assert entry["comment"] == "connect to down.example.com:80 failed: connection refused"
    assert "serverIPAddress" not in entry
    assert entry["time"] == pytest.approx(3000.0)
    assert entry["timings"]["wait"] == pytest.approx(2990.0)


# -- entry fields ----------------------------------------------------------------


def test_timings_add_up() -> None:
    """send, wait, receive come from the flow's phase times and time is their sum."""
    entry = entries_by_name()["get_query"]
    timings = entry["timings"]
    assert timings["send"] == pytest.approx(10.0)
    assert timings["wait"] == pytest.approx(90.0)
    assert timings["receive"] == pytest.approx(25.0)
    assert timings["blocked"] == timings["dns"] == timings["connect"] == timings["ssl"] == -1
    assert entry["time"] == pytest.approx(125.0)
    assert entry["startedDateTime"] == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    "times",
    [
        dict(request_done=None, response_start=None, end=None),
        dict(request_done=None, response_start=None, end=T0 + 1),
        dict(request_done=T0 + 0.5, response_start=None, end=None),
        dict(request_done=T0 + 2, response_start=T0 + 1, end=T0 + 3),  # 100-continue style overlap
        dict(request_done=T0 - 1, response_start=T0 + 1, end=T0 + 0.5),  # clock steps
    ],
)
def test_timings_are_never_negative(times: dict) -> None:
    """Missing or out-of-order phase times give timings >= 0 whose sum is the entry's time."""
    entry = har.entry(flow(**times))
    timings = entry["timings"]
    parts = [timings[k] for k in ("send", "wait", "receive")]
    assert all(part >= 0 for part in parts)
    assert entry["time"] == pytest.approx(sum(parts))
    assert sum(v for v in timings.values() if v >= 0) == pytest.approx(entry["time"])


def test_server_ip_address_only_when_it_is_one() -> None:
    """serverIPAddress is written for IPv4 and IPv6 addresses and left out otherwise."""
    entries = entries_by_name()
    assert entries["get_query"]["serverIPAddress"] == "93.184.216.34"
    assert entries["https_port"]["serverIPAddress"] == "2001:db8::1"
    assert "serverIPAddress" not in har.entry(flow(server_ip="upstream.proxy"))


def test_https_on_a_non_default_port() -> None:
    """The URL keeps a non-default port."""
    assert entries_by_name()["https_port"]["request"]["url"] == "https://secure.example.com:8443/a/b/c?x=1"


def test_non_ascii_header_bytes_survive() -> None:
    """Header bytes outside ASCII are kept losslessly (latin-1) and the JSON is valid UTF-8."""
    f = flow(request=message([("X-Name", "Jos\u00e9")]))
    data = b"".join(har.stream([f], "1"))
    value = json.loads(data.decode("utf-8"))["log"]["entries"][0]["request"]["headers"][0]["value"]
    assert value.encode("latin-1") == b"Jos\xe9"


# -- round trip ------------------------------------------------------------------


def import_request(entry: dict) -> tuple[str, str, tuple[tuple[bytes, bytes], ...], bytes]:
    """What a HAR importer rebuilds of a request: method, URL, headers and body bytes."""
    request = entry["request"]
    headers = tuple((h["name"].encode("latin-1"), h["value"].encode("latin-1")) for h in request["headers"])
    body = b""
    post = request.get("postData")
    if post is not None:
        comment = post.get("comment", "")
        body = base64.b64decode(post["text"]) if "base64" in comment.split("; ") else post["text"].encode("utf-8")
    return request["method"], request["url"], headers, body


def test_round_trip_imports_the_original_requests() -> None:
    """Importing the exported HAR back gives each flow's method, URL, headers and stored body."""
    flows = samples()
    exported = json.loads(b"".join(har.stream(flows.values(), "1")))
    imported = [import_request(entry) for entry in exported["log"]["entries"]]
    originals = [flows[name] for name in HTTP_SAMPLES]
    assert imported == [(f.method, f.url, f.request.headers, f.request.body) for f in originals]


def test_round_trip_of_responses() -> None:
    """Response status, headers and (decoded) bodies come back from the HAR."""
    flows = samples()
    for name in HTTP_SAMPLES:
        original: Flow = flows[name]
        response = har.entry(original)["response"]
        if original.response is None:
            assert response["status"] == 0
            continue
        headers = tuple((h["name"].encode("latin-1"), h["value"].encode("latin-1")) for h in response["headers"])
        assert (response["status"], headers) == (original.status, original.response.headers)
        content = response["content"]
        text = content.get("text", "")
        body = base64.b64decode(text) if content.get("encoding") == "base64" else text.encode("utf-8")
        expected = gzip.decompress(original.response.body) if name == "json_post" else original.response.body
        assert body == expected, name


def socket_flow() -> Flow:
    return flow(kind="websocket", path="/chat", status=101, reason="Switching Protocols",
                request=message([("Host", "api.example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]),
                response=message([("Upgrade", "websocket"), ("Connection", "Upgrade")]))


def test_websocket_entry_as_chrome_writes_it() -> None:
    """A WebSocket is an entry with _resourceType websocket and its messages in _webSocketMessages, valid HAR."""
    messages = [WebSocketMessage(True, "text", "héllo".encode(), 6, False, T0 + 1.25),
                WebSocketMessage(False, "binary", b"\x00\xff", 2, False, T0 + 2.5)]
    document = har.document([flow(), (socket_flow(), messages)], "1.0")
    validate(document)
    plain, socket = document["log"]["entries"]
    assert "_resourceType" not in plain
    assert socket["_resourceType"] == "websocket" and socket["response"]["status"] == 101
    assert socket["_webSocketMessages"] == [
        {"type": "send", "time": T0 + 1.25, "opcode": 1, "data": "héllo"},
        {"type": "receive", "time": T0 + 2.5, "opcode": 2, "data": base64.b64encode(b"\x00\xff").decode()},
    ]
    streamed = json.loads(b"".join(har.stream([flow(), (socket_flow(), messages)], "1.0")))
    assert streamed == document


def test_http2_flows_say_http_2_0() -> None:
    """An HTTP/2 flow's request and response carry httpVersion "HTTP/2.0" and stay valid HAR."""
    sample = samples()["get_query"]._replace(http_version="2.0", stream_id=3)
    entry = har.entry(sample)
    assert entry["request"]["httpVersion"] == entry["response"]["httpVersion"] == "HTTP/2.0"
    validate(har.document([sample], "1"))


def test_compressed_request_and_response_bodies_are_decoded() -> None:
    """A br request body and a zstd response are given decoded, with comments naming the encoding."""
    import brotli
    import zstandard

    document = b'{"q": "compressed"}'
    sent = flow(method="POST", request=message([("Content-Type", "application/json"), ("Content-Encoding", "br")],
                                               brotli.compress(document)),
                response=message([("Content-Type", "application/json"), ("Content-Encoding", "zstd")],
                                 zstandard.ZstdCompressor().compress(document)))
    entry = har.entry(sent)
    assert entry["request"]["postData"]["text"] == document.decode()
    assert entry["request"]["postData"]["comment"] == "decoded from Content-Encoding br"
    content = entry["response"]["content"]
    assert (content["text"], content["size"], content["comment"]) == (
        document.decode(), len(document), "decoded from Content-Encoding zstd")
    validate(har.document([sent], "test"))


def test_omitted_websocket_messages_have_empty_data() -> None:
    """A message whose content was not captured (responses off) is exported with empty data, marked _omitted."""
    messages = [WebSocketMessage(True, "text", b"ask", 3, False, T0 + 1),
                WebSocketMessage(False, "text", b"", 6, True, T0 + 2, True),
                WebSocketMessage(False, "binary", b"", 2, True, T0 + 3, True)]
    document = har.document([(socket_flow(), messages)], "1.0")
    validate(document)
    assert document["log"]["entries"][0]["_webSocketMessages"] == [
        {"type": "send", "time": T0 + 1, "opcode": 1, "data": "ask"},
        {"type": "receive", "time": T0 + 2, "opcode": 1, "data": "", "_omitted": True},
        {"type": "receive", "time": T0 + 3, "opcode": 2, "data": "", "_omitted": True},
    ]
