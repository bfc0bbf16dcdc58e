"""capture.http.h2frames: frame boundaries followed across reads, GOAWAY taken out, oversized frames refused."""

from __future__ import annotations

from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, PingFrame

from capture.http.h2frames import FrameScanner, goaway_frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_goaway_is_taken_out_across_reads_and_the_rest_passes():
    """Frames split at every byte boundary (after a preface) pass unchanged except GOAWAY, which is reported."""
    frames = [DataFrame(1, data=b"abc").serialize(), GoAwayFrame(0, last_stream_id=5, error_code=2).serialize(),
              PingFrame(0, opaque_data=b"12345678").serialize()]
    wire = PREFACE + b"".join(frames)
    for cut in range(len(wire) + 1):
        scanner = FrameScanner(16384, skip=len(PREFACE))
        a, found_a, big_a = scanner.feed(wire[:cut])
        b, found_b, big_b = scanner.feed(wire[cut:])
        assert a + b == PREFACE + frames[0] + frames[2]
        assert found_a + found_b == [(5, 2)]
        assert big_a == big_b == ""


def test_an_oversized_frame_is_refused_at_its_header():
    """A frame announcing more than the limit is refused once its 9-byte header is in, before its body."""
    scanner = FrameScanner(16384)
    header = (16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    assert scanner.feed(header[:5])[2] == ""
    assert scanner.feed(header[5:])[2] == "an HTTP/2 frame longer than 16384 bytes"


def test_a_goaway_shorter_than_its_fixed_fields_is_a_frame_size_error():
    """A GOAWAY of fewer than 8 bytes cannot say which streams may finish: the connection is to end."""
    short = (4).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x05"
    scanner = FrameScanner(16384)
    data, found, error = scanner.feed(PingFrame(0, opaque_data=b"12345678").serialize() + short)
    assert (data, found, error) == (b"", [], "a GOAWAY frame of 4 bytes (at least 8)")


def test_our_goaway_frame_parses_as_one():
    """The GOAWAY written beside h2 is a well-formed frame with the last stream id, code and debug data."""
    frame, length = Frame.parse_frame_header(memoryview(goaway_frame(7, ErrorCodes.NO_ERROR, b"bye")[:9]))
    frame.parse_body(memoryview(goaway_frame(7, ErrorCodes.NO_ERROR, b"bye")[9:]))
    assert isinstance(frame, GoAwayFrame) and length == 11
    assert (frame.last_stream_id, frame.error_code, frame.additional_data) == (7, 0, b"bye")
