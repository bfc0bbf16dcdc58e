"""Two real appliances (twistd, session manager, proxy) sharing one real PostgreSQL.

Each appliance has its own directory, socket, CA copy, spill file and
identity; both name the same database.  Traffic goes through both proxies
to the local origin; sessions are made and changed through either API.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO, Appliance, child_env, wait_for
from pgcluster import free_port


@pytest.fixture
def pair(postgres_cluster, tmp_path: Path) -> Iterator[tuple[Appliance, Appliance, str]]:
    """Appliances A and B on one fresh database, sharing A's CA (as deploy/README.md says)."""
    url = postgres_cluster.create_database()
    (tmp_path / "a").mkdir()
    a = Appliance(tmp_path / "a", store={"database": url})
    a.start()
    (tmp_path / "b" / "var").mkdir(parents=True)
    shutil.copytree(a.var / "ca", tmp_path / "b" / "var" / "ca")
    b = Appliance(tmp_path / "b", store={"database": url})
    b.start()
    try:
        yield a, b, url
    finally:
        for appliance in (a, b):
            try:
                appliance.stop(timeout=20)
            except subprocess.TimeoutExpired:
                appliance.kill()


def get(appliance: Appliance, origin: Any, path: str) -> int:
    with appliance.client() as client:
        return client.get(f"{origin.url}{path}", timeout=10).status_code


def paths(appliance: Appliance, session_id: int) -> list[str]:
    return [flow["path"] for flow in appliance.flows(session_id)["flows"]]


def settle(*appliances: Appliance, timeout: float = 30.0) -> None:
    """Every appliance's proxy has shipped all it holds and had it acknowledged."""
    wait_for(lambda: all(a.status().get("pending_flows") == 0 for a in appliances), timeout, interval=0.1)


def test_sessions_and_flows_are_shared(pair, origin):
    """A session made on A shows on B; traffic through both proxies lands in it once, with
    the same ids on both APIs, each flow naming the appliance that captured it (~via too)."""
    a, b, _ = pair
    session = a.new_session(name="shared")
    response = b.api("GET", f"/api/sessions/{session['id']}")
    assert response.status_code == 200 and response.json()["name"] == "shared"
    assert [s["id"] for s in b.api("GET", "/api/sessions").json()["sessions"]] == [session["id"]]
    # B learns of the session through NOTIFY; its proxy captures once its rules have it.
    time.sleep(1.5)
    for i in range(5):
        assert get(a, origin, f"/a/{i}") == 200
        assert get(b, origin, f"/b/{i}") == 200
    flows_a = a.wait_for_flows(session["id"], 10)
    flows_b = b.wait_for_flows(session["id"], 10)
    assert flows_a == flows_b
    assert sorted(f["path"] for f in flows_a) == sorted([f"/a/{i}" for i in range(5)] + [f"/b/{i}" for i in range(5)])
    assert len({f["id"] for f in flows_a}) == 10
    name_a, name_b = a.status()["appliance"], b.status()["appliance"]
    assert name_a != name_b
    assert {f["appliance"] for f in flows_a if f["path"].startswith("/a/")} == {name_a}
    assert {f["appliance"] for f in flows_a if f["path"].startswith("/b/")} == {name_b}
    via_b = b.flows(session["id"], filter=f"~via {name_b}")["flows"]
    assert sorted(f["path"] for f in via_b) == [f"/b/{i}" for i in range(5)]
    detail = a.api("GET", f"/api/flows/{via_b[0]['id']}").json()
    assert detail["appliance"] == name_b and detail["session_ids"] == [session["id"]]
    assert a.status()["database"]["reachable"] is True


def test_pause_through_one_stops_recording_on_both(pair, origin):
    """Pausing through B reaches A's proxy within about a second: nothing more is recorded on either."""
    a, b, _ = pair
    session = a.new_session(name="p")
    time.sleep(1.5)
    assert get(a, origin, "/before") == 200
    a.wait_for_flows(session["id"], 1)
    assert b.api("POST", f"/api/sessions/{session['id']}/pause").json()["state"] == "paused"
    assert a.api("GET", f"/api/sessions/{session['id']}").json()["state"] == "paused"
    time.sleep(1.5)
    for i in range(3):
        assert get(a, origin, f"/paused-a/{i}") == 200
        assert get(b, origin, f"/paused-b/{i}") == 200
    settle(a, b)
    assert paths(a, session["id"]) == ["/before"]
    b.api("POST", f"/api/sessions/{session['id']}/resume")
    time.sleep(1.5)
    assert get(a, origin, "/after") == 200
    assert a.wait_for_flows(session["id"], 2)[-1]["path"] == "/after"


