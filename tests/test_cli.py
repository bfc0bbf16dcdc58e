"""capturectl: driven as a subprocess against the real appliance, plus its pure helpers."""

from __future__ import annotations

import http.cookiejar
import json
import re
import selectors
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capture import cli, cli_format
from conftest import child_env

TIMEOUT = 30


def capturectl(appliance: Any, *args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT,
               connect: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m capture.cli`` pointed at ``appliance`` (unless ``connect`` is false)."""
    where = ["--admin", appliance.admin_url, "--token-file", str(appliance.var / "admin.token")] if connect else []
    return subprocess.run(
        [sys.executable, "-m", "capture.cli", *where, *args],
        capture_output=True, text=True, timeout=timeout, env={**child_env(), "COLUMNS": "200", **(env or {})},
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def start_session(appliance: Any, *args: str) -> int:
    return json.loads(ok(capturectl(appliance, "--json", "start", *args)))["id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- end to end --------------------------------------------------------------------------


def test_status_shows_listeners_manager_and_ca(appliance):
    """status prints aligned key: value lines: version, listeners, session manager, CA fingerprint."""
    out = ok(capturectl(appliance, "status"))
    status = appliance.status()
    assert "admin listener:" in out and status["listeners"]["admin"] in out
    assert status["listeners"]["proxy"] in out
    assert f"connected, pid {status['session_manager']['pid']}" in out
    assert status["ca_sha256"] in out
    values = {len(re.match(r"[^:]+:\s+", line).group()) for line in out.splitlines()}
    assert len(values) == 1, out  # values line up


def test_start_with_clients_and_filter_then_list_sessions(appliance):
    """start sends clients, filter and cookie options; sessions lists it as a table; --json parses."""
    out = ok(capturectl(appliance, "start", "pixel 7", "--client", "127.0.0.1", "--client", "10.0.0.0/8",
                        "--filter", "~m GET", "--cookie-domain", "example.com", "--no-responses"))
    assert out.startswith("started session ") and "'pixel 7'" in out and "capturing" in out
    session = appliance.api("GET", "/api/sessions").json()["sessions"][-1]
    assert session["clients"] == ["127.0.0.1", "10.0.0.0/8"] and session["filter"] == "~m GET"
    assert session["cookies"] == {"enabled": True, "domains": ["example.com"]}
    assert session["capture_responses"] is False
    assert f"session {session['id']} " in out

    table = ok(capturectl(appliance, "sessions")).splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "CLIENTS", "FILTER", "FLOWS", "CREATED"]
    row = next(line for line in table[1:] if "pixel 7" in line)
    assert row.startswith(str(session["id"])) and "capturing" in row and "127.0.0.1, 10.0.0.0/8" in row and "~m GET" in row
    assert table[0].index("STATE") == row.index("capturing")

    listed = json.loads(ok(capturectl(appliance, "sessions", "--json")))  # --json after the command too
    assert [s["name"] for s in listed["sessions"]] == ["pixel 7"]


def test_flows_table_show_and_curl(appliance, origin):
    """flows lists every request with a total, --filter narrows it, show prints the exchange, curl the URL."""
    session_id = start_session(appliance, "flows")
    with appliance.client() as client:
        client.get(f"{origin.url}/echo?n=1", headers={"X-Probe": "one"})
        client.post(f"{origin.url}/echo", data=b"\x00\x01\xfe\xff")
        client.get(f"{origin.url}/status/404")
    flows = appliance.wait_for_flows(session_id, 3)

    out = ok(capturectl(appliance, "flows", str(session_id))).splitlines()
    assert out[0].split() == ["ID", "TIME", "CLIENT", "METHOD", "STATUS", "SIZE", "DURATION", "URL"]
    assert out[-1] == "3 of 3 flows"
    assert [line.split()[3] for line in out[1:-1]] == ["GET", "POST", "GET"]
    assert f"{origin.url}/echo?n=1" in out[1] and "404" in out[3]

    filtered = ok(capturectl(appliance, "flows", str(session_id), "--filter", "~m POST", "--limit", "5"))
    assert filtered.splitlines()[-1] == "1 of 1 flows" and "POST" in filtered
    newest = ok(capturectl(appliance, "flows", str(session_id), "--limit", "1", "--desc")).splitlines()
    assert newest[-1] == "1 of 3 flows" and "/status/404" in newest[1]
    raw = json.loads(ok(capturectl(appliance, "--json", "flows", str(session_id))))
    assert raw["total"] == 3 and [f["id"] for f in raw["flows"]] == [f["id"] for f in flows]

    shown = ok(capturectl(appliance, "show", str(flows[0]["id"])))
    assert f"GET {origin.url}/echo?n=1 HTTP/1.1" in shown
    assert "X-Probe: one" in shown and "HTTP/1.1 200 OK" in shown and "timings:" in shown
    binary = ok(capturectl(appliance, "show", str(flows[1]["id"])))
    assert "<4 bytes, base64; --body prints it>" in binary
    assert "AAH+/w==" in ok(capturectl(appliance, "show", str(flows[1]["id"]), "--body"))

    command = ok(capturectl(appliance, "curl", str(flows[0]["id"])))
    assert command.startswith("curl ") and f"{origin.url}/echo?n=1" in command


def test_state_changes_and_their_exit_codes(appliance):
    """pause/resume/stop/clear/delete print the new state; a refused change exits 6, an unknown id 5."""
    session_id = str(start_session(appliance, "states"))
    assert "paused" in ok(capturectl(appliance, "pause", session_id))
    again = capturectl(appliance, "pause", session_id)
    assert again.returncode == 6 and "only a capturing session can pause" in again.stderr
    assert "capturing" in ok(capturectl(appliance, "resume", session_id))
    assert "0 flow(s)" in ok(capturectl(appliance, "clear", session_id))
    assert "stopped" in ok(capturectl(appliance, "stop", session_id))
    assert capturectl(appliance, "resume", session_id).returncode == 6
    assert ok(capturectl(appliance, "delete", session_id)).strip() == f"deleted session {session_id}"
    for command in ("pause", "delete", "flows", "tail"):
        missing = capturectl(appliance, command, session_id)
        assert missing.returncode == 5, (command, missing.stderr)
        assert missing.stderr == f"capturectl: no session {session_id}\n"
    assert capturectl(appliance, "show", "999999").returncode == 5


def test_bad_filter_is_one_line_and_exit_1(appliance):
    """A filter the API rejects (400) is its error text on one line, exit 1."""
    session_id = str(start_session(appliance, "bad filter"))
    result = capturectl(appliance, "flows", session_id, "--filter", "~zz")
    assert result.returncode == 1
    assert result.stderr.startswith("capturectl: bad filter") and "position 0" in result.stderr
    assert result.stderr.count("\n") == 1


def read_line(stream: Any, timeout: float) -> str:
    """One line from a pipe, failing the test after ``timeout`` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(timeout), f"no line within {timeout}s"
        return stream.readline()


def test_tail_prints_flows_made_while_it_runs(appliance, origin):
    """tail --count 2 prints one row per new flow and exits 0 after the second."""
    session_id = start_session(appliance, "tail")
    process = subprocess.Popen(
        [sys.executable, "-m", "capture.cli", "--admin", appliance.admin_url,
         "--token-file", str(appliance.var / "admin.token"), "tail", str(session_id), "--count", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**child_env(), "COLUMNS": "200"},
    )
    try:
        assert read_line(process.stderr, TIMEOUT).startswith(f"following session {session_id}")
        with appliance.client() as client:
            client.get(f"{origin.url}/echo?tail=1")
            client.post(f"{origin.url}/echo?tail=2", data=b"x")
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert "GET" in lines[0] and f"{origin.url}/echo?tail=1" in lines[0] and "200" in lines[0]
    assert "POST" in lines[1] and "tail=2" in lines[1]


def test_tail_ends_when_the_session_stops(appliance):
    """tail prints a state line and exits 0 when the session is stopped; --json gives one object a line."""
    session_id = str(start_session(appliance, "ending"))
    process = subprocess.Popen(
        [sys.executable, "-m", "capture.cli", "--admin", appliance.admin_url, "--json",
         "--token-file", str(appliance.var / "admin.token"), "tail", session_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        read_line(process.stderr, TIMEOUT)
        ok(capturectl(appliance, "stop", session_id))
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    event = json.loads(out.splitlines()[-1])
    assert event["event"] == "state" and event["data"]["state"] == "stopped"


def test_exports_write_files_that_parse(appliance, origin, tmp_path):
    """export writes HAR, Postman, cookie JSON and cookies.txt files that their readers load."""
    session_id = str(start_session(appliance, "export", "--cookies"))
    with appliance.client() as client:
        client.get(f"{origin.url}/echo?e=1", headers={"Cookie": "a=b"})
        client.post(f"{origin.url}/echo?e=2", data=b"body")
    appliance.wait_for_flows(int(session_id), 2)

    def export(form: str, *extra: str) -> Path:
        path = tmp_path / f"out.{form}"
        result = capturectl(appliance, "export", session_id, "--format", form, "-o", str(path), *extra)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == f"wrote {path} ({path.stat().st_size} bytes)"
        assert not Path(str(path) + ".part").exists()
        return path

    har = json.loads(export("har").read_text())
    assert [e["request"]["method"] for e in har["log"]["entries"]] == ["GET", "POST"]
    only_post = json.loads(export("har", "--filter", "~m POST").read_text())
    assert [e["request"]["method"] for e in only_post["log"]["entries"]] == ["POST"]
    postman = json.loads(export("postman").read_text())
    assert "item" in postman and postman["info"]["schema"].endswith("collection.json")
    cookies = json.loads(export("cookies").read_text())
    assert [(c["name"], c["value"]) for c in cookies["cookies"]] == [("a", "b")]
    jar = http.cookiejar.MozillaCookieJar(str(export("netscape")))
    jar.load(ignore_discard=True, ignore_expires=True)  # a request Cookie has no expiry: a session cookie
    assert [(c.name, c.value, c.domain) for c in jar] == [("a", "b", "127.0.0.1")]


def test_export_of_unknown_session_leaves_no_file(appliance, tmp_path):
    """A 404 export exits 5 and writes neither the file nor a .part."""
    path = tmp_path / "missing.har"
    result = capturectl(appliance, "export", "4242", "--format", "har", "-o", str(path))
    assert result.returncode == 5 and "no session 4242" in result.stderr
    assert list(tmp_path.glob("missing.har*")) == []


def test_unreachable_admin_exits_3(tmp_path):
    """Nothing listening: exit 3 with the 'is the appliance running?' line, no traceback."""
    token = tmp_path / "token"
    token.write_text("x\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "capture.cli", "--admin", url, "--token-file", str(token), "sessions"],
        capture_output=True, text=True, timeout=TIMEOUT, env=child_env(),
    )
    assert result.returncode == 3
    assert result.stderr == (f"capturectl: cannot reach the capture admin API at {url}: connection refused"
                             " — is the appliance running?\n")


def test_wrong_or_missing_token_exits_4(appliance, tmp_path):
    """A refused token and a missing token file both exit 4 naming the file."""
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    result = capturectl(appliance, "--admin", appliance.admin_url, "--token-file", str(wrong), "status", connect=False)
    assert result.returncode == 4
    assert result.stderr == f"capturectl: the admin token in {wrong} was not accepted\n"
    missing = tmp_path / "nope.token"
    result = capturectl(appliance, "--admin", appliance.admin_url, "--token-file", str(missing), "status", connect=False)
    assert result.returncode == 4
    assert result.stderr == f"capturectl: no token file at {missing}; pass --token-file\n"


def test_environment_and_config_give_the_defaults(make_appliance, tmp_path):
    """Without flags, CAPTURE_ADMIN/CAPTURE_TOKEN_FILE are used, else the config's [admin] section."""
    port = free_port()
    appliance = make_appliance(admin={"listen": f"tcp:{port}:interface=127.0.0.1"}).start()
    from_config = capturectl(appliance, "--config", str(appliance.config), "status", connect=False)
    assert ok(from_config).count(f"http://127.0.0.1:{port}") == 1
    env = {"CAPTURE_ADMIN": appliance.admin_url, "CAPTURE_TOKEN_FILE": str(appliance.var / "admin.token")}
    assert "CA SHA-256:" in ok(capturectl(appliance, "status", env=env, connect=False))


def test_usage_errors_exit_2(tmp_path):
    """argparse owns usage errors: exit 2 with a usage line."""
    for args in (["flows"], ["flows", "x"], ["export", "1", "--format", "zip", "-o", "f"],
                 ["export", "1", "--format", "cookies", "-o", "f", "--filter", "~m GET"], []):
        result = subprocess.run([sys.executable, "-m", "capture.cli", *args], capture_output=True, text=True,
                                timeout=TIMEOUT, env=child_env(), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage: capturectl" in result.stderr and "Traceback" not in result.stderr


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, url", [
    ("tcp:8081", "http://127.0.0.1:8081"),
    ("tcp:9000:interface=0.0.0.0", "http://127.0.0.1:9000"),
    ("tcp:port=9001:interface=192.168.1.5", "http://192.168.1.5:9001"),
    ("tcp6:9002", "http://[::1]:9002"),
    ("tcp6:9003:interface=\\:\\:", "http://[::1]:9003"),
    ("tcp6:9004:interface=fe80\\:\\:1", "http://[fe80::1]:9004"),
    ("tcp:0:interface=127.0.0.1", None),
    ("unix:/run/capture.sock", None),
])
def test_admin_url_from_endpoint(endpoint, url):
    """The config's [admin] listen endpoint becomes the URL to reach it from this machine."""
    assert cli.admin_url_for(endpoint) == url


def test_status_lines_include_workers_when_reported():
    """status_lines shows proxy workers only when the appliance reports them, and tolerates missing keys."""
    lines = cli_format.status_lines({"workers": {"configured": 4, "running": 3, "restarts": 1}}, "http://a:1")
    assert "proxy workers:      3 of 4 running, 1 restart(s)" in lines
    assert not any("proxy workers" in line for line in cli_format.status_lines({}, "http://a:1"))


def test_config_defaults_read_the_admin_section(tmp_path, monkeypatch):
    """config_defaults takes the admin URL and token file from a config; a missing default config is ignored."""
    config = tmp_path / "capture.ini"
    config.write_text("[admin]\nlisten = tcp:18081\ntoken_file = /srv/capture/admin.token\n")
    assert cli.config_defaults(str(config)) == ("http://127.0.0.1:18081", "/srv/capture/admin.token")
    monkeypatch.chdir(tmp_path)
    for name in ("CAPTURE_ADMIN", "CAPTURE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = cli.build_parser().parse_args(["status"])
    cli.resolve_defaults(args)
    assert (args.admin, args.token_file) == (cli.DEFAULT_ADMIN, cli.DEFAULT_TOKEN_FILE)
    monkeypatch.setenv("CAPTURE_ADMIN", "10.0.0.2:8081/")
    args = cli.build_parser().parse_args(["--config", str(config), "status"])
    cli.resolve_defaults(args)
    assert (args.admin, args.token_file) == ("http://10.0.0.2:8081", "/srv/capture/admin.token")


def test_a_named_config_that_is_bad_is_an_error(tmp_path):
    """--config naming a missing file is one line and exit 1, not a silent fallback."""
    result = subprocess.run([sys.executable, "-m", "capture.cli", "--config", str(tmp_path / "no.ini"), "status"],
                            capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert result.returncode == 1 and "cannot read config file" in result.stderr
    assert result.stderr.count("\n") == 1


def test_sizes_durations_and_tables():
    """The table helpers: human sizes and durations, aligned columns, the last column cut to the width."""
    assert [cli_format.human_size(n) for n in (0, 999, 1000, 12_345_678)] == ["0 B", "999 B", "1.0 kB", "12.3 MB"]
    assert [cli_format.human_duration(ms) for ms in (None, 9.3, 1234, 125_000)] == ["-", "9 ms", "1.23 s", "2m05s"]
    lines = cli_format.table(("A", "URL"), [["1", "http://x/" + "y" * 50], ["22", "http://z/"]], width=30)
    assert lines == ["A   URL", "1   http://x/yyyyyyyyyyyyyy...", "22  http://z/"]
    assert max(map(len, lines)) == 30
    assert cli_format.table(("A", "URL"), [["1", "http://x/" + "y" * 50]])[1].endswith("y" * 50)


def test_sse_parser_reads_events_and_skips_comments():
    """sse_events yields (event, data) for each event, skipping comments and keepalives."""
    import io

    stream = io.BytesIO(b": capture events\n\nevent: flow\ndata: {\"id\": 1}\n\n: keepalive\n\n"
                        b"event: state\r\ndata: {\"state\": \"paused\"}\r\n\r\n")
    assert list(cli.sse_events(stream, None)) == [("flow", {"id": 1}), ("state", {"state": "paused"})]


def test_database_line_says_plainly_whether_the_store_answers():
    """capturectl status's database line: the store, and UNREACHABLE with since and why when it does not answer."""
    from capture.cli_format import database_line

    down = {"backend": "postgresql", "url": "postgresql://capture@db:5432/capture", "reachable": False,
            "error": "connection refused", "since": "2026-01-01T00:00:00.000Z"}
    assert database_line(down) == ("postgresql://capture@db:5432/capture, UNREACHABLE since"
                                   " 2026-01-01T00:00:00.000Z: connection refused")
    assert database_line({"backend": "sqlite", "path": "/v/c.sqlite", "reachable": True}) == "sqlite /v/c.sqlite, reachable"
    assert database_line(None) == "-"
