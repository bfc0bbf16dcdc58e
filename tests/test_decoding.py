"""capture.decoding: Content-Encoding undone for readers, bounded, without sockets."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from capture.decoding import MAX_DECODED, Decoded, content_codings, decode, decode_message

PLAIN = b'{"items": [' + b", ".join(b'{"id": %d, "name": "caf\xc3\xa9"}' % i for i in range(2000)) + b"]}"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("coding, compress", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", raw_deflate),
    ("br", brotli.compress),
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_each_coding_is_undone(coding, compress):
    """gzip, deflate (zlib-wrapped or raw), br and zstd come back as the original bytes, naming the coding."""
    assert decode(compress(PLAIN), [coding]) == Decoded(PLAIN, coding)


def test_codings_apply_in_order_and_are_undone_last_first():
    """Content-Encoding: gzip, br means gzip first, then br: undone br first."""
    body = brotli.compress(gzip.compress(PLAIN))
    headers = ((b"Content-Type", b"application/json"), (b"content-encoding", b"gzip, identity"), (b"Content-Encoding", b"BR"))
    assert content_codings(headers) == ["gzip", "br"]
    assert decode_message(headers, body) == Decoded(PLAIN, "gzip, br")


def test_several_gzip_members_and_zstd_frames():
    """Concatenated gzip members and zstd frames are one body each."""
    assert decode(gzip.compress(b"one ") + gzip.compress(b"two"), ["gzip"]).body == b"one two"
    frames = zstandard.ZstdCompressor().compress(b"one ") + zstandard.ZstdCompressor().compress(b"two")
    assert decode(frames, ["zstd"]).body == b"one two"


def test_no_coding_identity_or_empty_body_is_left_alone():
    """Nothing to undo: the stored bytes, and no encoding named."""
    assert decode(PLAIN, []) == Decoded(PLAIN)
    assert decode_message(((b"Content-Encoding", b"identity"),), PLAIN) == Decoded(PLAIN)
    assert decode(b"", ["br"]) == Decoded(b"")


def test_unknown_or_corrupt_is_kept_as_stored_with_the_reason():
    """An encoding we do not know, or bytes that are not what the header says, stay as stored."""
    assert decode(b"\x01\x02", ["compress"]) == Decoded(b"\x01\x02", error="unknown content coding 'compress'")
    for coding in ("gzip", "deflate", "br", "zstd"):
        result = decode(b"not compressed at all", [coding])
        assert result.body == b"not compressed at all" and result.encoding == ""
        assert result.error.startswith(f"cannot decode {coding}")


@pytest.mark.parametrize("coding, compress", [
    ("gzip", gzip.compress),
    ("br", brotli.compress),
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_a_body_truncated_when_stored_is_decoded_as_far_as_it_goes(coding, compress):
    """max_capture_body cut the compressed bytes: what they hold comes out, marked partial."""
    data = bytes(range(256)) * 4096  # 1 MiB that compresses a little
    stored = compress(data)[: len(compress(data)) * 3 // 4]
    result = decode(stored, [coding])
    assert result.partial and not result.cut and result.encoding == coding and not result.error
    assert data.startswith(result.body)


@pytest.mark.parametrize("coding, compress", [
    ("gzip", lambda data: gzip.compress(data, 9)),
    ("deflate", lambda data: zlib.compress(data, 9)),
    ("br", lambda data: brotli.compress(data, quality=1)),
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_a_bomb_is_cut_at_the_bound_and_marked(coding, compress):
    """40 MiB of zeros in a few KiB: exactly MAX_DECODED bytes come out, marked cut, never the whole."""
    bomb = compress(b"\0" * (40 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    result = decode(bomb, [coding])
    assert result.cut and not result.partial and len(result.body) == MAX_DECODED
    small = decode(bomb, [coding], limit=1000)
    assert small.cut and small.body == b"\0" * 1000


def test_nested_bomb_is_cut_too():
    """A bomb inside a second coding is still bounded: the outer decoding stops at the bound."""
    bomb = brotli.compress(gzip.compress(b"\0" * (40 * 1024 * 1024), 9))
    result = decode(bomb, ["gzip", "br"], limit=4096)
    assert result.cut and len(result.body) == 4096
