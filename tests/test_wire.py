"""Tests for capture.wire: msgpack framing between the proxy and the session manager."""

from __future__ import annotations

import msgpack
import pytest

from capture import wire
from capture.wire import VERSION, Decoder, WireError, encode


def test_encode_adds_type_and_version() -> None:
    """encode() packs one msgpack map holding the fields plus ``t`` and ``v``."""
    data = encode("ack", instance="abc", seq=7)
    assert msgpack.unpackb(data, raw=False) == {"instance": "abc", "seq": 7, "t": "ack", "v": VERSION}


def test_round_trip_keeps_bytes_and_nesting() -> None:
    """A message with bytes, nested lists, None and maps decodes to the same values."""
    items = [[1, [2, 3], {"body": b"\x00\xffbin", "response": None}]]
    messages = Decoder().feed(encode("flows", instance="i1", items=items))
    assert messages == [{"t": "flows", "v": VERSION, "instance": "i1", "items": items}]
    assert isinstance(messages[0]["items"][0][2]["body"], bytes)


def test_message_split_byte_by_byte() -> None:
    """Fed one byte at a time, a message appears only when its last byte arrives."""
    data = encode("hello", instance="x" * 40, pid=1234)
    decoder = Decoder()
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
    assert decoder.feed(data[-1:]) == [{"t": "hello", "v": VERSION, "instance": "x" * 40, "pid": 1234}]


def test_several_messages_in_one_feed() -> None:
    """Several messages in one chunk come out in order, with a trailing partial kept for later."""
    first = encode("ack", instance="a", seq=1)
    second = encode("ack", instance="a", seq=2)
    third = encode("reply", id=9, result={"ok": True})
    decoder = Decoder()
    messages = decoder.feed(first + second + third[:3])
    assert [m["seq"] for m in messages] == [1, 2]
    assert decoder.feed(third[3:]) == [{"t": "reply", "v": VERSION, "id": 9, "result": {"ok": True}}]


def test_messages_across_chunk_boundaries() -> None:
    """A stream cut at arbitrary points yields every message exactly once, in order."""
    stream = b"".join(encode("ack", instance="inst", seq=n) for n in range(1, 51))
    decoder = Decoder()
    seqs: list[int] = []
    for start in range(0, len(stream), 7):
        seqs.extend(m["seq"] for m in decoder.feed(stream[start : start + 7]))
    assert seqs == list(range(1, 51))


def test_malformed_bytes_raise_wire_error() -> None:
    """A byte msgpack never uses (0xc1) is refused with WireError."""
    with pytest.raises(WireError, match="malformed"):
        Decoder().feed(b"\xc1")


def test_invalid_utf8_string_raises_wire_error() -> None:
    """A msgpack str that is not UTF-8 is refused with WireError, not UnicodeDecodeError leaking out."""
    bad = b"\x81\xa1t\xa2\xff\xfe"  # {"t": <str with bytes ff fe>}
    with pytest.raises(WireError):
        Decoder().feed(bad)


def test_frame_larger_than_max_size_in_one_feed() -> None:
    """A message bigger than max_size is refused with WireError."""
    data = encode("flows", instance="i", items=[[1, [], b"x" * 2000]])
    with pytest.raises(WireError, match="frame limit"):
        Decoder(max_size=1024).feed(data)


def test_frame_larger_than_max_size_in_pieces() -> None:
    """A large message trickling in is refused once the buffered bytes pass max_size."""
    data = encode("flows", instance="i", items=[[1, [], b"x" * 4000]])
    decoder = Decoder(max_size=1024)
    with pytest.raises(WireError):
        for start in range(0, len(data), 100):
            decoder.feed(data[start : start + 100])


def test_max_size_limits_one_message_not_the_stream() -> None:
    """Many small messages, together far beyond max_size, decode fine when fed one by one."""
    decoder = Decoder(max_size=1024)
    message = encode("ack", instance="i" * 100, seq=1)
    total = 0
    for _ in range(100):
        total += len(decoder.feed(message))
    assert total == 100


def test_default_limit_accepts_large_messages() -> None:
    """With the default limit (MAX_MESSAGE) a 2 MiB message decodes whole."""
    body = b"y" * (2 * 1024 * 1024)
    assert wire.MAX_MESSAGE == 64 * 1024 * 1024
    (message,) = Decoder().feed(encode("flows", instance="i", items=[[1, [], body]]))
    assert message["items"][0][2] == body


def test_non_map_message_raises() -> None:
    """A msgpack value that is not a map (a list) is refused."""
    with pytest.raises(WireError, match="not a map"):
        Decoder().feed(msgpack.packb(["t", "ack"]))


def test_map_without_type_raises() -> None:
    """A map without ``t`` is refused."""
    with pytest.raises(WireError, match="not a map with a type"):
        Decoder().feed(msgpack.packb({"v": VERSION, "seq": 1}))


def test_map_with_non_string_type_raises() -> None:
    """A map whose ``t`` is not a string is refused."""
    with pytest.raises(WireError):
        Decoder().feed(msgpack.packb({"t": 5, "v": VERSION}))


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_wrong_version_raises(version: object) -> None:
    """A message with a version other than VERSION (or none) is refused."""
    payload = {"t": "ack", "seq": 1}
    if version is not None:
        payload["v"] = version
    with pytest.raises(WireError, match="version"):
        Decoder().feed(msgpack.packb(payload, use_bin_type=True))
