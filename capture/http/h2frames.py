"""HTTP/2 frame boundaries followed in a peer's bytes before ``h2`` sees them; no I/O.

Two things ``h2`` cannot do for a proxy are done here, as each frame's
9-byte header arrives:

- An oversized frame is refused at its header.  ``h2`` checks a frame's
  length only once the whole frame has arrived, which would let a peer make
  the proxy buffer 16 MiB per connection.
- GOAWAY frames are taken out and reported.  ``h2`` closes its connection
  state on a GOAWAY and then refuses every frame, even those of streams the
  GOAWAY let finish (RFC 9113 6.8); so the layers handle a peer's GOAWAY
  themselves and ``h2`` never sees it.  One shorter than its 8 fixed bytes
  is a frame size error, as ``h2`` would have found it.

Everything else passes unchanged, without a copy when no GOAWAY is in the read.
"""

from __future__ import annotations

GOAWAY = 7  # the frame type
HEADER = 9


class FrameScanner:
    """Follows one direction of an HTTP/2 connection frame by frame; ``skip``: bytes before the first frame."""

    __slots__ = ("max_frame", "_skip", "_pending")

    def __init__(self, max_frame: int, skip: int = 0) -> None:
        self.max_frame = max_frame
        self._skip = skip  # bytes of the current frame's body (or of the preface) still to pass
        self._pending = b""  # an unfinished frame header, or an unfinished GOAWAY frame

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]], str]:
        """(bytes for h2, [(last stream id, error code) of each GOAWAY taken out], a frame size error or "").

        Once there is a frame size error, the connection is to end: nothing more is scanned.
        """
        buf = self._pending + data if self._pending else data
        pos = start = 0
        size = len(buf)
        pieces: list[bytes] = []
        found: list[tuple[int, int]] = []
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                continue
            if size - pos < HEADER:
                break
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if length > self.max_frame:
                self._pending = b""
                return b"", found, f"an HTTP/2 frame longer than {self.max_frame} bytes"
            if buf[pos + 3] == GOAWAY:
                if size - pos < HEADER + length:
                    break
                if length < 8:
                    self._pending = b""
                    return b"", found, f"a GOAWAY frame of {length} bytes (at least 8)"
                body = buf[pos + HEADER:pos + HEADER + length]
                found.append((int.from_bytes(body[:4], "big") & 0x7FFFFFFF, int.from_bytes(body[4:8], "big")))
                pieces.append(buf[start:pos])
                pos += HEADER + length
                start = pos
            else:
                pos += HEADER
                self._skip = length
        self._pending = buf[pos:] if pos < size else b""
        if start == 0 and pos == size:
            return buf, found, ""
        pieces.append(buf[start:pos])
        return b"".join(pieces), found, ""


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame of our own, written beside ``h2`` so that it keeps serving the streams it lets finish."""
    body = (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big") + int(error_code).to_bytes(4, "big") + debug
    return len(body).to_bytes(3, "big") + bytes((GOAWAY, 0)) + (0).to_bytes(4, "big") + body
