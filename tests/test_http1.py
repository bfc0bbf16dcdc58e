"""Tests for capture.http1: request targets, hop-by-hop headers, framing and serialising."""

from __future__ import annotations

import pytest

from capture.http.http1 import (
    BadResponse,
    BadRequest,
    Target,
    chunk,
    connection_tokens,
    end_to_end,
    error_response,
    last_chunk,
    parse_target,
    request_framing,
    request_head,
    response_framing,
    response_head,
    with_host,
)

# -- parse_target ----------------------------------------------------------------


def test_parse_target_with_port() -> None:
    """An absolute URL with a port gives that port and the origin-form path."""
    assert parse_target(b"http://example.com:8080/a/b") == Target("http", "example.com", 8080, "/a/b")


def test_parse_target_default_ports() -> None:
    """Without a port, http means 80 and https 443."""
    assert parse_target(b"http://example.com/x") == Target("http", "example.com", 80, "/x")
    assert parse_target(b"https://example.com/x") == Target("https", "example.com", 443, "/x")


def test_parse_target_keeps_query_and_defaults_path() -> None:
    """The query is kept on the path; an empty path becomes "/"."""
    assert parse_target(b"http://example.com/search?q=a&b=c").path == "/search?q=a&b=c"
    assert parse_target(b"http://example.com?q=1").path == "/?q=1"
    assert parse_target(b"http://example.com").path == "/"


def test_parse_target_lowercases_scheme_and_host() -> None:
    """Scheme and host are case-insensitive and come back lower-cased."""
    assert parse_target(b"HTTP://Example.COM/Path") == Target("http", "example.com", 80, "/Path")


def test_parse_target_ipv6_literal() -> None:
    """An IPv6 literal loses its brackets in host and gets them back in the authority."""
    target = parse_target(b"http://[2001:db8::1]:8080/x")
    assert target == Target("http", "2001:db8::1", 8080, "/x")
    assert target.authority == b"[2001:db8::1]:8080"
    assert parse_target(b"http://[::1]/").authority == b"[::1]"


def test_target_authority_omits_default_port() -> None:
    """The authority has the port only when it is not the scheme's default."""
    assert Target("http", "example.com", 80, "/").authority == b"example.com"
    assert Target("https", "example.com", 443, "/").authority == b"example.com"
    assert Target("https", "example.com", 80, "/").authority == b"example.com:80"


@pytest.mark.parametrize("raw", [b"http://user@example.com/", b"http://user:pw@example.com:8080/"])
def test_parse_target_refuses_userinfo(raw: bytes) -> None:
    """Userinfo in the target is refused with 400."""
    with pytest.raises(BadRequest, match="userinfo") as info:
        parse_target(raw)
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [b"ftp://example.com/file", b"ws://example.com/", b"file:///etc/passwd"])
def test_parse_target_refuses_other_schemes(raw: bytes) -> None:
    """Only http and https URLs are proxied."""
    with pytest.raises(BadRequest, match="absolute"):
        parse_target(raw)


@pytest.mark.parametrize("raw", [b"/index.html", b"*", b"example.com:443"])
def test_parse_target_refuses_non_absolute_forms(raw: bytes) -> None:
    """Origin-form, asterisk-form and authority-form targets are refused."""
    with pytest.raises(BadRequest):
        parse_target(raw)


@pytest.mark.parametrize("raw", [b"http://example.com:99999/", b"http://example.com:abc/", b"http://ex\xe4mple.com/"])
def test_parse_target_refuses_malformed(raw: bytes) -> None:
    """A bad port or a non-ASCII target is a BadRequest, not another exception."""
    with pytest.raises(BadRequest):
        parse_target(raw)


def test_parse_target_refuses_port_zero() -> None:
    """Port 0 is not a port one can connect to: refused, not silently replaced by 80."""
    with pytest.raises(BadRequest):
        parse_target(b"http://example.com:0/")


# -- hop-by-hop headers -------------------------------------------------------------


