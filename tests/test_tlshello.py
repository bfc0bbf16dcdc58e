"""Tests for capture.tlshello: classifying tunnel bytes and parsing real ClientHellos."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.tls.hello import MAX_HELLO, NEED_MORE, ClientHello, classify, parse_client_hello


def real_client_hello(server_hostname: str | None = "example.test", alpn: list[str] | None = None) -> bytes:
    """The first flight Python's ssl module sends: a real ClientHello."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    data = outgoing.read()
    assert data
    return data


def record(fragment: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return struct.pack("!B2sH", content_type, version, len(fragment)) + fragment


def split_records(hello: bytes, *cuts: int) -> bytes:
    """Re-frame the handshake message of a one-record ClientHello into several records."""
    (length,) = struct.unpack("!H", hello[3:5])
    message = hello[5 : 5 + length]
    assert len(hello) == 5 + length
    bounds = [0, *cuts, len(message)]
    return b"".join(record(message[a:b], version=hello[1:3]) for a, b in zip(bounds, bounds[1:]))


def hello_message(body: bytes) -> bytes:
    """A one-record ClientHello with the given handshake body."""
    return record(b"\x01" + len(body).to_bytes(3, "big") + body)


def hello_body(extensions: bytes | None = None, *, ciphers: bytes = b"\x13\x01", session_id: bytes = b"") -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(ciphers)) + ciphers + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


# -- classify --------------------------------------------------------------------


def test_classify_tls() -> None:
    """A real ClientHello, and anything starting 0x16 0x03, is TLS."""
    assert classify(real_client_hello()) == "tls"
    assert classify(b"\x16\x03") == "tls"


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", b"HEAD /", b"POST /x", b"PUT ", b"DELETE /", b"OPTIONS *", b"PATCH /",
     b"TRACE /", b"CONNECT a:443"],
)  # fmt: skip
def test_classify_http(data: bytes) -> None:
    """Every listed method followed by a space is HTTP."""
    assert classify(data) == "http"


@pytest.mark.parametrize(
    "data", [b"SSH-2.0-OpenSSH\r\n", b"\x16\x02", b"\x00", b"get / HTTP/1.1", b"GETX", b"GET/", b"\x80\x2e\x01"]
)
def test_classify_other(data: bytes) -> None:
    """Bytes that are neither a TLS record nor a known method and space are "other"."""
    assert classify(data) == "other"


@pytest.mark.parametrize("data", [b"", b"\x16", b"G", b"GE", b"GET", b"OPT", b"OPTIONS", b"C", b"P", b"PA", b"D"])
def test_classify_prefixes_need_more(data: bytes) -> None:
    """Too few bytes to tell (empty, one TLS byte, a prefix of "METHOD ") give NEED_MORE."""
    assert classify(data) is NEED_MORE
    assert NEED_MORE is None


# -- parse_client_hello on real hellos ------------------------------------------


def test_parse_real_hello_with_sni() -> None:
    """A real ClientHello gives its SNI (lowercased), TLS 1.3/1.2 versions and no ALPN."""
    hello = parse_client_hello(real_client_hello("Example.TEST"))
    assert hello == ClientHello(sni="example.test", alpn=(), versions=hello.versions)
    assert 0x0304 in hello.versions and 0x0303 in hello.versions


def test_parse_real_hello_without_sni() -> None:
    """A real ClientHello sent without server_hostname has no SNI."""
    hello = parse_client_hello(real_client_hello(None))
    assert hello is not None and hello.sni is None


def test_parse_real_hello_ip_literal_has_no_sni() -> None:
    """Clients send no SNI for an IP literal (RFC 6066), so the proxy must use the CONNECT host."""
    hello = parse_client_hello(real_client_hello("127.0.0.1"))
    assert hello is not None and hello.sni is None


def test_parse_real_hello_with_alpn() -> None:
    """ALPN protocols come back in the client's order."""
    hello = parse_client_hello(real_client_hello(alpn=["h2", "http/1.1"]))
    assert hello is not None and hello.alpn == (b"h2", b"http/1.1")
    hello = parse_client_hello(real_client_hello(alpn=["http/1.1"]))
    assert hello is not None and hello.alpn == (b"http/1.1",)


def test_every_prefix_needs_more() -> None:
    """Every proper prefix of a real ClientHello gives NEED_MORE; the whole gives the hello."""
    data = real_client_hello(alpn=["http/1.1"])
    for i in range(len(data)):
        assert parse_client_hello(data[:i]) is NEED_MORE, i
    assert parse_client_hello(data).sni == "example.test"


def test_trailing_bytes_are_ignored() -> None:
    """Bytes after the ClientHello (say early data) do not change the result."""
    data = real_client_hello()
    assert parse_client_hello(data + record(b"x" * 10, content_type=23)) == parse_client_hello(data)


def test_split_across_records() -> None:
    """A ClientHello re-framed into two, or many, records still parses to the same result;
    every prefix of the re-framed bytes gives NEED_MORE."""
    data = real_client_hello(alpn=["http/1.1"])
    expected = parse_client_hello(data)
    two = split_records(data, 100)
    assert parse_client_hello(two) == expected
    for i in range(len(two)):
        assert parse_client_hello(two[:i]) is NEED_MORE, i
    header_split = split_records(data, 2)  # the handshake header itself spans records
    assert parse_client_hello(header_split) == expected
    many = split_records(data, *range(1, len(data) - 5, 7))
    assert parse_client_hello(many) == expected


