"""End to end: per-device sessions, filters, stats, exports, cookies and live events."""

from __future__ import annotations

import http.cookiejar
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import requests

from conftest import wait_for

DATA = Path(__file__).parent / "data"


def curl_from(appliance, source: str, url: str, *args: str) -> bytes:
    """curl through the proxy from a given loopback address, as a second device would."""
    result = subprocess.run(["curl", "-sS", "--max-time", "20", "--interface", source, "-x", appliance.proxy_url,
                             *args, url], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_two_devices_each_see_only_their_own_traffic(appliance, origin):
    """Sessions for 127.0.0.2 and 127.0.0.3 capture at once, each only its device's requests."""
    phone = appliance.new_session(name="phone", clients=["127.0.0.2"])
    tablet = appliance.new_session(name="tablet", clients=["127.0.0.3/32"])
    everyone = appliance.new_session(name="all")
    curl_from(appliance, "127.0.0.2", f"{origin.url}/bytes?n=2")
    curl_from(appliance, "127.0.0.3", f"{origin.url}/bytes?n=3")
    curl_from(appliance, "127.0.0.2", f"{origin.url}/bytes?n=4")
    assert [f["path"] for f in appliance.wait_for_flows(phone["id"], 2)] == ["/bytes?n=2", "/bytes?n=4"]
    assert [f["path"] for f in appliance.wait_for_flows(tablet["id"], 1)] == ["/bytes?n=3"]
    shared = appliance.wait_for_flows(everyone["id"], 3)
    assert {f["client"] for f in shared} == {"127.0.0.2", "127.0.0.3"}
    # Stored once, listed in both sessions.
    detail = appliance.api("GET", f"/api/flows/{shared[0]['id']}").json()
    assert sorted(detail["session_ids"]) == sorted([phone["id"], everyone["id"]])


def test_capture_time_filters_decide_what_is_recorded(appliance, origin):
    """A session's filter applies while capturing: only POSTs, and no images/CSS/JS with !~a."""
    posts = appliance.new_session(name="posts", filter="~m POST")
    no_assets = appliance.new_session(name="no assets", filter="!~a")
    with appliance.client() as client:
        client.get(f"{origin.url}/static/logo.png", timeout=10)
        client.get(f"{origin.url}/static/site.css", timeout=10)
        client.post(f"{origin.url}/echo", data=b"x", timeout=10)
        client.get(f"{origin.url}/bytes?n=1", timeout=10)
    assert [f["method"] for f in appliance.wait_for_flows(posts["id"], 1)] == ["POST"]
    assert [f["path"] for f in appliance.wait_for_flows(no_assets["id"], 2)] == ["/echo", "/bytes?n=1"]


def test_query_filters_sorting_and_bad_expressions(appliance, origin):
    """?filter= selects in the store; sort works; a bad expression is a 400 naming the position."""
    session = appliance.new_session()
    with appliance.client() as client:
        for path in ("/status/404", "/bytes?n=10", "/status/500", "/bytes?n=30"):
            client.get(f"{origin.url}{path}", timeout=10)
    appliance.wait_for_flows(session["id"], 4)
    assert [f["path"] for f in appliance.flows(session["id"], filter="~c 404")["flows"]] == ["/status/404"]
    assert appliance.flows(session["id"], filter="~u bytes & !~c 404")["total"] == 2
    by_size = appliance.flows(session["id"], sort="size", order="desc")["flows"]
    assert [f["response_size"] for f in by_size][:2] == [30, 10]
    response = appliance.api("GET", f"/api/sessions/{session['id']}/flows", params={"filter": "~m GET & (~c 200"})
    assert response.status_code == 400 and "position" in response.json()["error"]


def test_stats_summarise_the_session(appliance, origin):
    """/stats counts by method, host, status class, content type and client."""
    session = appliance.new_session()
    with appliance.client() as client:
        client.get(f"{origin.url}/bytes?n=100", timeout=10)
        client.get(f"{origin.url}/status/404", timeout=10)
        client.post(f"{origin.url}/echo", data=b"abc", timeout=10)
    appliance.wait_for_flows(session["id"], 3)
    stats = appliance.api("GET", f"/api/sessions/{session['id']}/stats").json()
    assert stats["flows"] == 3
    assert {row["key"]: row["count"] for row in stats["by_method"]} == {"GET": 2, "POST": 1}
    assert {row["key"]: row["count"] for row in stats["by_status_class"]} == {"2xx": 2, "4xx": 1}
    assert stats["by_client"][0] == {**stats["by_client"][0], "key": "127.0.0.1", "count": 3}


def test_har_export_is_valid_and_complete(appliance, origin):
    """The HAR export validates against HAR 1.2 and holds every request, with the filter applied."""
    session = appliance.new_session()
    with appliance.client() as client:
        client.get(f"{origin.url}/bytes?n=5&x=1", timeout=10)
        client.post(f"{origin.url}/echo", data={"a": "1", "b": "two"}, timeout=10)
    appliance.wait_for_flows(session["id"], 2)
    har = appliance.api("GET", f"/api/sessions/{session['id']}/har").json()
    # The schema says ipv4 or ipv6 with oneOf: it only holds with formats checked.
    jsonschema.Draft6Validator(json.loads((DATA / "har-1.2.json").read_text()),
                               format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER).validate(har)
    entries = har["log"]["entries"]
    assert [e["request"]["method"] for e in entries] == ["GET", "POST"]
    assert {"name": "x", "value": "1"} in entries[0]["request"]["queryString"]
    assert entries[1]["request"]["postData"]["params"] == [{"name": "a", "value": "1"}, {"name": "b", "value": "two"}]
    only_posts = appliance.api("GET", f"/api/sessions/{session['id']}/har", params={"filter": "~m POST"}).json()
    assert len(only_posts["log"]["entries"]) == 1


def test_postman_export_is_valid_and_runs_with_newman(appliance, origin, tmp_path):
    """The Postman collection validates against v2.1 and every request answers under newman."""
    session = appliance.new_session()
    with appliance.client() as client:
        client.get(f"{origin.url}/bytes?n=5", timeout=10)
        client.post(f"{origin.url}/echo", json={"k": "v"}, timeout=10)
        client.put(f"{origin.url}/echo", data="text body", timeout=10)
    appliance.wait_for_flows(session["id"], 3)
    collection = appliance.api("GET", f"/api/sessions/{session['id']}/postman").json()
    jsonschema.Draft7Validator(json.loads((DATA / "postman-collection-v2.1.0.json").read_text())).validate(collection)
    newman = shutil.which("newman") or str(Path(__file__).parent.parent / ".ci/node/node_modules/.bin/newman")
    if not Path(newman).exists():
        pytest.skip("newman is not installed (.ci/run installs it)")
    path = tmp_path / "collection.json"
    path.write_text(json.dumps(collection))
    report = tmp_path / "report.json"
    result = subprocess.run([newman, "run", str(path), "--reporters", "json", "--reporter-json-export", str(report)],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(report.read_text())["run"]
    assert run["stats"]["requests"]["total"] == 3 and run["stats"]["requests"]["failed"] == 0
    assert [e["response"]["code"] for e in run["executions"]] == [200, 200, 200]


def test_cookies_as_json_and_netscape(appliance, origin, tmp_path):
    """Cookies seen on the wire come back as a jar, and as a cookies.txt MozillaCookieJar loads."""
    session = appliance.new_session(cookies={"enabled": True, "domains": []})
    with appliance.client() as client:
        client.get(f"{origin.url}/set-cookie?sid=abc&theme=dark", timeout=10)
        client.get(f"{origin.url}/set-cookie?sid=xyz", timeout=10)
    appliance.wait_for_flows(session["id"], 2)
    jar = appliance.api("GET", f"/api/sessions/{session['id']}/cookies").json()["cookies"]
    assert {c["name"]: c["value"] for c in jar} == {"sid": "xyz", "theme": "dark"}
    assert all(c["httpOnly"] and c["domain"] == "127.0.0.1" for c in jar)
    text = appliance.api("GET", f"/api/sessions/{session['id']}/cookies", params={"format": "netscape"}).text
    path = tmp_path / "cookies.txt"
    path.write_text(text)
    loaded = http.cookiejar.MozillaCookieJar(str(path))
    loaded.load(ignore_discard=True, ignore_expires=True)
    assert {c.name: c.value for c in loaded} == {"sid": "xyz", "theme": "dark"}
    off = appliance.new_session(name="no cookies")
    assert appliance.api("GET", f"/api/sessions/{off['id']}/cookies").status_code == 409


def test_copy_as_curl_replays_the_request(appliance, origin):
    """/api/flows/ID/curl gives a command that sends the same request again."""
    session = appliance.new_session()
    with appliance.client() as client:
        client.post(f"{origin.url}/echo", data=b"replay me", headers={"X-Test": "1"}, timeout=10)
    [flow] = appliance.wait_for_flows(session["id"], 1)
    command = appliance.api("GET", f"/api/flows/{flow['id']}/curl").text
    assert f"{origin.url}/echo" in command
    replayed = json.loads(subprocess.run(["bash", "-c", command], capture_output=True, timeout=30).stdout)
    assert ["X-Test", "1"] in replayed["headers"] and replayed["size"] == len(b"replay me")


def test_events_stream_delivers_a_flow_within_a_second(appliance, origin):
    """The SSE stream sends a flow event within a second of the request, and state changes."""
    session = appliance.new_session()
    events: list[tuple[str, dict]] = []

    def listen() -> None:
        with requests.get(f"{appliance.admin_url}/api/sessions/{session['id']}/events", stream=True, timeout=10,
                          headers={"Authorization": f"Bearer {appliance.token}"}) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            name = None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_for(lambda: appliance.status()["session_manager"].get("connected"), 5)
    time.sleep(0.5)  # the subscription reaches the session manager
    sent = time.monotonic()
    with appliance.client() as client:
        client.get(f"{origin.url}/bytes?n=7", timeout=10)
    wait_for(lambda: events, 5, interval=0.01)
    assert time.monotonic() - sent < 1.0
    assert events[0][0] == "flow" and events[0][1]["path"] == "/bytes?n=7"
    appliance.api("POST", f"/api/sessions/{session['id']}/pause")
    listener.join(10)
    assert events[1][0] == "state" and events[1][1]["state"] == "paused"


def test_events_for_unknown_session_is_404(appliance):
    """Following a session that does not exist is a 404, not an empty stream."""
    assert appliance.api("GET", "/api/sessions/999/events").status_code == 404
