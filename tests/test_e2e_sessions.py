"""End to end: capture sessions, the admin API, restarts and the supervised child."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import REPO, child_env, pid_alive, wait_for


# twistd re-raises the signal that stopped it, so a clean SIGTERM exit reads as -15.
CLEAN_EXIT = (0, -signal.SIGTERM)


def fetch(appliance, origin, path: str) -> None:
    with appliance.client() as client:
        response = client.get(f"{origin.url}{path}", timeout=30)
    assert response.status_code == 200


def test_first_start_creates_state_privately(appliance):
    """var/, the token (0600) and the socket (0600 in a 0700 directory) are created on first start."""
    token = appliance.var / "admin.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(appliance.token) >= 32
    socket_path = appliance.var / "run" / "sessiond.sock"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert str(token) in appliance.log_text()


def test_every_api_route_needs_the_token(appliance):
    """No token, or a wrong one, is a 401 with a JSON error."""
    import requests

    for token in (None, "wrong"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = requests.get(f"{appliance.admin_url}/api/sessions", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json() == {"error": "missing or wrong bearer token"}


def test_session_lifecycle_follows_the_state_rules(appliance, origin):
    """Pause records nothing, resume records again, clear empties, stop is final, delete removes."""
    session = appliance.new_session(name="phone")
    sid = session["id"]
    assert session["state"] == "capturing"

    fetch(appliance, origin, "/bytes?n=1")
    appliance.wait_for_flows(sid, 1)

    assert appliance.api("POST", f"/api/sessions/{sid}/pause").json()["state"] == "paused"
    assert appliance.api("POST", f"/api/sessions/{sid}/pause").status_code == 409
    fetch(appliance, origin, "/bytes?n=2")  # traffic flows while paused, unrecorded

    assert appliance.api("POST", f"/api/sessions/{sid}/resume").json()["state"] == "capturing"
    fetch(appliance, origin, "/bytes?n=3")
    flows = appliance.wait_for_flows(sid, 2)
    assert [f["path"] for f in flows] == ["/bytes?n=1", "/bytes?n=3"]

    cleared = appliance.api("POST", f"/api/sessions/{sid}/clear").json()
    assert cleared["state"] == "capturing" and cleared["flow_count"] == 0
    assert appliance.flows(sid)["total"] == 0
    fetch(appliance, origin, "/bytes?n=4")
    assert [f["path"] for f in appliance.wait_for_flows(sid, 1)] == ["/bytes?n=4"]

    stopped = appliance.api("POST", f"/api/sessions/{sid}/stop").json()
    assert stopped["state"] == "stopped" and stopped["stopped"]
    for action in ("pause", "resume", "stop", "clear"):
        response = appliance.api("POST", f"/api/sessions/{sid}/{action}")
        assert response.status_code == 409, action
        assert "error" in response.json()
    fetch(appliance, origin, "/bytes?n=5")
    assert appliance.flows(sid)["total"] == 1  # stopped sessions stay queryable

    assert appliance.api("DELETE", f"/api/sessions/{sid}").status_code == 204
    assert appliance.api("GET", f"/api/sessions/{sid}").status_code == 404


def test_bad_api_input_gets_clear_json_errors(appliance):
    """Bad JSON, unknown fields, bad clients and unknown ids each get a JSON error and status."""
    assert appliance.api("POST", "/api/sessions", data="{nope").status_code == 400
    response = appliance.api("POST", "/api/sessions", json={"name": "x", "colour": "red"})
    assert response.status_code == 400 and "colour" in response.json()["error"]
    response = appliance.api("POST", "/api/sessions", json={"name": "x", "clients": ["not-an-ip"]})
    assert response.status_code == 400 and "error" in response.json()
    assert appliance.api("GET", "/api/sessions/999").status_code == 404
    assert appliance.api("GET", "/api/flows/999").status_code == 404
    assert appliance.api("GET", "/api/sessions/1/flows", params={"limit": "x"}).status_code == 400
    assert appliance.api("GET", "/api/nowhere").status_code == 404
    assert appliance.api("PUT", "/api/sessions").status_code == 405


def test_sessions_capture_only_their_clients(appliance, origin):
    """A session for another client address records nothing from this one."""
    mine = appliance.new_session(name="mine", clients=["127.0.0.1"])
    other = appliance.new_session(name="other", clients=["10.1.2.3/32"])
    fetch(appliance, origin, "/bytes?n=9")
    assert len(appliance.wait_for_flows(mine["id"], 1)) == 1
    assert appliance.flows(other["id"])["total"] == 0


def test_sessions_and_flows_survive_a_restart(make_appliance, origin):
    """Stop and start the appliance: sessions and their flows are still there."""
    appliance = make_appliance().start()
    session = appliance.new_session(name="persist")
    fetch(appliance, origin, "/bytes?n=11")
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert appliance.stop() in CLEAN_EXIT

    appliance.start()
    assert appliance.api("GET", f"/api/sessions/{session['id']}").json()["name"] == "persist"
    assert appliance.api("GET", f"/api/flows/{flow['id']}").json()["path"] == "/bytes?n=11"
    fetch(appliance, origin, "/bytes?n=12")  # and it still captures after the restart
    assert [f["path"] for f in appliance.wait_for_flows(session["id"], 2)] == ["/bytes?n=11", "/bytes?n=12"]


def test_killed_session_manager_is_restarted_and_no_flow_is_lost(appliance, origin):
    """kill -9 of the session manager: traffic keeps flowing, it comes back, every flow lands once."""
    session = appliance.new_session()
    first_pid = appliance.sessiond_pid()
    os.kill(first_pid, signal.SIGKILL)
    for i in range(30):  # sent while the session manager is down or restarting
        fetch(appliance, origin, f"/bytes?n={i}")
    wait_for(lambda: appliance.status().get("session_manager", {}).get("connected"), 30)
    assert appliance.sessiond_pid() != first_pid
    assert appliance.status()["session_manager"]["restarts"] == 1
    flows = appliance.wait_for_flows(session["id"], 30)
    assert sorted(f["path"] for f in flows) == sorted(f"/bytes?n={i}" for i in range(30))
    wait_for(lambda: appliance.status()["pending_flows"] == 0)


def test_stopping_twistd_stops_the_child(appliance):
    """SIGTERM to twistd ends the session manager too: no orphan is left."""
    child = appliance.sessiond_pid()
    assert appliance.stop() in CLEAN_EXIT
    wait_for(lambda: not pid_alive(child), 10)


def test_killing_twistd_leaves_no_orphan(appliance):
    """Even kill -9 of twistd ends the session manager, which notices its parent is gone."""
    child = appliance.sessiond_pid()
    appliance.kill()
    wait_for(lambda: not pid_alive(child), 15)


@pytest.mark.parametrize(
    "ini, expected",
    [
        ("[proxy]\nlisten = tcp:notaport\n", "[proxy] listen = 'tcp:notaport'"),
        ("[proxy]\nallow = 10.0.0.1/8\n", "[proxy] allow"),
        ("[proxy]\nmax_capture_body = lots\n", "[proxy] max_capture_body = 'lots'"),
        ("[nonsense]\n", "unknown section [nonsense]"),
        ("[admin]\nlissten = tcp:1\n", "[admin] unknown key 'lissten'"),
    ],
)
def test_bad_config_stops_start_up_with_one_line(tmp_path, ini, expected):
    """A bad config file ends twistd with one line naming section, key and value: no traceback."""
    config = tmp_path / "bad.ini"
    config.write_text(ini)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "capture", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env(),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_config_file_is_one_line(tmp_path):
    """A config path that does not exist is named in one line."""
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "capture", "--config", str(tmp_path / "missing.ini")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env(),
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing.ini" in result.stderr


def test_port_in_use_is_one_line(tmp_path, appliance):
    """A listener that cannot bind stops start-up with one line naming it."""
    config = tmp_path / "clash.ini"
    config.write_text(
        f"[proxy]\nlisten = tcp:{appliance.proxy_port}:interface=127.0.0.1\n"
        f"[store]\nsocket = {tmp_path}/clash/sock\ndatabase = {tmp_path}/clash/db\n"
        f"[admin]\nlisten = tcp:0:interface=127.0.0.1\ntoken_file = {tmp_path}/clash/token\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "capture", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env(),
    )
    assert result.returncode != 0
    # twistd has already sent stderr to its log (stdout under -n) at this point.
    assert f"cannot listen for proxy on tcp:{appliance.proxy_port}" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_shipped_config_is_valid():
    """etc/capture.ini as shipped loads with the appliance's own loader."""
    from capture import config

    settings = config.load(str(REPO / "etc" / "capture.ini"))
    assert settings.proxy.listen == "tcp:8080"
    assert settings.admin.listen == "tcp:8081"