def traffic(appliance: Appliance, origin: Any, prefix: str, count: int, done: list[str]) -> None:
    """``count`` requests, one after another; the paths answered go into ``done``."""
    with appliance.client() as client:
        for i in range(count):
            path = f"/{prefix}/{i}"
            if client.get(f"{origin.url}{path}", timeout=10).status_code == 200:
                done.append(path)


def test_kill_9_of_one_session_manager_loses_and_doubles_nothing(pair, origin):
    """kill -9 of A's session manager mid-traffic: every completed request is stored exactly once."""
    a, b, _ = pair
    session = b.new_session(name="crash")
    time.sleep(1.5)
    done_a: list[str] = []
    done_b: list[str] = []
    threads = [threading.Thread(target=traffic, args=(a, origin, "a", 150, done_a)),
               threading.Thread(target=traffic, args=(b, origin, "b", 150, done_b))]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(done_a) >= 40, 30)
    os.kill(a.sessiond_pid(), signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert len(done_a) == 150 and len(done_b) == 150  # the proxy never waited on the store
    wait_for(lambda: a.status().get("session_manager", {}).get("connected"), 30)
    settle(a, b, timeout=60)
    stored = paths(b, session["id"])
    assert sorted(stored) == sorted(done_a + done_b)
    assert len(set(f["id"] for f in b.flows(session["id"])["flows"])) == 300


def test_database_stop_and_start_mid_traffic(pair, origin, postgres_cluster):
    """PostgreSQL stopped mid-traffic: requests keep flowing, status says the database is unreachable
    and why, an appliance restarted during the outage starts and captures, and once the database is
    back every flow is stored exactly once."""
    a, b, _ = pair
    session = a.new_session(name="outage")
    time.sleep(1.5)
    done_a: list[str] = []
    done_b: list[str] = []
    threads = [threading.Thread(target=traffic, args=(a, origin, "a", 120, done_a)),
               threading.Thread(target=traffic, args=(b, origin, "b", 120, done_b))]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(done_a) >= 30, 30)
    postgres_cluster.stop()
    try:
        for thread in threads:
            thread.join(timeout=120)
        assert len(done_a) == 120 and len(done_b) == 120
        database = wait_for(lambda: (d := a.status().get("database")) and d.get("reachable") is False and d, 20)
        assert database["backend"] == "postgresql" and database["error"]
        assert a.status()["pending_flows"] > 0 or b.status()["pending_flows"] > 0
        shown = subprocess.run(
            [sys.executable, "-m", "capture.cli", "--admin", b.admin_url, "--token-file", str(b.var / "admin.token"), "status"],
            capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=30,
        )
        line = [text for text in shown.stdout.splitlines() if text.startswith("database")]
        wait_for(lambda: b.status().get("database", {}).get("reachable") is False, 20)
        assert line and "UNREACHABLE" in line[0], shown.stdout + shown.stderr
        # A restarts while the database is down: it starts, and captures by the rules it kept.
        a.stop()
        a.start()
        traffic(a, origin, "restarted", 20, done_a)
        assert a.status()["database"]["reachable"] is False
    finally:
        postgres_cluster.start()
    settle(a, b, timeout=90)
    stored = paths(a, session["id"])
    assert sorted(set(done_a + done_b) - set(stored)) == []
    assert len(stored) == len(done_a) + len(done_b) == 260
    assert sorted(stored) == sorted(done_a + done_b)
    assert wait_for(lambda: a.status()["database"]["reachable"], 20)
    # B's log: the database reachable at start, and reachable "again" only after the outage.
    def reachable_lines() -> list[str]:
        return [line.split("] database ", 1)[1] for line in b.log_text().splitlines()
                if "[sessiond] database reachable" in line]

    said = wait_for(lambda: len(reachable_lines()) >= 2 and reachable_lines(), 20)
    assert said[0] == "reachable" and set(said[1:]) == {"reachable again"}, said


def test_both_restarted_keep_everything(pair, origin):
    """Both appliances stopped and started again: sessions, flows and their ids are all still there."""
    a, b, _ = pair
    session = a.new_session(name="keep")
    time.sleep(1.5)
    for i in range(3):
        get(a, origin, f"/a/{i}")
        get(b, origin, f"/b/{i}")
    before = a.wait_for_flows(session["id"], 6)
    for appliance in (a, b):
        appliance.stop()
    for appliance in (a, b):
        appliance.start()
    assert a.flows(session["id"])["flows"] == before == b.flows(session["id"])["flows"]
    assert b.api("GET", f"/api/sessions/{session['id']}").json()["flow_count"] == 6


