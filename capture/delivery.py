"""The proxy's queue of captured flows awaiting the session manager's acknowledgement.

Flows are numbered per proxy instance and must reach the store in that
order: the store keeps each instance's highest stored number and skips
anything at or below it, which is what makes resends harmless.  So the
queue keeps one order everywhere:

    unacked (sent, in memory) < resend (memory) < spill file (disk) < unsent (memory)

A WebSocket flow is delivered in several numbered items: one that opens it
when the upgrade completes, batches of its messages as they pass, and one
that closes it (see :mod:`capture.messages`); the later ones name the
opening item's sequence number as ``ref``.  They take their places in the
same order as every other item, so they are acknowledged, resent and
de-duplicated the same way.

Past ``memory_limit`` the oldest unsent flows move to an append-only spill
file; past ``spill_limit`` the oldest spilled flows are dropped and counted.
Nothing here ever blocks the caller on the session manager.  No reactor:
file I/O is small appends and sequential reads, done only under pressure.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Iterable

import msgpack
from twisted.logger import Logger

from capture.flow import pack_fields

log = Logger()


#: Operations on a live (WebSocket) flow, beside the plain finished flow.
LIVE_OPS = ("open", "messages", "close")


class Item:
    """One flow (or live-flow operation) waiting for delivery, already packed.

    ``op`` is None for a finished flow (``flow`` packed by ``pack_fields``);
    otherwise one of ``LIVE_OPS`` with ``flow`` its packed payload and
    ``ref`` the sequence number of the item that opened the flow.
    """

    __slots__ = ("instance", "seq", "sessions", "flow", "size", "op", "ref")

    def __init__(self, instance: str, seq: int, sessions: list[int], flow: bytes, op: str | None = None,
                 ref: int = 0) -> None:
        self.instance = instance
        self.seq = seq
        self.sessions = sessions
        self.flow = flow
        self.op = op
        self.ref = ref
        self.size = 64 + len(flow)

    def record(self) -> list[Any]:
        if self.op is None:
            return [self.instance, self.seq, self.sessions, self.flow]
        return [self.instance, self.seq, self.sessions, self.flow, self.op, self.ref]

    def wire(self) -> list[Any]:
        """The item as the ``flows`` message carries it (see :mod:`capture.wire`)."""
        if self.op is None:
            return [self.seq, self.sessions, self.flow]
        return [self.seq, self.sessions, self.flow, self.op, self.ref]


class SpillFile:
    """An append-only file of items, read from the front."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.read_offset = 0
        self.items = 0
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a+b")
        self.size = self._file.seek(0, os.SEEK_END)
        if self.size:
            self._recover()

    def _recover(self) -> None:
        """Count what an earlier run left, and cut off a record torn by a crash."""
        end = 0
        for end, _ in self._records(0, self.size):
            self.items += 1
        if end < self.size:
            log.warn("spill file {path}: dropping {n} bytes of an unfinished record", path=self.path, n=self.size - end)
            self._file.truncate(end)
            self.size = end

    @property
    def live_bytes(self) -> int:
        return self.size - self.read_offset

    def append(self, items: list[Item]) -> None:
        data = b"".join(msgpack.packb(item.record(), use_bin_type=True) for item in items)
        self._file.write(data)
        self._file.flush()
        self.size += len(data)
        self.items += len(items)

    def read(self, max_items: int) -> list[Item]:
        """The next items, moving the read position past them."""
        found = []
        for offset, record in self._records(self.read_offset, self.size):
            if len(found) == max_items:
                break
            found.append(_item(record))
            self.read_offset = offset
        self.items -= len(found)
        self._reset_if_empty()
        return found

    def drop_oldest(self, free_bytes: int) -> int:
        """Skip the oldest items until ``free_bytes`` are freed; returns how many."""
        target = self.read_offset + free_bytes
        dropped = 0
        for offset, _ in self._records(self.read_offset, self.size):
            self.read_offset = offset
            dropped += 1
            if offset >= target:
                break
        self.items -= dropped
        self._reset_if_empty()
        return dropped

    def rewrite(self, front: list[Item], back: list[Item]) -> None:
        """Replace the file with front + what is left unread + back, in that order (at shutdown)."""
        temporary = self.path + ".new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for item in front:
                out.write(msgpack.packb(item.record(), use_bin_type=True))
            self._file.seek(self.read_offset)
            remaining = self.size - self.read_offset
            while remaining > 0:
                block = self._file.read(min(remaining, 1 << 20))
                if not block:
                    break
                out.write(block)
                remaining -= len(block)
            for item in back:
                out.write(msgpack.packb(item.record(), use_bin_type=True))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        self.items += len(front) + len(back)
        self._file.close()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a+b")
        self.size = self._file.seek(0, os.SEEK_END)
        self.read_offset = 0

    def close(self) -> None:
        self._file.close()

    def _records(self, start: int, end: int) -> Iterable[tuple[int, Any]]:
        """(offset after, record) for each well-formed record; a torn tail ends the file."""
        self._file.seek(start)
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
        position = start
        while position < end:
            block = self._file.read(min(1 << 20, end - position))
            if not block:
                break
            position += len(block)
            unpacker.feed(block)
            try:
                for record in unpacker:
                    yield start + unpacker.tell(), record
            except (ValueError, msgpack.UnpackException) as e:
                log.error("spill file {path} is damaged after byte {offset}: {error}; ignoring the rest",
                          path=self.path, offset=start + unpacker.tell(), error=e)
                self.size = start + unpacker.tell()
                return

    def _reset_if_empty(self) -> None:
        if self.read_offset >= self.size:
            self._file.truncate(0)
            self.size = self.read_offset = self.items = 0