# -- malformed input --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="not a handshake record"),
        pytest.param(b"\x17\x03\x03\x00\x05hello", id="application data"),
        pytest.param(b"\x16\x02\x00\x00\x05hello", id="not TLS record version"),
        pytest.param(b"\x16\x03\x01\x00\x00", id="empty record"),
        pytest.param(b"\x16\x03\x01\x40\x01", id="record longer than 2**14"),
        pytest.param(record(b"\x02\x00\x00\x00"), id="ServerHello, not ClientHello"),
        pytest.param(record(b"\x01\x00\x00\x02\x03\x03"), id="body too short for the random"),
        pytest.param(hello_message(b"\x02\x00" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"), id="client_version 2.0"),
        pytest.param(hello_message(hello_body()[:-2]), id="truncated compression"),
        pytest.param(hello_message(hello_body(session_id=bytes(33))), id="session_id too long"),
        pytest.param(hello_message(hello_body(ciphers=b"\x13")), id="odd cipher_suites"),
        pytest.param(hello_message(hello_body(ciphers=b"")), id="no cipher suites"),
        pytest.param(hello_message(hello_body(b"\x00")), id="extensions length lies"),
        pytest.param(
            hello_message(hello_body() + b"\x00\x08\x00\x00\x00\x04\x00\x00"), id="extension body runs past the block"
        ),
        pytest.param(hello_message(hello_body(ext(5, b"")) + b"x"), id="stray bytes after extensions"),
        pytest.param(hello_message(hello_body(ext(5, b"") + ext(5, b""))), id="repeated extension"),
        pytest.param(hello_message(hello_body(sni_ext(b"caf\xc3\xa9.test"))), id="non-ASCII SNI"),
        pytest.param(hello_message(hello_body(sni_ext(b"a b"))), id="space in SNI"),
        pytest.param(hello_message(hello_body(sni_ext(b""))), id="empty SNI"),
        pytest.param(hello_message(hello_body(sni_ext(b"a.test", b"b.test"))), id="two host names"),
        pytest.param(hello_message(hello_body(ext(0, b"\x00\x05\x00\x00\x03ab"))), id="SNI name length lies"),
        pytest.param(hello_message(hello_body(ext(16, b"\x00\x03\x03h2"))), id="ALPN name runs past the list"),
        pytest.param(hello_message(hello_body(ext(16, b"\x00\x01\x00"))), id="empty ALPN name"),
        pytest.param(hello_message(hello_body(ext(43, b"\x03\x03\x04\x03"))), id="odd supported_versions"),
    ],
)
def test_malformed_raises_value_error(data: bytes) -> None:
    """Garbage, wrong types and truncated or lying lengths raise ValueError."""
    with pytest.raises(ValueError):
        parse_client_hello(data)


def test_oversized_hello_refused_early() -> None:
    """A handshake header announcing more than 64 KiB is refused as soon as it is seen."""
    header = b"\x01" + (MAX_HELLO).to_bytes(3, "big")
    with pytest.raises(ValueError, match="too large"):
        parse_client_hello(b"\x16\x03\x01\x40\x00" + header)


def test_wrong_type_in_later_record_raises() -> None:
    """A non-handshake record in the middle of a split ClientHello is an error, not a wait."""
    data = split_records(real_client_hello(), 50)
    first_len = 5 + 50
    broken = data[:first_len] + b"\x17" + data[first_len + 1 :]
    with pytest.raises(ValueError):
        parse_client_hello(broken)


def test_hand_built_hello_without_extensions() -> None:
    """A ClientHello with no extensions block at all (legal before TLS 1.3) parses, versions from client_version."""
    assert parse_client_hello(hello_message(hello_body())) == ClientHello(sni=None, alpn=(), versions=(0x0303,))


def test_large_hello_spanning_records() -> None:
    """A valid 20 KiB ClientHello (large padding) carried in two full-size records parses."""
    body = hello_body(sni_ext(b"big.test") + ext(21, bytes(20_000)))
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    data = record(message[: 2**14]) + record(message[2**14 :])
    assert parse_client_hello(data) == ClientHello(sni="big.test", alpn=(), versions=(0x0303,))
    assert parse_client_hello(data[:-1]) is NEED_MORE


def test_unknown_name_type_is_skipped() -> None:
    """A server_name entry of an unknown name type is skipped, not taken as the host."""
    hello = parse_client_hello(hello_message(hello_body(sni_ext(b"x", name_type=7))))
    assert hello is not None and hello.sni is None


# -- fuzzing ---------------------------------------------------------------------

_REAL = real_client_hello(alpn=["h2", "http/1.1"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_value_error(data: bytes) -> None:
    """Random bytes give None, a ClientHello or ValueError, never another exception."""
    try:
        result = parse_client_hello(data)
    except ValueError:
        return
    assert result is None or isinstance(result, ClientHello)
    assert classify(data) in ("tls", "http", "other", None)


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(_REAL) - 1), st.integers(min_value=0, max_value=255))
def test_mutated_real_hello_only_value_error(position: int, value: int) -> None:
    """A real ClientHello with one byte changed gives None, a ClientHello or ValueError, nothing else."""
    data = bytearray(_REAL)
    data[position] = value
    try:
        result = parse_client_hello(bytes(data))
    except ValueError:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_body_in_valid_framing_only_value_error(body: bytes) -> None:
    """Random handshake bodies inside correct record and handshake headers parse or raise ValueError."""
    try:
        result = parse_client_hello(hello_message(body))
    except ValueError:
        return
    assert isinstance(result, ClientHello)