def test_connection_tokens_lowercased_across_headers() -> None:
    """Tokens of every Connection header are collected lower-cased and stripped."""
    headers = [(b"Connection", b"Keep-Alive, X-Foo"), (b"connection", b"close")]
    assert connection_tokens(headers) == {b"keep-alive", b"x-foo", b"close"}


def test_end_to_end_removes_hop_by_hop_and_keeps_order_and_case() -> None:
    """Hop-by-hop headers and those named in Connection go; the rest keep order and case."""
    headers = [
        (b"Host", b"example.com"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"accept", b"*/*"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"Proxy-Authenticate", b"Basic"),
        (b"X-Custom-CASE", b"Value"),
        (b"x-secret", b"2"),
        (b"Cookie", b"a=1"),
    ]
    assert end_to_end(headers) == [
        (b"Host", b"example.com"),
        (b"accept", b"*/*"),
        (b"X-Custom-CASE", b"Value"),
        (b"Cookie", b"a=1"),
    ]


def test_end_to_end_keep() -> None:
    """Headers named in ``keep`` survive even though they are hop-by-hop."""
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"close"), (b"X-A", b"1")]
    assert end_to_end(headers, frozenset({b"transfer-encoding"})) == [
        (b"Transfer-Encoding", b"chunked"),
        (b"X-A", b"1"),
    ]


def test_end_to_end_does_not_modify_input() -> None:
    """end_to_end returns a new list and leaves its argument alone."""
    headers = [(b"Connection", b"close"), (b"X-A", b"1")]
    end_to_end(headers)
    assert headers == [(b"Connection", b"close"), (b"X-A", b"1")]


# -- framing ---------------------------------------------------------------------


def test_request_framing_length() -> None:
    """A request with Content-Length is framed by length."""
    assert request_framing([(b"Content-Length", b"5")]) == "length"


def test_request_framing_duplicate_identical_lengths_allowed() -> None:
    """Several identical Content-Length headers are one length."""
    assert request_framing([(b"Content-Length", b"5"), (b"content-length", b" 5")]) == "length"


def test_request_framing_chunked() -> None:
    """Transfer-Encoding: chunked (any case) is chunked framing."""
    assert request_framing([(b"Transfer-Encoding", b"chunked")]) == "chunked"
    assert request_framing([(b"transfer-encoding", b" Chunked ")]) == "chunked"


def test_request_framing_none() -> None:
    """A request with neither header has no body."""
    assert request_framing([(b"Host", b"x")]) == "none"
    assert request_framing([]) == "none"


def test_request_framing_refuses_cl_and_te() -> None:
    """Content-Length together with Transfer-Encoding is refused (smuggling)."""
    with pytest.raises(BadRequest, match="both") as info:
        request_framing([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")])
    assert info.value.status == 400


def test_request_framing_refuses_differing_lengths() -> None:
    """Two different Content-Length values are refused."""
    with pytest.raises(BadRequest, match="conflicting"):
        request_framing([(b"Content-Length", b"5"), (b"Content-Length", b"6")])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Transfer-Encoding", b"gzip")],
        [(b"Transfer-Encoding", b"gzip, chunked")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"identity")],
    ],
)
def test_request_framing_refuses_other_transfer_encodings(headers: list) -> None:
    """Any Transfer-Encoding other than exactly "chunked" is refused."""
    with pytest.raises(BadRequest, match="Transfer-Encoding"):
        request_framing(headers)


@pytest.mark.parametrize("status", [100, 101, 103, 204, 304])
def test_response_framing_bodiless_statuses(status: int) -> None:
    """1xx, 204 and 304 responses have no body whatever their headers say."""
    assert response_framing([(b"Content-Length", b"10")], status, False) == "none"


def test_response_framing_head() -> None:
    """A response to HEAD has no body."""
    assert response_framing([(b"Transfer-Encoding", b"chunked")], 200, True) == "none"


