"""End to end over HTTP/2: curl --http2 (and --parallel) through the proxy to an h2 origin (hypercorn),
ALPN mirrored from the origin, SSE event by event, and gRPC calls from grpcio through the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certs import OriginCA
from conftest import child_env
from origin import pattern

HERE = Path(__file__).resolve().parent


class H2Origin:
    """tests/h2_origin.py in its own process."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.process = subprocess.Popen([sys.executable, str(HERE / "h2_origin.py"), str(cert), str(key)],
                                        stdout=subprocess.PIPE, text=True, env=child_env())
        self.port = int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # hypercorn waits for open connections to finish
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def origin_ca(tmp_path_factory) -> OriginCA:
    return OriginCA(tmp_path_factory.mktemp("h2"), "h2 origin CA")


@pytest.fixture(scope="module")
def h2_origin(origin_ca):
    server = H2Origin(*origin_ca.issue("h2", ["localhost", "127.0.0.1"]))
    yield server
    server.stop()


@pytest.fixture
def h2_appliance(make_appliance, origin_ca):
    return make_appliance(tls={"upstream_ca": origin_ca.path}).start()


def capture_ca(appliance) -> str:
    return str(appliance.var / "ca" / "ca.pem")


def curl(appliance, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", "-x", appliance.proxy_url, "--cacert",
                           capture_ca(appliance), *args], capture_output=True, timeout=60)


def test_curl_http2_is_intercepted_as_http2_and_captured(h2_appliance, h2_origin):
    """curl --http2 gets h2 from the proxy when the origin speaks h2; the flow is HTTP/2.0 with a stream id,
    both TLS sides' ALPN h2, the origin saw HTTP/2."""
    appliance = h2_appliance
    session = appliance.new_session()
    result = curl(appliance, "--http2", "-w", "\n%{http_version}", f"https://localhost:{h2_origin.port}/bytes?n=70000")
    assert result.returncode == 0, result.stderr
    body, version = result.stdout.rsplit(b"\n", 1)
    assert body == pattern(70000) and version == b"2"
    [summary] = appliance.wait_for_flows(session["id"], 1)
    flow = appliance.api("GET", f"/api/flows/{summary['id']}").json()
    assert (flow["http_version"], flow["status"], flow["path"]) == ("2.0", 200, "/bytes?n=70000")
    assert flow["stream_id"] == 1
    assert flow["client_tls"]["alpn"] == "h2" and flow["server_tls"]["alpn"] == "h2"
    assert flow["response"]["size"] == 70000
    echo = curl(appliance, "--http2", "-d", "hello", f"https://localhost:{h2_origin.port}/echo")
    assert json.loads(echo.stdout)["http_version"] == "2" and json.loads(echo.stdout)["size"] == 5


def test_client_connections_share_one_h2_origin_connection(h2_appliance, h2_origin):
    """Three curl --http2 processes, each its own client connection (two of them at once): every request
    reaches the origin on the same TCP connection, and each is its own HTTP/2.0 flow."""
    appliance = h2_appliance
    session = appliance.new_session()
    url = f"https://localhost:{h2_origin.port}/echo"
    first = curl(appliance, "--http2", url)
    args = ["curl", "-sS", "--max-time", "30", "-x", appliance.proxy_url, "--cacert", capture_ca(appliance),
            "--http2", url]
    both = [subprocess.Popen(args, stdout=subprocess.PIPE) for _ in range(2)]
    answers = [json.loads(first.stdout)] + [json.loads(p.communicate(timeout=60)[0]) for p in both]
    assert {a["http_version"] for a in answers} == {"2"}
    assert len({a["client_port"] for a in answers}) == 1, answers
    flows = appliance.wait_for_flows(session["id"], 3)
    assert len(flows) == 3


