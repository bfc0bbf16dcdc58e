"""The WebSocket message record's packed forms: today's (with ``omitted``) and the version before it."""

from __future__ import annotations

import msgpack
import pytest

from capture.messages import (
    WebSocketMessage,
    pack_message,
    pack_messages,
    unpack_message,
    unpack_messages,
)

T0 = 1_700_000_000.0


def test_batch_round_trip_keeps_omitted():
    """A batch packs as version 2, each message with its omitted flag, and reads back equal."""
    batch = [WebSocketMessage(True, "text", b"hi", 2, False, T0),
             WebSocketMessage(False, "binary", b"", 5, True, T0 + 1, True)]
    packed = pack_messages(batch)
    assert msgpack.unpackb(packed)[0] == 2
    assert unpack_messages(packed) == batch


def test_version_1_batch_reads_as_not_omitted():
    """A batch shipped by a proxy from before ``omitted`` (version 1, six fields) is still read."""
    old = msgpack.packb((1, [(False, "text", b"hello", 5, False, T0)]), use_bin_type=True)
    (message,) = unpack_messages(old)
    assert message == WebSocketMessage(False, "text", b"hello", 5, False, T0, False)


def test_stored_message_old_and_new():
    """A stored message of six fields (before ``omitted``) reads as not omitted; seven round-trip."""
    old = msgpack.packb((True, "binary", b"\x00", 1, False, T0), use_bin_type=True)
    assert unpack_message(old) == WebSocketMessage(True, "binary", b"\x00", 1, False, T0)
    new = WebSocketMessage(False, "text", b"", 3, True, T0, True)
    assert len(msgpack.unpackb(pack_message(new))) == 7
    assert unpack_message(pack_message(new)) == new


@pytest.mark.parametrize("packed", [
    msgpack.packb((3, [(True, "text", b"x", 1, False, T0, False)]), use_bin_type=True),  # unknown version
    msgpack.packb((1, [(True, "text", b"x", 1, False, T0, False)]), use_bin_type=True),  # v1 with seven
    msgpack.packb((2, [(True, "text", b"x", 1, False, T0)]), use_bin_type=True),  # v2 with six
    msgpack.packb((2, [(True, "text", b"x", 1, False, T0, "yes")]), use_bin_type=True),  # omitted not a bool
    msgpack.packb(("2", []), use_bin_type=True),
])
def test_bad_batches_are_refused(packed):
    """A batch whose version and field count disagree, or with a bad field, is a ValueError."""
    with pytest.raises(ValueError):
        unpack_messages(packed)


@pytest.mark.parametrize("packed", [
    msgpack.packb((True, "text", b"x", 1, False), use_bin_type=True),
    msgpack.packb((True, "text", b"x", 1, False, T0, False, 0), use_bin_type=True),
    msgpack.packb((True, "text", b"x", 1, False, T0, 1), use_bin_type=True),
    b"\xc1",
])
def test_bad_stored_messages_are_refused(packed):
    """A stored message of the wrong length or types is a ValueError, not a traceback further on."""
    with pytest.raises(ValueError):
        unpack_message(packed)


def test_detail_says_omitted():
    """The API's form of a message carries ``omitted``, with empty content when it is set."""
    shown = WebSocketMessage(False, "text", b"", 5, True, T0, True).detail()
    assert shown["omitted"] is True and shown["content"] == "" and shown["size"] == 5
    assert WebSocketMessage(True, "text", b"a", 1, False, T0).detail()["omitted"] is False