def test_malformed_url_stops_start_up_with_one_line(tmp_path):
    """A database that is neither a path nor a valid PostgreSQL URL stops twistd with one line."""
    config = tmp_path / "capture.ini"
    config.write_text("[store]\ndatabase = postgresql://capture@db.lab:99999/capture\n")
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "capture", "--config", str(config)],
        capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=60,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len([line for line in output if "[store] database" in line]) == 1
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_database_still_lets_traffic_flow(tmp_path, origin, postgres_cluster):
    """With no server at the database's address the appliance starts, proxies at once, says
    why the database is unreachable, and answers session calls with 503."""
    port = free_port()
    appliance = Appliance(tmp_path, store={"database": f"postgresql://postgres@127.0.0.1:{port}/capture"})
    appliance.start()
    try:
        for i in range(5):
            assert get(appliance, origin, f"/x/{i}") == 200
        database = wait_for(lambda: appliance.status().get("database"), 20)
        assert database["reachable"] is False
        assert "refused" in database["error"] or "connect" in database["error"]
        response = appliance.api("POST", "/api/sessions", json={"name": "n"})
        assert response.status_code == 503 and "database unreachable" in response.json()["error"]
    finally:
        appliance.stop()


def test_silent_database_host_at_start_up(tmp_path, origin, postgres_cluster):
    """A database host that accepts TCP and never answers (connect_timeout=60 in the URL): the session
    manager listens at once, traffic flows and waits for the database, status says why, calls answer 503."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # never accepted
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/capture?connect_timeout=60"
        appliance = Appliance(tmp_path, store={"database": url})
        appliance.start(timeout=20)  # the session manager is linked long before a minute is up
        try:
            for i in range(3):
                assert get(appliance, origin, f"/silent/{i}") == 200
            database = wait_for(lambda: appliance.status().get("database"), 20)
            assert database["reachable"] is False and database["error"]
            response = appliance.api("POST", "/api/sessions", json={"name": "n"})
            assert response.status_code == 503 and "database unreachable" in response.json()["error"]
            assert "no answer" in appliance.status()["database"]["error"]
        finally:
            appliance.stop()


def test_prune_older_than(pair):
    """capturectl prune --older-than removes idle sessions on the shared database, seen from both."""
    a, b, _ = pair
    session = a.new_session(name="old")
    time.sleep(1.2)
    result = subprocess.run(
        [sys.executable, "-m", "capture.cli", "--admin", b.admin_url, "--token-file", str(b.var / "admin.token"),
         "prune", "--older-than", "1s"],
        capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert str(session["id"]) in result.stdout
    assert a.api("GET", f"/api/sessions/{session['id']}").status_code == 404


def test_proxy_killed_on_one_closes_only_its_own_sockets(pair):
    """A socket through each appliance; kill -9 of A's proxy, then A starts again: A's flow is closed as the
    proxy stopped, B's stays open and recording."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from conftest import pid_alive
    from test_e2e_websocket import PROXY_STOPPED, WsOrigin, all_messages, kill_proxy, message_count, wait_for_close

    a, b, _ = pair
    session = a.new_session(name="sockets")
    time.sleep(1.5)  # B's proxy learns of the session
    ws_origin = WsOrigin()

    async def talk():
        url = f"ws://127.0.0.1:{ws_origin.port}"
        async with connect(f"{url}/a", proxy=a.proxy_url) as on_a, connect(f"{url}/b", proxy=b.proxy_url) as on_b:
            for ws in (on_a, on_b):
                await ws.send("hi")
                assert await ws.recv() == "hi"
            flows = await asyncio.to_thread(a.wait_for_flows, session["id"], 2)
            ids = {f["path"]: f["id"] for f in flows}
            for flow_id in ids.values():
                await asyncio.to_thread(wait_for, message_count(a, flow_id, 2), 15)
            sessiond = kill_proxy(a)
            with pytest.raises(ConnectionClosed):
                await on_a.recv()
            await asyncio.to_thread(wait_for, lambda: not pid_alive(sessiond), 15)
            await asyncio.to_thread(a.start)
            closed = await asyncio.to_thread(wait_for_close, a, ids["/a"])
            await on_b.send("still here")
            assert await on_b.recv() == "still here"
            live = await asyncio.to_thread(wait_for, message_count(b, ids["/b"], 4), 15)
            return ids, closed, live
    try:
        ids, closed, live = asyncio.run(asyncio.wait_for(talk(), 90))
    finally:
        ws_origin.stop()
    assert closed["websocket"]["close"] == PROXY_STOPPED and all_messages(a, ids["/a"]) == ["hi", "hi"]
    assert live["websocket"]["open"] is True and live["appliance"] == b.status()["appliance"]
    assert wait_for_close(b, ids["/b"])["websocket"]["close"]["closed_by"] == "client"
