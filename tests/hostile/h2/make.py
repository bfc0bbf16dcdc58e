"""Writes the HTTP/2 hostile corpus (the *.bin files beside this script); run it again after editing a case.

Each file is what a client sends inside intercepted TLS after choosing h2;
``tests/hostile/h2.toml`` says what each must do to the appliance.
"""

from __future__ import annotations

from pathlib import Path

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HERE = Path(__file__).resolve().parent
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/bytes?n=1")]


def start() -> bytes:
    return PREFACE + SettingsFrame(0).serialize()


def headers(stream_id: int, flags: tuple[str, ...] = ("END_HEADERS", "END_STREAM"), block: bytes | None = None) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = hpack.Encoder().encode(REQUEST) if block is None else block
    for flag in flags:
        frame.flags.add(flag)
    return frame.serialize()


def cases() -> dict[str, bytes]:
    bad_settings = bytearray(SettingsFrame(0, settings={1: 4096}).serialize())
    bad_settings[2] = 5  # a SETTINGS payload must be a multiple of 6 bytes
    huge = bytearray(DataFrame(1, data=b"x").serialize())
    huge[0:3] = (16 * 1024 * 1024 - 1).to_bytes(3, "big")  # beyond the 16 KiB SETTINGS_MAX_FRAME_SIZE
    # One 4,000-byte header added to the dynamic table (it fits its 4 KiB), then referenced a thousand times.
    bomb = b"\x40\x01x\x7f\xa1\x1e" + b"y" * 4000 + b"\xbe" * 1000
    encoder = hpack.Encoder()
    block = encoder.encode(REQUEST)
    flood = headers(1, flags=(), block=block[:1])
    for i in range(1, 200):
        continuation = ContinuationFrame(1, data=block[i:i + 1] if i < len(block) else b"")
        flood += continuation.serialize()
    short_goaway = (4).to_bytes(3, "big") + bytes((7, 0)) + (0).to_bytes(4, "big") + (1).to_bytes(4, "big")
    resets = b"".join(headers(2 * i + 1) + RstStreamFrame(2 * i + 1, error_code=8).serialize() for i in range(150))
    return {
        "bad-preface.bin": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize(),
        "bad-settings-length.bin": PREFACE + bytes(bad_settings),
        "oversized-frame.bin": start() + headers(1, flags=("END_HEADERS",)) + bytes(huge),
        "hpack-bomb.bin": start() + headers(1, block=hpack.Encoder().encode(REQUEST) + bomb),
        "continuation-flood.bin": start() + flood,
        "rapid-reset.bin": start() + resets,
        "window-overflow.bin": start() + WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(),
        "short-goaway.bin": start() + headers(1, flags=("END_HEADERS",)) + short_goaway,
    }


def main() -> None:
    for name, data in cases().items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
