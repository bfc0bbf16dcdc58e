"""A varied set of captured flows that the exporter tests share, and a check of the set itself.

The samples cover what the exporters must get right: a GET with a query, form,
JSON and multipart POSTs, binary and gzip responses, truncated bodies, a flow
that failed without a response, HTTPS on a non-default port, HEAD, a 204, and
the records that are not HTTP requests at all (a tunnel and a failed CONNECT).
"""

from __future__ import annotations

import gzip

from capture.flow import Flow, Message

T0 = 1700000000.0  # 2023-11-14T22:13:20Z
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
BOUNDARY = "----capture7MA4YWxkTrZu0gW"
MULTIPART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="title"\r\n\r\n'
    "Holiday \u00e9t\u00e9\r\n"
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="photo"; filename="beach.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode() + PNG + f"\r\n--{BOUNDARY}--\r\n".encode()
JSON_BODY = b'{"name": "caf\xc3\xa9", "tags": ["a", "b"], "n": 1}'
GZIPPED = gzip.compress(b'{"items": [' + b", ".join(b"%d" % (i % 10) for i in range(200)) + b'], "note": "\xc3\xa9"}', mtime=0)


def message(headers: list[tuple[str, str]], body: bytes = b"", size: int | None = None) -> Message:
    """A message from text headers; ``size`` defaults to the body length (so not truncated)."""
    size = len(body) if size is None else size
    return Message(
        headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
        body=body,
        size=size,
        truncated=size > len(body),
    )


def flow(**fields) -> Flow:
    """A completed flow with plausible defaults, changed by ``fields``."""
    values = dict(
        client="10.0.0.7",
        client_port=51000,
        scheme="http",
        host="api.example.com",
        port=80,
        method="GET",
        path="/",
        request=message([("Host", "api.example.com")]),
        status=200,
        reason="OK",
        response=message([("Content-Length", "0")]),
        start=T0,
        request_done=T0 + 0.010,
        response_start=T0 + 0.100,
        end=T0 + 0.125,
        server_ip="93.184.216.34",
    )
    values.update(fields)
    return Flow(**values)


