"""Hypothesis fuzzing of the WebSocket relay, without sockets.

Two properties: whatever bytes either side sends, the relay never raises,
never produces more than a bounded step, and either keeps going or closes
both sides; and valid messages, cut into arbitrary reads, come out the
other side unchanged and are recorded once each, in order.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage, TextMessage

from capture.http.websocket import INFLATE_SLICE
from test_websocket import Pair, joined

MAX_MESSAGE = 1 << 16


def cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in reads of the given sizes (the last read takes the rest)."""
    pieces, offset = [], 0
    for size in sizes:
        if offset >= len(data):
            break
        pieces.append(data[offset: offset + size])
        offset += size
    if offset < len(data):
        pieces.append(data[offset:])
    return pieces


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deflate=st.booleans(), from_client=st.booleans(),
       reads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8))
def test_any_bytes_leave_the_relay_consistent(deflate, from_client, reads):
    """Random bytes from either side: no exception, bounded output per step, and a failure closes both sides."""
    pair = Pair(client_deflate=deflate, server_deflate=deflate, max_message=MAX_MESSAGE)
    relay = pair.relay
    for data in reads:
        relay.receive(from_client, data)
        for _ in range(10_000):
            if not relay.pending(from_client):
                break
            out = relay.step(from_client)
            assert len(out.to_client) + len(out.to_server) < 1100 * INFLATE_SLICE + MAX_MESSAGE
            if out.close_client or out.close_server:
                assert relay.close is not None
        else:
            raise AssertionError("the relay never consumed its input")
    if relay.close is not None and relay.close.closed_by == "proxy":
        assert relay.finished


messages = st.lists(
    st.one_of(st.text(max_size=200).map(TextMessage), st.binary(max_size=200).map(BytesMessage)),
    min_size=1, max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(deflate=st.sampled_from([(False, False), (True, False), (False, True), (True, True)]),
       from_client=st.booleans(), sent=messages, sizes=st.lists(st.integers(1, 64), max_size=40))
def test_messages_pass_unchanged_in_any_reads(deflate, from_client, sent, sizes):
    """Valid messages, however the reads cut them, arrive whole and in order, each recorded once."""
    pair = Pair(client_deflate=deflate[0], server_deflate=deflate[1])
    peer = pair.client if from_client else pair.origin
    data = b"".join(peer.send(message) for message in sent)
    received = []
    for piece in cuts(data, sizes):
        received += pair.feed(from_client, piece)
    assert joined(received) == [type(m)(m.data) for m in sent]
    assert [m.content for m in pair.messages] == [
        m.data.encode() if isinstance(m, TextMessage) else m.data for m in sent]
    assert all(m.from_client == from_client for m in pair.messages)
