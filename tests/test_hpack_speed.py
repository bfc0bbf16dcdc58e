"""capture.http.hpack_speed: the same HPACK bytes and headers as hpack's own code, with less work."""

from __future__ import annotations

import hpack
import hpack.hpack
from hpack import Decoder, Encoder, HPACKDecodingError, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.http import hpack_speed, http2

NAMES = [b"content-type", b"date", b"etag", b"x-a", b"x-b", b"cookie", b":status", b"server"]
VALUES = [b"", b"text/html", b"1", b"22", b"a" * 40, b"b" * 300, b"nginx", b"200", b"404"]

header_lists = st.lists(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=12),
                        max_size=25)


@settings(max_examples=200, deadline=None)
@given(header_lists, st.sampled_from([0, 64, 256, 4096]), st.integers(min_value=0, max_value=24))
def test_indexed_table_encodes_byte_for_byte(blocks, table_size, resize_at):
    """Over many blocks (some fields never indexed), table sizes and a resize midway, FastEncoder emits hpack's exact bytes."""
    plain, fast = Encoder(), hpack_speed.fast_encoder(Encoder())
    decoder = Decoder()
    for i, block in enumerate(blocks):
        if i == resize_at:
            plain.header_table_size = fast.header_table_size = table_size
        sent = [NeverIndexedHeaderTuple(n, v) if n == b"cookie" else (n, v) for n, v in block]
        encoded = fast.encode(sent)
        assert encoded == plain.encode(sent)
        assert decoder.decode(encoded, raw=True) == block


def test_indexed_table_forgets_evicted_entries():
    """An entry pushed out of the table is never referenced again (a stale index would corrupt the peer's state)."""
    table = hpack_speed.IndexedTable()
    table.maxsize = 100
    table.add(b"x-a", b"1" * 30)
    assert table.search(b"x-a", b"1" * 30) == (62, b"x-a", b"1" * 30)
    table.add(b"x-b", b"2" * 30)  # 2 * (3 + 30 + 32) > 100: x-a goes
    assert table.search(b"x-a", b"1" * 30) is None
    assert table.search(b"x-b", b"2" * 30) == (62, b"x-b", b"2" * 30)
    table.maxsize = 0
    assert table.search(b"x-b", b"2" * 30) is None


def test_huffman_memo_decodes_the_same_and_stays_bounded(monkeypatch):
    """Memoised Huffman decoding gives hpack's result, rejects bad input every time, and never grows past its bound."""
    hpack_speed.install()
    decode = hpack.hpack.decode_huffman
    assert hasattr(decode, "memo"), "the memo is not in front of hpack's Huffman decoder"
    monkeypatch.setattr(hpack_speed, "MEMO_ENTRIES", 8)
    encoder, decoder = Encoder(), Decoder()
    for i in range(50):
        value = b"value-%d" % (i % 20)
        block = encoder.encode([NeverIndexedHeaderTuple(b"x-v", value)], huffman=True)
        assert decoder.decode(block, raw=True) == [(b"x-v", value)]
        assert len(decode.memo) <= 9  # cleared once full, but never refilled past the bound
    for _ in range(2):  # an invalid code (all ones is EOS) fails each time, cached or not
        try:
            decode(b"\xff\xff\xff\xff")
        except HPACKDecodingError:
            pass
        else:
            raise AssertionError("EOS inside a Huffman string was accepted")


def test_outgoing_keeps_secrets_out_of_the_compression_context():
    """Credentials, short cookies and fields the sender marked never-indexed are sent never-indexed."""
    out = http2.outgoing([(b"Authorization", b"Bearer x"), (b"cookie", b"a=1"), (b"cookie", b"b" * 40),
                          NeverIndexedHeaderTuple(b"x-secret", b"s"), (b"Connection", b"x-hop"), (b"x-hop", b"1"),
                          (b"te", b"gzip"), (b"content-type", b"text/plain")])
    assert out == [(b"authorization", b"Bearer x"), (b"cookie", b"a=1"), (b"cookie", b"b" * 40),
                   (b"x-secret", b"s"), (b"content-type", b"text/plain")]
    never = [header[0] for header in out if isinstance(header, hpack.HeaderTuple) and not header.indexable]
    assert never == [b"authorization", b"cookie", b"x-secret"]
    encoded = Encoder().encode(out)
    decoded = Decoder().decode(encoded, raw=True)
    assert [h[0] for h in decoded if not h.indexable] == [b"authorization", b"cookie", b"x-secret"]
