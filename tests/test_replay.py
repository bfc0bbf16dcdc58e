"""Replay and edit-and-resend: the request built from a flow (sans-I/O) and ``POST /api/flows/ID/replay``
end to end, through the proxy, over plain HTTP and intercepted HTTPS."""

from __future__ import annotations

import gzip
import socket

import pytest

from capture.admin.replay import ReplayError, replay_request
from certs import OriginCA
from conftest import Origin


def detail(**changes) -> dict:
    flow = {
        "id": 7, "kind": "http", "method": "POST", "url": "http://api.test:8080/v1/items?q=1", "client": "10.0.0.5",
        "request": {"headers": [["Host", "api.test:8080"], ["Content-Type", "text/plain"], ["Content-Length", "5"],
                                ["Connection", "keep-alive"], ["X-Order", "a"], ["X-Order", "b"]],
                    "body": "hello", "body_encoding": "utf-8", "truncated": False},
    }
    flow.update(changes)
    return flow


def test_request_keeps_headers_in_order_and_refits_framing():
    """The captured request goes out in absolute form with its headers in order and repeats kept;
    Content-Length is set for the body sent, hop-by-hop headers dropped, the connection closed after."""
    request = replay_request(detail(), {}, b"hello")
    assert (request.scheme, request.host, request.port) == ("http", "api.test", 8080)
    head, _, body = request.head_and_body.partition(b"\r\n\r\n")
    assert body == b"hello"
    assert head.split(b"\r\n") == [
        b"POST http://api.test:8080/v1/items?q=1 HTTP/1.1", b"Host: api.test:8080", b"Content-Type: text/plain",
        b"X-Order: a", b"X-Order: b", b"Content-Length: 5", b"Connection: close"]


def test_edits_replace_method_url_headers_and_body():
    """Overrides change the method, URL (https: origin form after CONNECT), headers and body; without
    an edit the body goes out as stored (compressed bytes stay compressed, beside their Content-Encoding)."""
    request = replay_request(detail(), {"method": "PUT", "url": "https://other.test/x", "headers": [["A", "1"]],
                                        "body": "é"}, b"hello")
    assert (request.scheme, request.host, request.port) == ("https", "other.test", 443)
    assert request.head_and_body == (b"PUT /x HTTP/1.1\r\nHost: other.test\r\nA: 1\r\nContent-Length: 2\r\n"
                                     b"Connection: close\r\n\r\n\xc3\xa9")
    assert replay_request(detail(), {}, b"\x1f\x8b\x00\xff").head_and_body.endswith(b"Content-Length: 4\r\nConnection: close\r\n\r\n\x1f\x8b\x00\xff")


@pytest.mark.parametrize("flow, overrides, message", [
    (detail(), {"colour": "red"}, "unknown field"),
    (detail(), {"method": "GET X"}, "method"),
    (detail(), {"url": "ftp://x/"}, "absolute http"),
    (detail(), {"url": "http://x:99999/"}, "bad port"),
    (detail(), {"headers": [["Bad\r\nName", "v"]]}, "not a valid header"),
    (detail(), {"headers": {"A": "1"}}, "pairs"),
    (detail(), {"body": 5}, "body must be"),
    (detail(kind="websocket"), {}, "not an HTTP request"),
    (detail(request={**detail()["request"], "truncated": True}), {}, "cut short"),
])
def test_bad_replays_are_clear_errors(flow, overrides, message):
    """Each unusable flow or edit is a ReplayError (a 400) that says what is wrong."""
    with pytest.raises(ReplayError, match=message):
        replay_request(flow, overrides, b"hello")


