"""The exported Postman collection runs under newman against the test origin, every request answered.

``.ci/run`` installs newman (npm) into .ci/node and puts it on PATH; run it
the same way to get this test locally.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from capture.export import postman
from capture.flow import Flow
from conftest import Origin, child_env
from test_export_samples import flow, message

pytestmark = pytest.mark.skipif(
    shutil.which("newman") is None,
    reason="newman is not on PATH (.ci/run installs it: npm install --prefix .ci/node newman@6)",
)

JSON_BODY = b'{"name": "caf\xc3\xa9", "tags": ["a", "b"]}'
PUT_BODY = b"replace me\nwith this\n"
BOUNDARY = "----newmanBoundary1234"
MULTIPART = (
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n"
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"lang\"\r\n\r\nfr\r\n--{BOUNDARY}--\r\n"
).encode()


def captured(origin: Origin) -> list[Flow]:
    """Flows as the proxy would have captured them from an app talking to the origin."""
    host = f"127.0.0.1:{origin.port}"
    common = [("Host", host), ("User-Agent", "ExampleApp/3.1"), ("Connection", "keep-alive")]

    def at(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Flow:
        return flow(
            host="127.0.0.1",
            port=origin.port,
            method=method,
            path=path,
            request=message(common + headers, body),
            response=message([("Content-Type", "application/json")], b'{"ok": true}'),
        )

    return [
        at("GET", "/api/v1/items?page=2&q=caf%C3%A9", [("Accept", "application/json")]),
        at("POST", "/api/v1/login", [("Content-Type", "application/x-www-form-urlencoded"),
                                     ("Content-Length", "29")], b"user=alice&pass=s%26cr%C3%A9t"),
        at("POST", "/api/v1/items", [("Content-Type", "application/json"),
                                     ("Content-Length", str(len(JSON_BODY)))], JSON_BODY),
        at("PUT", "/api/v1/items/7", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")], PUT_BODY),
        at("POST", "/api/v1/notes", [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], MULTIPART),
        at("DELETE", "/api/v1/items/7", [("Authorization", "Bearer t0k3n")]),
        at("GET", "/", []),
    ]


def test_newman_runs_the_collection(origin: Origin, tmp_path: Path) -> None:
    """newman sends every exported request to the origin and each gets a 200, with the right method, path and body."""
    flows = captured(origin)
    collection_file = tmp_path / "collection.json"
    report_file = tmp_path / "report.json"
    collection_file.write_text(json.dumps(postman.collection(flows, "newman run", with_responses=True)))
    result = subprocess.run(
        ["newman", "run", str(collection_file), "--reporters", "cli,json",
         "--reporter-json-export", str(report_file), "--timeout-request", "30000"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(report_file.read_text())["run"]
    assert run["stats"]["requests"]["total"] == len(flows)
    assert run["stats"]["requests"]["failed"] == 0
    assert not run["failures"]
    executions = run["executions"]
    assert len(executions) == len(flows)
    echoes = {}
    for execution in executions:
        response = execution["response"]
        assert response["code"] == 200, execution["item"]["name"]
        echo = json.loads(bytes(response["stream"]["data"]))
        echoes[execution["item"]["name"]] = echo
    for f in flows:
        echo = echoes[f"{f.method} {f.path}"]
        assert (echo["method"], echo["path"]) == (f.method, f.path)
        sent = {k.lower(): v for k, v in echo["headers"]}
        assert sent["user-agent"] == "ExampleApp/3.1"
        assert "proxy-connection" not in sent
    # Raw bodies go out byte for byte; forms are re-encoded by Postman but carry the same fields.
    assert echoes["POST /api/v1/items"]["sha256"] == hashlib.sha256(JSON_BODY).hexdigest()
    assert echoes["PUT /api/v1/items/7"]["sha256"] == hashlib.sha256(PUT_BODY).hexdigest()
    assert echoes["POST /api/v1/login"]["size"] > 0
    notes = {k.lower(): v for k, v in echoes["POST /api/v1/notes"]["headers"]}
    assert notes["content-type"].startswith("multipart/form-data; boundary=")
    assert echoes["POST /api/v1/notes"]["size"] > 0
