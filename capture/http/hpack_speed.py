"""HPACK's repeated work made cheap: Huffman strings decoded once, and the encoder's table searched by key.

``hpack`` is pure Python.  Through the proxy every HTTP/2 header block is
decoded once and encoded once on each side, and measured there (callgrind,
``bench/instructions.py --scenario h2-mux``) three things cost most:

- Huffman decoding, a loop over every nibble of every literal value.
  Origins such as nginx send most response fields as literals that are
  never indexed, so the same strings (content type, server, ETag, dates
  within a second) are decoded again and again; ``install`` puts a bounded
  memo in front of the decoder, keyed by the encoded bytes (a pure function
  of them; errors are never stored, and the bounds keep memory fixed).
- The encoder's dynamic-table search, a linear scan for every field sent;
  ``IndexedTable`` keeps an index by (name, value) and by name beside the
  same table, and ``FastEncoder`` writes a field found whole in a table
  (most of them, request after request) as its index directly, leaving
  only literals to hpack: the output is unchanged, byte for byte.
- hpack's debug logging, called a few dozen times per request even when
  nothing logs: left out unless its logger is enabled for DEBUG at install.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import hpack.hpack
from hpack import Encoder, HeaderTuple
from hpack.table import HeaderTable, table_entry_size

# Encoded strings longer than this are decoded every time (long values rarely repeat).
MEMO_LONGEST = 256
# Entries before the memo starts over: at most MEMO_ENTRIES * about 2 * MEMO_LONGEST bytes.
MEMO_ENTRIES = 4096

_installed = False


class _Quiet:
    """Stands in for hpack's module logger while nothing listens to it."""

    @staticmethod
    def debug(*args: Any, **kwargs: Any) -> None:
        """Nothing: hpack's debug lines were not asked for."""


def _memoised(decode: Any) -> Any:
    memo: dict[bytes, bytes] = {}

    def decode_huffman(encoded: Any) -> bytes:
        if len(encoded) > MEMO_LONGEST:
            return decode(encoded)
        try:
            return memo[encoded]
        except KeyError:
            pass
        except TypeError:  # not hashable (a bytearray or memoryview): decode it as it is
            return decode(encoded)
        decoded = decode(encoded)
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[encoded] = decoded
        return decoded

    decode_huffman.memo = memo  # type: ignore[attr-defined] - for the tests
    return decode_huffman


def install() -> None:
    """Put the memo in front of hpack's Huffman decoder and quiet its logging; once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    decode = getattr(hpack.hpack, "decode_huffman", None)
    if callable(decode):
        hpack.hpack.decode_huffman = _memoised(decode)
    log = getattr(hpack.hpack, "log", None)
    if isinstance(log, logging.Logger) and not log.isEnabledFor(logging.DEBUG):
        hpack.hpack.log = _Quiet()


class IndexedTable(HeaderTable):
    """hpack's header table with its dynamic entries also indexed, for the encoder's search.

    Entries are numbered as they are added; the newest has dynamic index 0,
    so an entry numbered ``n`` sits at ``STATIC_TABLE_LENGTH + 1 + newest - n``.
    ``_exact`` and ``_named`` hold the newest number for each (name, value)
    and each name; an entry leaves them when it is evicted (oldest first).
    """

    def __init__(self) -> None:
        super().__init__()
        self._added = 0  # numbers handed out so far; the newest entry is _added - 1
        self._exact: dict[tuple[bytes, bytes], int] = {}
        self._named: dict[bytes, int] = {}

    def add(self, name: bytes, value: bytes) -> None:
        size = table_entry_size(name, value)
        if size > self._maxsize:
            self.dynamic_entries.clear()
            self._current_size = 0
            self._exact.clear()
            self._named.clear()
            return
        number = self._added
        self._added = number + 1
        self.dynamic_entries.appendleft((name, value))
        self._exact[(name, value)] = number
        self._named[name] = number
        self._current_size += size
        self._shrink()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined] - shrinks through _shrink
        if not self.dynamic_entries:
            self._exact.clear()
            self._named.clear()

    def _shrink(self) -> None:
        entries = self.dynamic_entries
        while self._current_size > self._maxsize:
            number = self._added - len(entries)
            name, value = entries.pop()
            self._current_size -= table_entry_size(name, value)
            if self._exact.get((name, value)) == number:
                del self._exact[(name, value)]
            if self._named.get(name) == number:
                del self._named[name]

    def search(self, name: bytes, value: bytes) -> Optional[tuple[int, bytes, Optional[bytes]]]:
        partial = None
        static = HeaderTable.STATIC_TABLE_MAPPING.get(name)
        if static:
            index = static[1].get(value)
            if index is not None:
                return index, name, value
            partial = (static[0], name, None)
        oldest = self._added - len(self.dynamic_entries)
        newest = self._added - 1 + HeaderTable.STATIC_TABLE_LENGTH + 1
        number = self._exact.get((name, value))
        if number is not None and number >= oldest:
            return newest - number, name, value
        if partial is None:
            number = self._named.get(name)
            if number is not None and number >= oldest:
                return newest - number, name, None
        return partial


# An indexed field (RFC 7541 6.1) for each index that fits the 7-bit prefix in one byte.
_INDEXED = [bytes((0x80 | index,)) for index in range(127)]


class FastEncoder(Encoder):
    """hpack's Encoder on an IndexedTable, writing fields found whole in a table without hpack's per-field steps."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = IndexedTable()

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if isinstance(headers, dict):
            return super().encode(headers, huffman)
        table = self.header_table
        block: list[bytes] = []
        if table.resized:
            block.append(self._encode_table_size_change())
            table.resized = False
        search = table.search
        for header in headers:
            name, value = header[0], header[1]
            if type(name) is not bytes or type(value) is not bytes or len(header) != 2:
                block.append(super().encode([header], huffman))  # the unusual: hpack's own way
                continue
            match = search(name, value)
            if match is not None and match[2] is not None and match[0] < 127:
                block.append(_INDEXED[match[0]])
            else:
                sensitive = isinstance(header, HeaderTuple) and not header.indexable
                block.append(self.add((name, value), sensitive, huffman))
        return b"".join(block)


def fast_encoder(encoder: Any) -> FastEncoder:
    """A FastEncoder with ``encoder``'s settings (an hpack Encoder that has encoded nothing yet)."""
    fast = FastEncoder()
    fast.header_table.maxsize = encoder.header_table.maxsize
    fast.header_table.resized = encoder.header_table.resized
    return fast

