"""Chaining: the appliance sends its outgoing traffic through another proxy."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from certs import OriginCA
from conftest import REPO, Origin, child_env
from origin import pattern


class ChainProxy:
    """tests/chain_proxy.py in its own process."""

    def __init__(self, directory, credentials: str | None = None) -> None:
        self.log_path = directory / "chain.log"
        self.log_path.write_text("")
        args = [sys.executable, str(REPO / "tests" / "chain_proxy.py"), str(self.log_path)]
        self.process = subprocess.Popen(args + ([credentials] if credentials else []), stdout=subprocess.PIPE,
                                        text=True, env=child_env())
        self.port = int(self.process.stdout.readline().split()[1])

    def seen(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def chain(tmp_path):
    proxy = ChainProxy(tmp_path, "lab:s3cret")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chain-tls")
    ca = OriginCA(directory, "chain origin CA")
    origin = Origin(*ca.issue("good", ["localhost"]))
    origin.ca = ca
    yield origin
    origin.stop()


def curl(appliance, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", "-x", appliance.proxy_url,
                           "--cacert", str(appliance.var / "ca" / "ca.pem"), *args], capture_output=True, timeout=60)


def test_http_and_https_go_through_the_chained_proxy(make_appliance, chain, origin, tls_origin):
    """Plain HTTP goes in absolute form, HTTPS by CONNECT with our interception inside; both captured."""
    appliance = make_appliance(
        proxy={"upstream": f"http://lab:s3cret@127.0.0.1:{chain.port}"},
        tls={"upstream_ca": tls_origin.ca.path},
    ).start()
    session = appliance.new_session()
    assert curl(appliance, f"{origin.url}/bytes?n=8").stdout == pattern(8)
    result = curl(appliance, f"https://localhost:{tls_origin.port}/bytes?n=9")
    assert result.stdout == pattern(9), result.stderr
    assert chain.seen() == [f"GET {origin.url}/bytes?n=8", f"CONNECT localhost:{tls_origin.port}"]
    flows = appliance.wait_for_flows(session["id"], 2)
    assert [(f["scheme"], f["status"]) for f in flows] == [("http", 200), ("https", 200)]


def test_no_upstream_hosts_are_reached_directly(make_appliance, chain, origin):
    """Hosts matching no_upstream bypass the chained proxy."""
    appliance = make_appliance(proxy={"upstream": f"http://lab:s3cret@127.0.0.1:{chain.port}",
                                      "no_upstream": "127.0.0.*"}).start()
    assert curl(appliance, f"{origin.url}/bytes?n=3").stdout == pattern(3)
    assert chain.seen() == []


def test_chained_proxy_refusal_is_502_naming_it(make_appliance, chain, origin, tls_origin):
    """Wrong credentials: both HTTP and HTTPS get a 502 that names the upstream proxy."""
    appliance = make_appliance(proxy={"upstream": f"http://lab:wrong@127.0.0.1:{chain.port}"},
                               tls={"upstream_ca": tls_origin.ca.path}).start()
    for url in (f"{origin.url}/bytes?n=1", f"https://localhost:{tls_origin.port}/"):
        result = curl(appliance, "-w", "\n%{http_code}", url)
        text = result.stdout.decode()
        assert text.endswith("\n502"), text
        assert f"upstream proxy 127.0.0.1:{chain.port}" in text and "407" in text, text


def test_chained_proxy_down_is_502_naming_it(make_appliance, origin):
    """An upstream proxy that cannot be reached gives a 502 naming it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    appliance = make_appliance(proxy={"upstream": f"http://127.0.0.1:{dead}"}).start()
    result = curl(appliance, "-w", "\n%{http_code}", f"{origin.url}/bytes?n=1")
    assert result.stdout.endswith(b"\n502")
    assert f"upstream proxy 127.0.0.1:{dead}: connection refused".encode() in result.stdout