def test_replay_goes_through_the_proxy_into_the_same_sessions(appliance, origin):
    """A replay reaches the origin again, is recorded in the original's session (one restricted to
    its client) as that client, and comes back as the new flow; an edit sends what was edited."""
    session = appliance.new_session(name="replay", clients=["127.0.0.1"])
    other = appliance.new_session(name="elsewhere", clients=["10.9.9.9"])
    with appliance.client() as client:
        client.post(f"{origin.url}/echo?n=1", data=b"payload", headers={"X-Mark": "one"}, timeout=10)
    original = appliance.wait_for_flows(session["id"], 1)[0]
    response = appliance.api("POST", f"/api/flows/{original['id']}/replay")
    assert response.status_code == 200, response.text
    replayed = response.json()
    assert replayed["id"] != original["id"] and replayed["session_ids"] == [session["id"]]
    assert replayed["client"] == "127.0.0.1" and replayed["status"] == 200
    assert replayed["request"]["body"] == "payload"
    assert ["X-Mark", "one"] in replayed["request"]["headers"]
    seen = origin.log()
    assert [(r["method"], r["path"]) for r in seen[-2:]] == [("POST", "/echo?n=1")] * 2
    edited = appliance.api("POST", f"/api/flows/{original['id']}/replay",
                           json={"method": "PUT", "url": f"{origin.url}/edited", "body": "changed"}).json()
    assert (edited["method"], edited["path"], edited["request"]["body"]) == ("PUT", "/edited", "changed")
    assert origin.log()[-1]["path"] == "/edited"
    assert len(appliance.flows(session["id"])["flows"]) == 3
    assert appliance.flows(other["id"])["total"] == 0
    assert appliance.api("POST", "/api/flows/999999/replay").status_code == 404
    assert appliance.api("POST", f"/api/flows/{original['id']}/replay", json={"url": "nope"}).status_code == 400


def test_replay_entry_admits_only_announced_connections(appliance, origin):
    """The replay listener drops a connection nobody announced, so it is no way in for others on loopback."""
    session = appliance.new_session(name="guard")
    with appliance.client() as client:
        client.get(f"{origin.url}/first", timeout=10)
    flow = appliance.wait_for_flows(session["id"], 1)[0]
    assert appliance.api("POST", f"/api/flows/{flow['id']}/replay").status_code == 200
    ports = [int(p) for p in _listening_ports(appliance.process.pid)]
    others = [p for p in ports if p not in (appliance.proxy_port, appliance.admin_port)]
    assert others, "the replay listener should be open after a replay"
    for port in others:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as stranger:
                stranger.sendall(f"GET {origin.url}/stranger HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                stranger.settimeout(5)
                assert stranger.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):  # aborted at once: as good as closed
            pass
    assert all(r["path"] != "/stranger" for r in origin.log())


def _listening_ports(pid: int) -> list[str]:
    """TCP ports the process listens on, from /proc (no tools needed)."""
    import os
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.append(str(int(fields[1].rsplit(":", 1)[1], 16)))
    return ports


def test_https_replay_is_intercepted_again(make_appliance, tmp_path):
    """An HTTPS flow replays through CONNECT and the proxy's own interception, and is recorded again."""
    ca = OriginCA(tmp_path, "replay CA")
    server = Origin(*ca.issue("good", ["localhost", "127.0.0.1"]))
    try:
        appliance = make_appliance(tls={"upstream_ca": ca.path}).start()
        session = appliance.new_session(name="tls")
        with appliance.client() as client:
            client.proxies["https"] = appliance.proxy_url
            client.get(f"{server.url}/secure?x=1", verify=str(appliance.var / "ca" / "ca.pem"), timeout=10)
        original = appliance.wait_for_flows(session["id"], 1)[0]
        assert original["scheme"] == "https"
        replayed = appliance.api("POST", f"/api/flows/{original['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["scheme"] == "https" and replayed.json()["path"] == "/secure?x=1"
        assert replayed.json()["status"] == 200
    finally:
        server.stop()


def test_compressed_request_replays_as_sent_and_downloads_raw(appliance, origin):
    """A gzip-encoded upload is shown decoded in the detail, downloads as the stored gzip bytes, and
    replays byte for byte as it was sent (never the decoded text under a gzip header)."""
    import hashlib
    import json

    session = appliance.new_session(name="gzip")
    packed = gzip.compress(b'{"big": "' + b"x" * 5000 + b'"}')
    with appliance.client() as client:
        client.post(f"{origin.url}/upload", data=packed, timeout=10,
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    flow = appliance.wait_for_flows(session["id"], 1)[0]
    shown = appliance.api("GET", f"/api/flows/{flow['id']}").json()["request"]
    assert shown["decoded_from"] == "gzip" and shown["body"].startswith('{"big"')
    raw = appliance.api("GET", f"/api/flows/{flow['id']}/request/body")
    assert raw.content == packed and raw.headers["Content-Type"] == "application/octet-stream"
    assert raw.headers["Content-Disposition"] == f'attachment; filename="flow-{flow["id"]}-request.bin"'
    assert appliance.api("GET", "/api/flows/999999/response/body").status_code == 404
    replayed = appliance.api("POST", f"/api/flows/{flow['id']}/replay").json()
    received = json.loads(replayed["response"]["body"])
    assert received["size"] == len(packed) and received["sha256"] == hashlib.sha256(packed).hexdigest()
