"""The delivery queue: order kept across memory, resend and the spill file."""

from __future__ import annotations

import os

import msgpack

from capture.delivery import DeliveryQueue, SpillFile
from capture.flow import Flow, Message


def flow(n: int, body: int = 0) -> Flow:
    return Flow(client="127.0.0.1", client_port=1, scheme="http", host="h", port=80, method="GET",
                path=f"/{n}", request=Message(body=b"x" * body, size=body), start=float(n))


SIZE = 64 + len(flow(0).pack())  # what one small flow counts against the limits


def drain(queue: DeliveryQueue, ack: bool = True) -> list[tuple[str, int]]:
    """Send everything in batches of 3, acknowledging each batch; (instance, seq) in sending order."""
    sent = []
    for _ in range(1000):
        batch = queue.next_batch(3)
        if not batch:
            break
        assert len({item.instance for item in batch}) == 1
        sent.extend((item.instance, item.seq) for item in batch)
        if ack:
            queue.acked(batch[-1].instance, batch[-1].seq)
    return sent


def test_memory_only_queue_drops_oldest_past_the_limit():
    """Without a spill file, flows past memory_limit are dropped oldest first and counted."""
    queue = DeliveryQueue("a", memory_limit=3 * SIZE)
    for n in range(5):
        queue.add(flow(n), [1])
    assert queue.dropped == 2
    assert [seq for _, seq in drain(queue)] == [3, 4, 5]


def test_spill_keeps_every_flow_in_order(tmp_path):
    """Past memory_limit flows go to disk; sending order stays by sequence number."""
    spill = SpillFile(str(tmp_path / "spill"))
    queue = DeliveryQueue("a", memory_limit=2 * SIZE, spill=spill, spill_limit=10**9)
    for n in range(10):
        queue.add(flow(n), [1])
    assert queue.spilled == 8 and queue.in_memory == 2 and queue.pending == 10
    assert [seq for _, seq in drain(queue)] == list(range(1, 11))
    assert queue.pending == 0 and queue.shipped == 10
    assert os.path.getsize(tmp_path / "spill") == 0  # emptied once everything was read


def test_resend_goes_before_spilled_and_new_flows(tmp_path):
    """After a disconnect, unacknowledged flows go first, then the spill, then the newest."""
    queue = DeliveryQueue("a", memory_limit=3 * SIZE, spill=SpillFile(str(tmp_path / "s")), spill_limit=10**9)
    for n in range(3):
        queue.add(flow(n), [1])
    first = queue.next_batch(2)
    assert [item.seq for item in first] == [1, 2]
    for n in range(3, 9):  # pushes 3..6 to disk while 1 and 2 are in flight
        queue.add(flow(n), [1])
    queue.disconnected()
    assert [seq for _, seq in drain(queue)] == list(range(1, 10))


def test_spill_limit_drops_the_oldest_spilled(tmp_path):
    """When the spill file passes spill_limit, its oldest flows are dropped and counted."""
    queue = DeliveryQueue("a", memory_limit=SIZE, spill=SpillFile(str(tmp_path / "s")), spill_limit=3000)
    for n in range(20):
        queue.add(flow(n, body=500), [1])
    assert queue.dropped > 0
    sent = [seq for _, seq in drain(queue)]
    assert sent == sorted(sent) and sent[-1] == 20
    assert len(sent) + queue.dropped == 20


def test_persist_then_restart_ships_the_old_instance_first(tmp_path):
    """At shutdown what is left goes to the spill file; a new instance ships it first, in order."""
    path = str(tmp_path / "s")
    old = DeliveryQueue("old", memory_limit=2 * SIZE, spill=SpillFile(path), spill_limit=10**9)
    for n in range(6):
        old.add(flow(n), [1])
    in_flight = old.next_batch(2)
    assert [item.seq for item in in_flight] == [1, 2]
    old.persist()

    new = DeliveryQueue("new", memory_limit=10**9, spill=SpillFile(path), spill_limit=10**9)
    assert new.spilled == 6
    new.add(flow(99), [1])
    sent = drain(new)
    assert sent == [("old", n) for n in range(1, 7)] + [("new", 1)]
    replayed = new.spill  # emptied
    assert replayed.items == 0


def test_discard_stored_skips_resends_the_store_has(tmp_path):
    """A welcome's last_seq drops resends the store already holds."""
    queue = DeliveryQueue("a", memory_limit=10**9)
    for n in range(4):
        queue.add(flow(n), [1])
    queue.next_batch(3)
    queue.disconnected()
    queue.discard_stored(2)
    assert [seq for _, seq in drain(queue)] == [3, 4]
    assert queue.shipped == 4


def test_torn_spill_tail_is_ignored(tmp_path):
    """A spill file cut off mid-record (a crash while writing) keeps its whole records."""
    path = str(tmp_path / "s")
    queue = DeliveryQueue("a", memory_limit=0, spill=SpillFile(path), spill_limit=10**9)
    for n in range(3):
        queue.add(flow(n), [1])
    queue.spill.close()
    with open(path, "ab") as f:
        f.write(b"\x93\xa1a")  # the start of a record, never finished
    reopened = DeliveryQueue("b", memory_limit=10**9, spill=SpillFile(path), spill_limit=10**9)
    assert [seq for _, seq in drain(reopened)] == [1, 2, 3]
    assert os.path.getsize(path) == 0  # the torn bytes went with the rest once shipped


def test_a_spill_file_from_an_earlier_release_is_shipped_readable(tmp_path):
    """Spilled records whose flow is the version 1 map (releases before the packed form) still ship and read back."""
    old = flow(7, body=3)
    v1 = {
        "v": 1, "kind": old.kind, "client": old.client, "client_port": old.client_port, "scheme": old.scheme,
        "host": old.host, "port": old.port, "method": old.method, "path": old.path,
        "http_version": old.http_version, "status": 0, "reason": "", "response": None,
        "request": {"headers": [], "body": old.request.body, "size": old.request.size, "truncated": False},
        "start": old.start, "request_done": None, "response_start": None, "end": None, "error": "",
        "server_ip": "",
    }
    path = tmp_path / "spill"
    path.write_bytes(msgpack.packb(["old-instance", 5, [1], v1], use_bin_type=True))
    queue = DeliveryQueue("new", memory_limit=10**9, spill=SpillFile(str(path)), spill_limit=10**9)
    (item,) = queue.next_batch(10)
    assert (item.instance, item.seq, item.sessions) == ("old-instance", 5, [1])
    assert isinstance(item.flow, bytes)
    assert Flow.unpack(item.flow) == old


def test_live_items_keep_their_operation_through_the_spill(tmp_path):
    """Live-flow items (open, messages, close naming the open) spill and come back with op and ref intact."""
    queue = DeliveryQueue("a", memory_limit=1, spill=SpillFile(str(tmp_path / "s")), spill_limit=10**9)
    ref = queue.add_live("open", flow(1).pack(), [1])
    queue.add_live("messages", b"batch", [], ref)
    queue.add(flow(2), [1])
    assert queue.spilled == 3
    batch = queue.next_batch(10)
    assert [item.wire() for item in batch] == [[1, [1], flow(1).pack(), "open", 0], [2, [], b"batch", "messages", 1],
                                               [3, [1], flow(2).pack()]]
