"""Several proxy processes sharing the listener, all shipping to the one session manager."""

from __future__ import annotations

import os
import signal

from conftest import pid_alive, wait_for
from origin import pattern


def test_two_workers_share_the_port_and_every_flow_is_stored(make_appliance, origin):
    """With workers = 2 both processes serve connections; every request is stored once."""
    appliance = make_appliance(proxy={"workers": 2}).start()
    wait_for(lambda: appliance.status()["workers"]["running"] == 2, 20)
    session = appliance.new_session()
    for i in range(60):  # a new connection each, so the kernel spreads them
        with appliance.client() as client:
            assert client.get(f"{origin.url}/bytes?n={i}", timeout=10).content == pattern(i)
    flows = appliance.wait_for_flows(session["id"], 60)
    assert sorted(f["path"] for f in flows) == sorted(f"/bytes?n={i}" for i in range(60))

    def both_shipped():
        processes = appliance.status()["processes"]
        return len(processes) == 2 and all(p["shipped"] > 0 for p in processes)

    wait_for(both_shipped, 10)


def test_a_killed_worker_is_restarted_and_stop_ends_them_all(make_appliance, origin):
    """kill -9 of a worker: it comes back; SIGTERM of twistd ends every process."""
    appliance = make_appliance(proxy={"workers": 2}).start()
    wait_for(lambda: appliance.status()["workers"]["running"] == 2, 20)
    worker = next(p["pid"] for p in appliance.status()["processes"] if p["worker"] == 1)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: appliance.status()["workers"]["restarts"] == 1, 20)
    wait_for(lambda: appliance.status()["workers"]["running"] == 2, 20)
    new_worker = next(p["pid"] for p in appliance.status()["processes"] if p["worker"] == 1)
    assert new_worker != worker
    with appliance.client() as client:
        assert client.get(f"{origin.url}/bytes?n=5", timeout=10).content == pattern(5)
    appliance.stop()
    wait_for(lambda: not pid_alive(new_worker), 15)
