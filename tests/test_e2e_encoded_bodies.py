"""Compressed bodies (gzip, deflate, br, zstd) from a real origin: passed as sent, read decoded, bombs cut."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import brotli
import pytest
import zstandard

from capture.decoding import MAX_DECODED

DOCUMENT = json.dumps({"greeting": "grüezi from the compressed origin", "items": list(range(500))}, ensure_ascii=False).encode()
ENCODED = {
    "gzip": gzip.compress(DOCUMENT),
    "deflate": zlib.compress(DOCUMENT),
    "br": brotli.compress(DOCUMENT),
    "zstd": zstandard.ZstdCompressor().compress(DOCUMENT),
}
BOMB = brotli.compress(b"A" * (64 * 1024 * 1024), quality=1)  # 64 MiB of text in a few KiB


class _Handler(BaseHTTPRequestHandler):
    """GET /CODING answers DOCUMENT with that Content-Encoding; /bomb a br bomb; POST /upload echoes a size."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        coding = self.path.strip("/")
        body = BOMB if coding == "bomb" else ENCODED[coding]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "br" if coding == "bomb" else coding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = b'{"received": %d}' % size
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def compressed_origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(appliance, url: str, *args: str) -> bytes:
    result = subprocess.run(["curl", "-sS", "--max-time", "30", "-x", appliance.proxy_url, *args, url],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_coding_passes_as_sent_and_reads_decoded(make_appliance, compressed_origin):
    """The client gets the compressed bytes untouched; the flow detail shows the document, saying from what."""
    appliance = make_appliance().start()
    session = appliance.new_session()
    for coding, body in ENCODED.items():
        assert fetch(appliance, f"{compressed_origin}/{coding}") == body  # no --compressed: the raw bytes
    flows = appliance.wait_for_flows(session["id"], len(ENCODED))
    for flow, (coding, body) in zip(flows, ENCODED.items()):
        response = appliance.api("GET", f"/api/flows/{flow['id']}").json()["response"]
        assert (response["decoded_from"], response["body_encoding"]) == (coding, "utf-8")
        assert json.loads(response["body"])["greeting"] == "grüezi from the compressed origin"
        assert response["stored_size"] == response["size"] == len(body)  # stored as sent
        assert response["decoded_size"] == len(DOCUMENT)
        assert not response["decoded_cut"] and response["decode_error"] is None


def test_body_filters_see_decoded_text_in_queries_and_sessions(make_appliance, compressed_origin):
    """~bs finds text inside br and zstd bodies, in the session manager's query and in a session's own filter."""
    appliance = make_appliance().start()
    everything = appliance.new_session()
    only_greetings = appliance.new_session(filter='~bs "grüezi"')
    for coding in ENCODED:
        fetch(appliance, f"{compressed_origin}/{coding}")
    fetch(appliance, f"{compressed_origin}/upload", "-d", "plain upload")
    appliance.wait_for_flows(everything["id"], len(ENCODED) + 1)
    found = appliance.flows(everything["id"], filter='~bs "compressed origin"')["flows"]
    assert sorted(f["path"] for f in found) == sorted(f"/{c}" for c in ENCODED)
    assert appliance.flows(everything["id"], filter='~b "grüezi" & ~u /br')["total"] == 1
    assert appliance.flows(everything["id"], filter='~bq "plain upload"')["total"] == 1
    recorded = appliance.wait_for_flows(only_greetings["id"], len(ENCODED))
    assert sorted(f["path"] for f in recorded) == sorted(f"/{c}" for c in ENCODED)


def test_exports_carry_decoded_bodies(make_appliance, compressed_origin):
    """HAR content and Postman examples hold the document, not the compressed bytes."""
    appliance = make_appliance().start()
    session = appliance.new_session()
    fetch(appliance, f"{compressed_origin}/br")
    fetch(appliance, f"{compressed_origin}/zstd")
    appliance.wait_for_flows(session["id"], 2)
    har = appliance.api("GET", f"/api/sessions/{session['id']}/har").json()
    for entry, coding in zip(har["log"]["entries"], ("br", "zstd")):
        content = entry["response"]["content"]
        assert json.loads(content["text"]) == json.loads(DOCUMENT) and "encoding" not in content
        assert content["size"] == len(DOCUMENT)
        assert content["compression"] == len(DOCUMENT) - len(ENCODED[coding])
        assert content["comment"] == f"decoded from Content-Encoding {coding}"
    postman = appliance.api("GET", f"/api/sessions/{session['id']}/postman").json()
    examples = [example for folder in postman["item"] for sub in folder["item"]
                for item in (sub.get("item") or [sub]) for example in item.get("response", [])]
    assert len(examples) == 2 and all(json.loads(e["body"]) == json.loads(DOCUMENT) for e in examples)


def test_a_bomb_is_cut_and_marked_and_the_appliance_keeps_serving(make_appliance, compressed_origin):
    """64 MiB of br-compressed text: the client gets the bytes as sent; reading shows MAX_DECODED, marked cut."""
    appliance = make_appliance().start()
    session = appliance.new_session()
    assert fetch(appliance, f"{compressed_origin}/bomb") == BOMB
    [flow] = appliance.wait_for_flows(session["id"], 1)
    response = appliance.api("GET", f"/api/flows/{flow['id']}").json()["response"]
    assert response["decoded_cut"] and response["decoded_size"] == MAX_DECODED
    assert response["body"] == "A" * MAX_DECODED and response["stored_size"] == len(BOMB)
    assert appliance.flows(session["id"], filter="~bs AAAA")["total"] == 1
    har = appliance.api("GET", f"/api/sessions/{session['id']}/har").json()
    content = har["log"]["entries"][0]["response"]["content"]
    assert "compression" not in content and f"decoded content cut at {MAX_DECODED} bytes" in content["comment"]
    assert fetch(appliance, f"{compressed_origin}/gzip") == ENCODED["gzip"]
