"""Content-Encoding undone for whoever reads a body: people, filters, exports.

Apps and CDNs send bodies compressed with gzip, deflate, br (Brotli) and
zstd.  The bytes on the wire and in the store stay as sent; every place
that shows or searches a body asks ``decode`` for the content instead: the
flow detail, ``~b``/``~bq``/``~bs`` (in the proxy's session filters and in
the session manager's queries), HAR and Postman exports.

Decoding is bounded: at most ``MAX_DECODED`` bytes come out, however small
the input (a decompression bomb), and the result says it was cut.  Each
decoder is asked for a bounded amount of output at a time, so memory never
holds more than the bound.  A body that cannot be decoded (an unknown or
corrupt encoding) is returned as stored, with the reason.  A stored body
that was itself truncated (``max_capture_body``) is decoded as far as it
goes.  Pure functions, no I/O.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import brotli
import zstandard

MAX_DECODED = 8 * 1024 * 1024
_STEP = 256 * 1024  # output asked of a decoder at a time
_ZSTD_SLICE = 512  # input given to zstd at a time: at most 16 MiB of output from one slice (RLE blocks)


class _Incomplete(Exception):
    """The compressed data ended before its end marker (a body truncated when stored)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A body as a reader sees it.

    ``encoding`` names what was undone ("br", "gzip, br"), empty when
    nothing was; ``cut`` says the decoded content reached the bound and is
    only its first ``MAX_DECODED`` bytes; ``partial`` that the stored bytes
    ended early, so the content is what they held; ``error`` why an encoding
    named in the headers was not undone (the body is then as stored).
    """

    body: bytes
    encoding: str = ""
    cut: bool = False
    partial: bool = False
    error: str = ""


def content_codings(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The Content-Encoding codings in the order they were applied, identity left out."""
    found = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            for token in value.decode("latin-1").split(","):
                token = token.strip().lower()
                if token and token != "identity":
                    found.append(token)
    return found


def decode(body: bytes, codings: list[str], limit: int = MAX_DECODED) -> Decoded:
    """Undo ``codings`` (as ``content_codings`` lists them) on ``body``, last applied first."""
    if not codings or not body:
        return Decoded(body)
    for coding in codings:
        if coding not in _DECODERS:
            return Decoded(body, error=f"unknown content coding {coding!r}")
    data, cut, partial = body, False, False
    for coding in reversed(codings):
        try:
            data, step_cut = _DECODERS[coding](data, limit)
        except _Incomplete as e:
            data, step_cut, partial = e.args[0], False, True
        except (zlib.error, brotli.error, zstandard.ZstdError, ValueError) as e:
            return Decoded(body, error=f"cannot decode {coding}: {_one_line(e)}")
        if step_cut:
            cut = True
            data = data[:limit]
    # Once cut, the inner codings see a stream that ends early: that is the cut, not a truncated body.
    return Decoded(data, ", ".join(codings), cut, partial and not cut)


def decode_message(headers: Iterable[tuple[bytes, bytes]], body: bytes, limit: int = MAX_DECODED) -> Decoded:
    """A message's body decoded as its Content-Encoding says."""
    return decode(body, content_codings(headers), limit)


def _zlib(wbits: int) -> Callable[[bytes, int], tuple[bytes, bool]]:
    def run(data: bytes, limit: int) -> tuple[bytes, bool]:
        out: list[bytes] = []
        size = 0
        while data:
            inflater = zlib.decompressobj(wbits)
            pending = data
            while pending and not inflater.eof:
                piece = inflater.decompress(pending, min(_STEP, limit + 1 - size))
                out.append(piece)
                size += len(piece)
                if size > limit:
                    return b"".join(out), True
                pending = inflater.unconsumed_tail
            if not inflater.eof:
                raise _Incomplete(b"".join(out))
            # gzip allows several members one after another; what follows a raw or zlib stream is ignored.
            data = (inflater.unused_data or pending) if wbits & 16 and wbits > 0 else b""
        return b"".join(out), False

    return run


def _deflate(data: bytes, limit: int) -> tuple[bytes, bool]:
    """zlib-wrapped deflate, as RFC 9110 says; many servers send it raw."""
    try:
        return _zlib(zlib.MAX_WBITS)(data, limit)
    except zlib.error:
        return _zlib(-zlib.MAX_WBITS)(data, limit)


def _brotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    decompressor = brotli.Decompressor()
    out = [decompressor.process(data, output_buffer_limit=min(_STEP, limit + 1))]
    size = len(out[0])
    while size <= limit and not decompressor.is_finished():
        piece = decompressor.process(b"", output_buffer_limit=min(_STEP, limit + 1 - size))
        if not piece:  # all input used and no end marker
            break
        out.append(piece)
        size += len(piece)
    if size > limit:
        return b"".join(out), True
    if not decompressor.is_finished():
        raise _Incomplete(b"".join(out))
    return b"".join(out), False


def _zstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    """zstd's streaming decoder has no output bound, so it gets the input in slices small enough
    that one slice cannot expand past a few MiB (a 4-byte RLE block is at most 128 KiB)."""
    out: list[bytes] = []
    size = 0
    while data:  # one frame at a time; a body may hold several
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        view = memoryview(data)
        rest = b""
        for start in range(0, len(view), _ZSTD_SLICE):
            piece = decompressor.decompress(view[start:start + _ZSTD_SLICE])
            out.append(piece)
            size += len(piece)
            if size > limit:
                return b"".join(out), True
            if decompressor.eof:
                rest = decompressor.unused_data + bytes(view[start + _ZSTD_SLICE:])
                break
        if not decompressor.eof:
            raise _Incomplete(b"".join(out))
        data = rest
    return b"".join(out), False


_DECODERS: dict[str, Callable[[bytes, int], tuple[bytes, bool]]] = {
    "gzip": _zlib(zlib.MAX_WBITS | 16),
    "x-gzip": _zlib(zlib.MAX_WBITS | 16),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