def test_parallel_streams_are_multiplexed_one_flow_each(h2_appliance, h2_origin):
    """curl --parallel over one h2 connection: every stream answered, one flow per stream, distinct stream ids."""
    appliance = h2_appliance
    session = appliance.new_session()
    urls = [f"https://localhost:{h2_origin.port}/bytes?n={1000 + i}" for i in range(6)]
    args = ["--http2", "--parallel", "--parallel-immediate", "--parallel-max", "6", "-w", "%{num_connects} "]
    for url in urls:
        args += [url, "-o", "/dev/null"]
    result = curl(appliance, *args)
    assert result.returncode == 0, result.stderr
    flows = appliance.wait_for_flows(session["id"], 6)
    details = [appliance.api("GET", f"/api/flows/{f['id']}").json() for f in flows]
    assert sorted(d["response"]["size"] for d in details) == [1000 + i for i in range(6)]
    assert all(d["http_version"] == "2.0" for d in details)
    assert len({(d["client_port"], d["stream_id"]) for d in details}) == 6


def test_origin_without_h2_is_mirrored_to_http11(https_like_appliance, h1_tls_origin):
    """A client offering h2 to an origin that speaks only HTTP/1.1 is given HTTP/1.1, and is served."""
    appliance = https_like_appliance
    result = curl(appliance, "--http2", "-w", "\n%{http_version}", f"https://localhost:{h1_tls_origin.port}/bytes?n=10")
    assert result.returncode == 0, result.stderr
    body, version = result.stdout.rsplit(b"\n", 1)
    assert body == pattern(10) and version == b"1.1"


@pytest.fixture(scope="module")
def h1_tls_origin(origin_ca):
    from conftest import Origin
    server = Origin(*origin_ca.issue("h1", ["localhost", "127.0.0.1"]))
    yield server
    server.stop()


@pytest.fixture
def https_like_appliance(make_appliance, origin_ca):
    return make_appliance(tls={"upstream_ca": origin_ca.path}).start()


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_sse_reaches_the_client_event_by_event(h2_appliance, h2_origin, version):
    """The first Server-Sent Event reaches the client (over HTTP/2 and over HTTP/1.1, chunked) while the
    origin still holds the second one back."""
    appliance = h2_appliance
    name = version.strip("-")
    stream = subprocess.Popen(["curl", "-sS", "-N", version, "--max-time", "30", "-x", appliance.proxy_url,
                               "--cacert", capture_ca(appliance), f"https://localhost:{h2_origin.port}/sse?name={name}"],
                              stdout=subprocess.PIPE)
    try:
        first = stream.stdout.readline()
        assert first == b"data: one\n"
        release = subprocess.run(["curl", "-sS", "-k", "--max-time", "10",
                                  f"https://localhost:{h2_origin.port}/release?name={name}"], capture_output=True,
                                 timeout=20)
        assert release.returncode == 0, release.stderr
        rest = stream.stdout.read()
        assert rest == b"\ndata: two\n\n"
    finally:
        stream.kill()
        stream.wait(timeout=10)


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_bodies_both_ways_over_h2_keep_memory_flat(h2_appliance, h2_origin, tmp_path):
    """128 MiB down and 128 MiB up over HTTP/2 arrive intact while the proxy's peak RSS stays under
    100 MiB: each stream's window opens only as the other side takes the bytes."""
    import hashlib

    from origin import pattern_sha256

    appliance = h2_appliance
    appliance.new_session()
    size = 128 * 1024 * 1024
    download = subprocess.Popen(["curl", "-sS", "--http2", "--max-time", "300", "-x", appliance.proxy_url, "--cacert",
                                 capture_ca(appliance), f"https://localhost:{h2_origin.port}/stream?n={size}"],
                                stdout=subprocess.PIPE)
    digest, received = hashlib.sha256(), 0
    while block := download.stdout.read(1024 * 1024):
        digest.update(block)
        received += len(block)
    assert download.wait(timeout=60) == 0
    assert received == size and digest.hexdigest() == pattern_sha256(size)
    upload = tmp_path / "upload.bin"
    with open(upload, "wb") as out:
        for _ in range(size // (1024 * 1024)):
            out.write(pattern(1024 * 1024))
    echo = curl(appliance, "--http2", "--max-time", "300", "--data-binary", f"@{upload}",
                f"https://localhost:{h2_origin.port}/echo")
    assert echo.returncode == 0, echo.stderr
    answer = json.loads(echo.stdout)
    assert answer["size"] == size and answer["http_version"] == "2"
    assert answer["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
    peak = _peak_kib(appliance.process.pid)
    assert peak < 100 * 1024, f"proxy peak RSS {peak} KiB"