def _item(record: Any) -> Item:
    if len(record) == 6:
        instance, seq, sessions, flow, op, ref = record
        return Item(str(instance), int(seq), list(sessions), flow, str(op), int(ref))
    instance, seq, sessions, flow = record
    if not isinstance(flow, bytes):  # an earlier release spilled the flow as a map: pack it as it is
        flow = msgpack.packb(flow, use_bin_type=True)
    return Item(str(instance), int(seq), list(sessions), flow)


class DeliveryQueue:
    """Ordered, bounded, spilling queue; see the module docstring for the order kept."""

    def __init__(self, instance: str, memory_limit: int, spill: SpillFile | None = None,
                 spill_limit: int = 0) -> None:
        self.instance = instance
        self.memory_limit = memory_limit
        self.spill = spill
        self.spill_limit = spill_limit
        self.dropped = 0
        self.shipped = 0
        self.memory_bytes = 0
        self.inflight_bytes = 0
        # Sent-but-unacknowledged flows stay in memory (and in the socket's buffers):
        # keep that part well inside the memory limit, so the rest can spill.
        self.window = max(64 * 1024, min(16 * 1024 * 1024, memory_limit // 2))
        self._next_seq = 1
        self._unacked: deque[Item] = deque()
        self._resend: deque[Item] = deque()
        self._unsent: deque[Item] = deque()

    @property
    def in_memory(self) -> int:
        return len(self._unacked) + len(self._resend) + len(self._unsent)

    @property
    def spilled(self) -> int:
        return self.spill.items if self.spill is not None else 0

    @property
    def pending(self) -> int:
        return self.in_memory + self.spilled

    def add(self, flow: tuple[Any, ...], sessions: list[int]) -> None:
        """Queue a finished flow: a ``Flow``, or its fields as a plain tuple (``pack_fields``)."""
        self._append(Item(self.instance, self._next_seq, sessions, pack_fields(flow)))

    def add_live(self, op: str, payload: bytes, sessions: list[int], ref: int = 0) -> int:
        """Queue an operation on a live flow (see ``LIVE_OPS``); returns its sequence number.

        The number an ``open`` gets is the ``ref`` of that flow's later items.
        """
        seq = self._next_seq
        self._append(Item(self.instance, seq, sessions, payload, op, ref))
        return seq

    def _append(self, item: Item) -> None:
        self._next_seq += 1
        self._unsent.append(item)
        self.memory_bytes += item.size
        if self.memory_bytes > self.memory_limit:
            self._relieve_memory()

    def has_work(self) -> bool:
        return bool(self._resend or self.spilled or self._unsent)

    def next_batch(self, max_items: int) -> list[Item]:
        """Items to send now, all of one instance, moved to unacked."""
        if self._resend:
            batch = _take(self._resend, max_items)
        elif self.spilled:
            batch = self.spill.read(max_items)
            for item in batch:
                self.memory_bytes += item.size
        else:
            batch = _take(self._unsent, max_items)
        if batch:
            first = batch[0].instance
            keep = [item for item in batch if item.instance == first]
            if len(keep) != len(batch):  # an older instance's spill ends here: the rest go next time
                self._resend.extendleft(reversed(batch[len(keep):]))
                batch = keep
        self._unacked.extend(batch)
        self.inflight_bytes += sum(item.size for item in batch)
        return batch

    def acked(self, instance: str, seq: int) -> None:
        while self._unacked and self._unacked[0].instance == instance and self._unacked[0].seq <= seq:
            item = self._unacked.popleft()
            self.memory_bytes -= item.size
            self.inflight_bytes -= item.size
            self.shipped += 1

    def disconnected(self) -> None:
        """Everything sent but not acknowledged goes out again first."""
        self._resend.extendleft(reversed(self._unacked))
        self._unacked.clear()
        self.inflight_bytes = 0

    def discard_stored(self, last_seq: int) -> None:
        """Forget resends the store already has (stored before a crash, acked never)."""
        while self._resend and self._resend[0].instance == self.instance and self._resend[0].seq <= last_seq:
            self.memory_bytes -= self._resend.popleft().size
            self.shipped += 1

    def persist(self) -> None:
        """At shutdown: everything not acknowledged goes to the spill file, in order."""
        if self.spill is None:
            return
        front = list(self._unacked) + list(self._resend)
        back = list(self._unsent)
        if front or back:
            self.spill.rewrite(front, back)
        self._unacked.clear()
        self._resend.clear()
        self._unsent.clear()
        self.memory_bytes = self.inflight_bytes = 0
        self.spill.close()

    def _relieve_memory(self) -> None:
        """Move the oldest unsent flows to disk, or drop them when there is no room."""
        moving: list[Item] = []
        freed = 0
        while self._unsent and self.memory_bytes - freed > self.memory_limit:
            item = self._unsent.popleft()
            moving.append(item)
            freed += item.size
        self.memory_bytes -= freed
        if self.spill is None or self.spill_limit <= 0:
            self.dropped += len(moving)
            return
        self.spill.append(moving)
        excess = self.spill.live_bytes - self.spill_limit
        if excess > 0:
            self.dropped += self.spill.drop_oldest(excess)


def _take(queue: deque[Item], count: int) -> list[Item]:
    return [queue.popleft() for _ in range(min(count, len(queue)))]
