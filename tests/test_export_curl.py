"""Tests for capture.export.curl: the command is safe shell and replays the request byte for byte.

The replay tests run the produced command with ``bash -c`` against
tests/origin.py, whose /echo answers with the method, path, ordered headers,
body size and sha256 it received.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess

import pytest

from capture.export import replay_headers
from capture.export.curl import command
from capture.flow import Flow
from conftest import Origin, child_env
from test_export_samples import flow, message, samples

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def to_origin(origin: Origin, **fields) -> Flow:
    """A captured flow aimed at the test origin."""
    host = f"127.0.0.1:{origin.port}"
    head = fields.pop("headers", [("Host", host)])
    body = fields.pop("body", b"")
    size = fields.pop("size", None)
    return flow(host="127.0.0.1", port=origin.port, path=fields.pop("path", "/echo"),
                request=message(head, body, size), **fields)


def run(cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``bash -c``; one too long to be an argument (128 KiB) is fed as a script on stdin."""
    if len(cmd.encode()) < 100_000:
        result = subprocess.run(["bash", "-c", cmd], capture_output=True, env=child_env(), timeout=60)
    else:
        result = subprocess.run(["bash", "-s"], input=cmd.encode(), capture_output=True, env=child_env(), timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def replay(f: Flow) -> dict:
    """Run the command for ``f`` and return what the origin's /echo saw."""
    return json.loads(run(command(f)).stdout)


def expected_headers(f: Flow) -> list[list[str]]:
    """The captured headers a faithful replay sends, in order (Host and Content-Length are curl's)."""
    return [
        [k.decode("utf-8"), v.decode("utf-8")]
        for k, v in replay_headers(f.request.headers)
        if k.lower() != b"host"
    ]


def seen_headers(echo: dict) -> list[list[str]]:
    # The origin's http.server decodes header bytes as latin-1; undo that to compare text.
    return [
        [k.encode("latin-1").decode("utf-8"), v.encode("latin-1").decode("utf-8")]
        for k, v in echo["headers"]
        if k.lower() not in ("host", "content-length")
    ]


def assert_replayed(f: Flow, echo: dict) -> None:
    """The origin saw the captured method, target, headers and body."""
    assert echo["method"] == f.method
    assert echo["path"] == f.path
    assert seen_headers(echo) == expected_headers(f)
    host = [v for k, v in echo["headers"] if k.lower() == "host"]
    assert host == [f.request.header("host") or f"127.0.0.1:{f.port}"]
    assert echo["size"] == len(f.request.body)
    assert echo["sha256"] == hashlib.sha256(f.request.body).hexdigest()


# -- replays against the origin --------------------------------------------------


def test_get_with_headers_in_order(origin: Origin) -> None:
    """A GET replays its query and headers in captured order and case, duplicates included."""
    f = to_origin(
        origin,
        path="/echo?page=2&q=caf%C3%A9+latte&list[]=1",
        headers=[
            ("Host", f"127.0.0.1:{origin.port}"),
            ("User-Agent", "ExampleApp/3.1 (iPhone; iOS 17.1)"),
            ("accept", "application/json"),
            ("X-Dup", "1"),
            ("Cookie", "sid=abc; theme=dark"),
            ("X-Dup", "2"),
            ("X-Quote", "it's \"quoted\" $HOME `id`"),
            ("Connection", "keep-alive"),
            ("Proxy-Connection", "keep-alive"),
        ],
    )
    assert_replayed(f, replay(f))


def test_no_headers_curl_would_add(origin: Origin) -> None:
    """Without captured User-Agent and Accept, curl sends neither of its own."""
    f = to_origin(origin)
    echo = replay(f)
    assert_replayed(f, echo)
    assert [k for k, _ in echo["headers"]] == ["Host"]


def test_post_json(origin: Origin) -> None:
    """A POST with a JSON body needs no -X and sends the exact bytes."""
    body = '{"name": "café", "quote": "it\'s", "cmd": "$(id) `id`", "nl": "a\\nb"}\n\n'.encode()
    f = to_origin(origin, method="POST", body=body,
                  headers=[("Host", f"127.0.0.1:{origin.port}"), ("Content-Type", "application/json"),
                           ("Content-Length", str(len(body)))])
    assert " -X " not in command(f)
    assert_replayed(f, replay(f))


def test_form_without_content_type(origin: Origin) -> None:
    """A body sent without Content-Type does not get curl's form Content-Type."""
    f = to_origin(origin, method="POST", body=b"a=1&b=2")
    assert_replayed(f, replay(f))


def test_put_binary_body(origin: Origin) -> None:
    """A binary body goes through base64 and stdin, NUL bytes and all."""
    body = bytes(range(256)) * 3 + b"\x00\xff"
    f = to_origin(origin, method="PUT", body=body,
                  headers=[("Host", f"127.0.0.1:{origin.port}"), ("Content-Type", "application/octet-stream")])
    cmd = command(f)
    assert "base64 -d" in cmd and "@-" in cmd
    assert_replayed(f, replay(f))


def test_body_starting_with_at_sign_is_not_a_file(origin: Origin) -> None:
    """A body beginning with '@' is sent as is, not read from a file of that name."""
    f = to_origin(origin, method="PATCH", body=b"@/etc/passwd",
                  headers=[("Host", f"127.0.0.1:{origin.port}"), ("Content-Type", "text/plain")])
    assert_replayed(f, replay(f))


def test_large_text_body(origin: Origin) -> None:
    """A text body too large for one argument goes through stdin."""
    body = ("0123456789abcdef" * 16384).encode()  # 256 KiB
    f = to_origin(origin, method="POST", body=body,
                  headers=[("Host", f"127.0.0.1:{origin.port}"), ("Content-Type", "text/plain")])
    assert_replayed(f, replay(f))


def test_empty_header_value_and_non_ascii(origin: Origin) -> None:
    """An empty header is sent empty (not dropped) and UTF-8 values survive."""
    f = to_origin(origin, headers=[("Host", f"127.0.0.1:{origin.port}"), ("X-Empty", ""),
                                   ("X-Name", "Jos\u00e9".encode().decode("latin-1"))])
    echo = replay(f)
    assert ["X-Empty", ""] in echo["headers"]
    assert_replayed(f, echo)


def test_accept_encoding_gzip_adds_compressed(origin: Origin) -> None:
    """Accept-Encoding with gzip adds --compressed and the captured header is still what is sent."""
    f = to_origin(origin, headers=[("Host", f"127.0.0.1:{origin.port}"), ("Accept-Encoding", "gzip, br")])
    assert "--compressed" in command(f)
    assert_replayed(f, replay(f))


def test_other_methods(origin: Origin) -> None:
    """DELETE, OPTIONS and a GET with a body use -X and replay exactly."""
    for method, body in (("DELETE", b""), ("OPTIONS", b""), ("GET", b'{"q": 1}'), ("PUT", b"")):
        f = to_origin(origin, method=method, body=body)
        assert f"-X {method}" in command(f) or (method == "GET" and "-X GET" in command(f))
        assert_replayed(f, replay(f))


def test_host_header_other_than_the_url(origin: Origin) -> None:
    """A Host header that differs from the URL's authority is kept."""
    f = to_origin(origin, headers=[("Host", "virtual.example")])
    assert "-H 'Host: virtual.example'" in command(f)
    assert_replayed(f, replay(f))


def test_head(origin: Origin) -> None:
    """HEAD uses --head (curl would wait for a body after -X HEAD) and reaches the origin."""
    f = to_origin(origin, method="HEAD", path="/status/200?head=1")
    cmd = command(f)
    assert "--head" in cmd and "-X" not in cmd
    run(cmd)
    assert {"method": "HEAD", "path": "/status/200?head=1"}.items() <= origin.log()[-1].items()


def test_truncated_body_has_a_note_and_sends_what_was_stored(origin: Origin) -> None:
    """A truncated body cannot be replayed exactly: a comment line says so; the stored bytes are sent."""
    f = to_origin(origin, method="POST", body=b"first part", size=5000,
                  headers=[("Host", f"127.0.0.1:{origin.port}"), ("Content-Type", "text/plain")])
    cmd = command(f)
    assert cmd.startswith("# note: request body was truncated")
    assert "10 of 5000 bytes" in cmd.splitlines()[0]
    assert_replayed(f, replay(f))


# -- the command text ------------------------------------------------------------


def test_method_flags() -> None:
    """-X only when curl would pick another method: not for a bodiless GET nor a POST with a body."""
    assert "-X" not in command(flow())
    assert "-X" not in command(flow(method="POST", request=message([], b"x")))
    assert "-X POST" in command(flow(method="POST"))
    assert "-X GET" in command(flow(request=message([], b"x")))
    assert "--http1.0" in command(flow(http_version="1.0"))
    assert "--http2" in command(flow(http_version="2.0")) and "--http2" not in command(flow())


def test_url_and_quoting() -> None:
    """The command parses back (shlex) to curl with the URL; globbing and dot segments are handled."""
    f = flow(scheme="https", port=8443, path="/a/../b?x=[1]&y='2'")
    words = shlex.split(command(f).replace("\\\n", " "))
    assert words[0] == "curl"
    assert "https://api.example.com:8443/a/../b?x=[1]&y='2'" in words
    assert "--globoff" in words and "--path-as-is" in words


def test_tunnels_cannot_be_replayed() -> None:
    """A tunnel or failed CONNECT is not an HTTP request: ValueError."""
    for name in ("tunnel", "tls_failure"):
        with pytest.raises(ValueError):
            command(samples()[name])


def test_every_sample_gives_a_command() -> None:
    """Every HTTP sample gives a command that bash can at least parse."""
    for name, f in samples().items():
        if f.kind == "tunnel" or f.method == "CONNECT":
            continue
        result = subprocess.run(["bash", "-n", "-c", command(f)], capture_output=True, timeout=10)
        assert result.returncode == 0, (name, result.stderr)
