"""Admin calls made while the session manager starts or restarts wait for it instead of answering 503."""

from __future__ import annotations

import os
import signal
import time

import requests

from conftest import pid_alive, wait_for


def first_200(appliance) -> dict:
    """Poll /api/status as a provisioning script would; its first 200."""
    def answered():
        try:
            response = appliance.api("GET", "/api/status")
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None
    return wait_for(answered, 30, interval=0.01)


def test_session_created_at_the_first_200_from_status(make_appliance):
    """Start the real appliance, create a session the moment /api/status first answers 200: a 201, every time."""
    for attempt in range(3):
        appliance = make_appliance()
        appliance.start(wait_connected=False)
        status = first_200(appliance)
        created = appliance.api("POST", "/api/sessions", json={"name": f"at start {attempt}"})
        assert created.status_code == 201, (attempt, status["session_manager"], created.text)
        assert created.json()["state"] == "capturing"
        names = [s["name"] for s in appliance.api("GET", "/api/sessions").json()["sessions"]]
        assert names.count(f"at start {attempt}") == 1
        appliance.stop()  # the next round starts the appliance again on the same state


def test_session_created_while_the_session_manager_restarts_after_kill_9(make_appliance):
    """kill -9 the session manager; while it is away and being restarted, a create waits and succeeds once."""
    appliance = make_appliance().start()
    pid = appliance.sessiond_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid))
    wait_for(lambda: appliance.status()["session_manager"]["connected"] is False, 10, interval=0.01)
    started = time.monotonic()
    created = appliance.api("POST", "/api/sessions", json={"name": "during restart"})
    assert created.status_code == 201, created.text
    assert time.monotonic() - started < 5
    status = appliance.status()["session_manager"]
    assert status["connected"] and status["restarts"] >= 1 and status["pid"] != pid
    names = [s["name"] for s in appliance.api("GET", "/api/sessions").json()["sessions"]]
    assert names.count("during restart") == 1


def test_reads_wait_too_and_503_when_it_stays_away(make_appliance, tmp_path):
    """A session manager that cannot start (its database is a directory): calls answer 503 after the bound,
    saying how long they waited; /api/status answers at once."""
    broken = tmp_path / "not-a-database"
    broken.mkdir()
    appliance = make_appliance(store={"database": broken}, admin={"session_manager_wait": "1.5"})
    appliance.start(wait_connected=False)
    status = first_200(appliance)
    assert status["session_manager"]["connected"] is False
    started = time.monotonic()
    for method, path in (("GET", "/api/sessions"), ("POST", "/api/sessions")):
        response = appliance.api(method, path, json={} if method == "POST" else None)
        assert response.status_code == 503
        assert response.json() == {"error": "session manager unavailable: session manager is not connected (waited 1.5 s)"}
    assert 3.0 <= time.monotonic() - started < 10