def samples() -> dict[str, Flow]:
    """The shared flows, by name, in capture order."""
    return {
        "get_query": flow(
            scheme="https",
            port=443,
            path="/v1/items?page=2&q=caf%C3%A9+latte&empty=&flag&sort=name%2Cdesc",
            request=message(
                [
                    ("Host", "api.example.com"),
                    ("User-Agent", "ExampleApp/3.1 (iPhone; iOS 17.1)"),
                    ("Accept", "application/json"),
                    ("Cookie", "sid=abc123; theme=dark"),
                    ("X-Dup", "1"),
                    ("X-Dup", "2"),
                    ("Connection", "keep-alive"),
                ]
            ),
            response=message(
                [
                    ("Content-Type", "application/json; charset=utf-8"),
                    ("Content-Length", str(len(JSON_BODY))),
                    ("Set-Cookie", "sid=xyz789; Path=/; Secure; HttpOnly; SameSite=Lax"),
                    ("Set-Cookie", "pref=1; Max-Age=3600; Domain=example.com"),
                ],
                JSON_BODY,
            ),
        ),
        "form_post": flow(
            host="shop.example.com",
            method="POST",
            path="/account/login",
            request=message(
                [
                    ("Host", "shop.example.com"),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", "39"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Proxy-Authorization", "Basic c2VjcmV0"),
                ],
                b"user=alice&pass=s%26cr%C3%A9t&remember=",
            ),
            status=302,
            reason="Found",
            response=message(
                [
                    ("Location", "https://shop.example.com/account"),
                    ("Set-Cookie", "session=s1; Path=/account; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
                    ("Content-Length", "0"),
                ]
            ),
        ),
        "json_post": flow(
            method="POST",
            path="/v1/items",
            request=message(
                [
                    ("Host", "api.example.com"),
                    ("Content-Type", "application/json"),
                    ("Transfer-Encoding", "chunked"),
                    ("Accept-Encoding", "gzip, deflate"),
                ],
                JSON_BODY,
            ),
            status=201,
            reason="Created",
            response=message(
                [
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", "gzip"),
                    ("Content-Length", str(len(GZIPPED))),
                ],
                GZIPPED,
            ),
        ),
        "multipart": flow(
            host="upload.example.com",
            method="POST",
            path="/photos/new/upload",
            request=message(
                [
                    ("Host", "upload.example.com"),
                    ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
                    ("Content-Length", str(len(MULTIPART))),
                ],
                MULTIPART,
            ),
            response=message([("Content-Type", "text/plain"), ("Content-Length", "2")], b"ok"),
        ),
        "binary_response": flow(
            host="cdn.example.com",
            path="/img/logo.png",
            request=message([("Host", "cdn.example.com"), ("Accept", "image/*")]),
            response=message([("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))], PNG),
        ),
        "binary_request": flow(
            method="PUT",
            path="/v1/blobs/7",
            request=message(
                [("Host", "api.example.com"), ("Content-Type", "application/octet-stream")], bytes(range(256)) * 4
            ),
            status=204,
            reason="No Content",
            response=message([]),
        ),
        "truncated": flow(
            method="POST",
            path="/v1/logs",
            request=message(
                [("Host", "api.example.com"), ("Content-Type", "text/plain")], b"line 1\nline 2\n", size=1_000_000
            ),
            response=message(
                [("Content-Type", "text/plain"), ("Content-Length", "5000000")], b"x" * 1024, size=5_000_000
            ),
        ),
        "error": flow(
            host="down.example.com",
            path="/health",
            request=message([("Host", "down.example.com")]),
            status=0,
            reason="",
            response=None,
            response_start=None,
            end=T0 + 3.0,
            error="connect to down.example.com:80 failed: connection refused",
            server_ip="",
        ),
        "https_port": flow(
            scheme="https",
            host="secure.example.com",
            port=8443,
            path="/a/b/c?x=1",
            request=message([("Host", "secure.example.com:8443"), ("Accept", "*/*")]),
            response=message([("Content-Type", "application/xml"), ("Content-Length", "8")], b"<a>1</a>"),
            server_ip="2001:db8::1",
        ),
        "head": flow(
            method="HEAD",
            path="/files/report.pdf",
            request=message([("Host", "api.example.com")]),
            response=message([("Content-Type", "application/pdf"), ("Content-Length", "12345")]),
        ),
        "no_content": flow(
            method="DELETE",
            path="/v1/items/42",
            request=message([("Host", "api.example.com"), ("Authorization", "Bearer t0k3n")]),
            status=204,
            reason="No Content",
            response=message([]),
        ),
        "tunnel": flow(
            kind="tunnel",
            host="pinned.example.com",
            port=443,
            method="CONNECT",
            path="",
            request=message([]),
            status=0,
            reason="",
            response=None,
        ),
        "tls_failure": flow(
            scheme="https",
            host="strict.example.com",
            port=443,
            method="CONNECT",
            path="",
            request=message([]),
            status=0,
            reason="",
            response=None,
            error="client rejected our certificate",
        ),
    }


HTTP_SAMPLES = [name for name in samples() if name not in ("tunnel", "tls_failure")]


def test_samples_survive_the_wire_form() -> None:
    """Every sample is what the store would hand back: to_wire/from_wire gives an equal flow."""
    for sample in samples().values():
        assert Flow.unpack(sample.pack()) == sample


def test_samples_mark_truncation_consistently() -> None:
    """Only the truncated sample has bodies shorter than their true size."""
    for name, sample in samples().items():
        messages = [sample.request] + ([sample.response] if sample.response else [])
        for m in messages:
            assert m.truncated == (m.size > len(m.body)) == (name == "truncated" and bool(m.body))