def test_response_framing_chunked() -> None:
    """A response whose last transfer coding is chunked is chunked, even with Content-Length."""
    assert response_framing([(b"Transfer-Encoding", b"chunked")], 200, False) == "chunked"
    assert response_framing([(b"transfer-encoding", b"gzip, Chunked")], 200, False) == "chunked"
    assert response_framing([(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], 200, False) == "chunked"


def test_response_framing_chunked_across_headers() -> None:
    """Transfer-Encoding split over two headers is one list (RFC 9110 5.3): chunked last means chunked."""
    headers = [(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")]
    assert response_framing(headers, 200, False) == "chunked"


def test_response_framing_refuses_codings_it_cannot_relay() -> None:
    """A coding list not ending in one chunked (or chunked twice) is refused: the client would misread it."""
    for codings in ([b"chunked, gzip"], [b"gzip"], [b"xchunked"], [b"chunked", b"chunked"]):
        with pytest.raises(BadResponse):
            response_framing([(b"Transfer-Encoding", c) for c in codings], 200, False)


def test_response_framing_length_and_close() -> None:
    """Content-Length gives length framing; nothing at all means read until close."""
    assert response_framing([(b"content-length", b"42")], 200, False) == "length"
    assert response_framing([(b"Content-Type", b"text/plain")], 200, False) == "close"


# -- Host ------------------------------------------------------------------------


def test_with_host_replaces_first_in_place_and_drops_duplicates() -> None:
    """The first Host keeps its position and name case, gets the authority; other Hosts go."""
    headers = [(b"Accept", b"*/*"), (b"host", b"evil.example"), (b"X-A", b"1"), (b"HOST", b"other")]
    assert with_host(headers, b"example.com:8080") == [
        (b"Accept", b"*/*"),
        (b"host", b"example.com:8080"),
        (b"X-A", b"1"),
    ]


def test_with_host_adds_when_missing() -> None:
    """Without a Host header one is added first."""
    assert with_host([(b"Accept", b"*/*")], b"example.com") == [(b"Host", b"example.com"), (b"Accept", b"*/*")]


# -- serialising -----------------------------------------------------------------


def test_request_head_bytes() -> None:
    """request_head writes the request line, headers in order and case, and a blank line."""
    head = request_head(b"POST", b"/a?b=c", [(b"Host", b"example.com"), (b"x-lower", b"v"), (b"X-Lower", b"w")])
    assert head == b"POST /a?b=c HTTP/1.1\r\nHost: example.com\r\nx-lower: v\r\nX-Lower: w\r\n\r\n"


def test_request_head_without_headers() -> None:
    """A head with no headers is the request line and the blank line."""
    assert request_head(b"GET", b"/", []) == b"GET / HTTP/1.1\r\n\r\n"


def test_response_head_bytes() -> None:
    """response_head writes the status line and the headers as given."""
    head = response_head(b"1.1", 404, b"Not Found", [(b"Content-Length", b"0"), (b"X-A", b"b")])
    assert head == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-A: b\r\n\r\n"
    assert response_head(b"1.0", 200, b"OK", []) == b"HTTP/1.0 200 OK\r\n\r\n"


def test_error_response_bytes() -> None:
    """error_response is a complete plain-text response, closing by default."""
    assert error_response(502, "upstream refused") == (
        b"HTTP/1.1 502 Bad Gateway\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"upstream refused\n"
    )


def test_error_response_keep_alive_and_unknown_status() -> None:
    """close=False leaves out Connection; an unknown status gets the reason "Error"; length counts UTF-8."""
    data = error_response(599, "caf\u00e9", close=False)
    assert data == (
        b"HTTP/1.1 599 Error\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 6\r\n"
        b"\r\n"
        b"caf\xc3\xa9\n"
    )


def test_chunk_pieces() -> None:
    """chunk() gives the hex size line, the data itself and the CRLF."""
    data = b"x" * 26
    pieces = chunk(data)
    assert pieces == [b"1a\r\n", data, b"\r\n"]
    assert pieces[1] is data


def test_last_chunk() -> None:
    """last_chunk() ends a chunked body, with trailers when there are any."""
    assert last_chunk([]) == b"0\r\n\r\n"
    assert last_chunk([(b"X-Checksum", b"abc"), (b"X-B", b"1")]) == b"0\r\nX-Checksum: abc\r\nX-B: 1\r\n\r\n"
