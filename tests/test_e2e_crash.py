"""Exactly once across crashes: kill the session manager, stop the appliance, freeze the store."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import requests

from conftest import wait_for

CLEAN_EXIT = (0, -signal.SIGTERM)


class NumberedStream:
    """A client thread sending GET /bytes?n=1&i=N for N = 0, 1, ... and noting which were answered."""

    def __init__(self, appliance, origin, count: int, deadline: float = 120.0) -> None:
        self.appliance = appliance
        self.origin = origin
        self.count = count
        self.deadline = time.monotonic() + deadline
        self.answered: set[int] = set()
        self.attempted: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> NumberedStream:
        self.thread.start()
        return self

    def _run(self) -> None:
        client = self.appliance.client()
        for i in range(self.count):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                break
            self.attempted.add(i)
            try:
                if client.get(f"{self.origin.url}/bytes?n=1&i={i}", timeout=10).status_code == 200:
                    self.answered.add(i)
            except requests.RequestException:
                client.close()
                client = self.appliance.client()
                time.sleep(0.05)
        client.close()

    def join(self) -> None:
        self.thread.join(timeout=150)
        assert not self.thread.is_alive()


def stored_numbers(appliance, session_id: int) -> Counter:
    numbers: Counter = Counter()
    offset = 0
    while True:
        page = appliance.api("GET", f"/api/sessions/{session_id}/flows",
                             params={"limit": 1000, "offset": offset}).json()
        for flow in page["flows"]:
            numbers[int(flow["path"].rsplit("i=", 1)[1])] += 1
        offset += len(page["flows"])
        if offset >= page["total"] or not page["flows"]:
            return numbers


def _new_pid(appliance, seen: set[int]) -> int | None:
    manager = appliance.status().get("session_manager", {})
    pid = manager.get("pid")
    return pid if manager.get("connected") and pid and pid not in seen else None


def settled(appliance) -> bool:
    status = appliance.status()
    return bool(status.get("session_manager", {}).get("connected")) and status.get("pending_flows") == 0


def test_session_manager_killed_five_times_loses_and_duplicates_nothing(appliance, origin):
    """SIGKILL of the session manager at random moments during a stream: every answered request stored once."""
    session = appliance.new_session()
    stream = NumberedStream(appliance, origin, count=100000, deadline=60).start()
    rng = random.Random(7)
    pids: set[int] = set()
    for _ in range(5):
        time.sleep(rng.uniform(0.3, 1.2))
        pid = wait_for(lambda: _new_pid(appliance, pids), 30)  # the restarted one, connected
        pids.add(pid)
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: appliance.status().get("session_manager", {}).get("connected"), 30)
    stream.stop.set()
    stream.join()
    wait_for(lambda: settled(appliance), 60)
    stored = stored_numbers(appliance, session["id"])
    assert len(pids) == 5
    assert appliance.status()["session_manager"]["restarts"] == 5
    assert [n for n, times in stored.items() if times > 1] == []
    assert stream.answered - set(stored) == set()
    assert set(stored) <= stream.attempted
    assert len(stream.answered) > 100


def test_appliance_stopped_mid_traffic_and_started_keeps_every_flow(make_appliance, origin):
    """SIGTERM of the whole appliance in the middle of traffic, then a start: answered requests stored once."""
    appliance = make_appliance().start()
    session = appliance.new_session()
    stream = NumberedStream(appliance, origin, count=100000, deadline=60).start()
    wait_for(lambda: len(stream.answered) > 300, 30)
    assert appliance.stop() in CLEAN_EXIT
    stream.stop.set()
    stream.join()
    appliance.start()
    wait_for(lambda: settled(appliance), 60)
    stored = stored_numbers(appliance, session["id"])
    assert [n for n, times in stored.items() if times > 1] == []
    assert stream.answered - set(stored) == set()
    assert set(stored) <= stream.attempted


def test_frozen_session_manager_spills_to_disk_and_catches_up(make_appliance, origin):
    """With the store frozen past the memory limit, flows spill to disk, traffic flows, and all land once."""
    appliance = make_appliance(capture={"buffer_memory": 32768}).start()
    session = appliance.new_session()
    pid = appliance.sessiond_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        stream = NumberedStream(appliance, origin, count=400, deadline=60).start()
        stream.join()
        assert len(stream.answered) == 400  # traffic never waited for the store
        status = appliance.status()
        assert status["spilled_flows"] > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: settled(appliance), 60)
    stored = stored_numbers(appliance, session["id"])
    assert sorted(stored) == list(range(400))
    assert set(stored.values()) == {1}
    assert appliance.status()["spilled_flows"] == 0


def test_spilled_flows_survive_a_restart_of_the_appliance(make_appliance, origin):
    """Flows spilled while the store is frozen are shipped by the next start of the appliance."""
    appliance = make_appliance(capture={"buffer_memory": 16384}).start()
    session = appliance.new_session()
    pid = appliance.sessiond_pid()
    os.kill(pid, signal.SIGSTOP)
    # The first 64 KiB of flows still go out into the frozen store's socket (the in-flight
    # window), and spilled flows are read back to fill it: only a stream well past that
    # window and the memory limit is sure to leave flows in the spill file when we look.
    count = 400
    try:
        stream = NumberedStream(appliance, origin, count=count, deadline=60).start()
        stream.join()
        assert appliance.status()["spilled_flows"] > 0
        twistd = appliance.process
        twistd.send_signal(signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # let the session manager see its SIGTERM too
        twistd.wait(timeout=60)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    appliance.start()
    wait_for(lambda: settled(appliance), 60)
    stored = stored_numbers(appliance, session["id"])
    assert sorted(stored) == list(range(count))
    assert set(stored.values()) == {1}
