"""``upstream = system``: the appliance chains through the proxy its environment names (a real tinyproxy)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from certs import OriginCA
from conftest import Origin
from origin import pattern
from tinyproxy import TinyProxy


@pytest.fixture
def tinyproxy(tmp_path):
    proxy = TinyProxy(tmp_path)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    ca = OriginCA(tmp_path_factory.mktemp("system-proxy-tls"), "system proxy origin CA")
    origin = Origin(*ca.issue("good", ["localhost"]))
    origin.ca = ca
    yield origin
    origin.stop()


def curl(appliance, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", "--noproxy", "", "-x", appliance.proxy_url,
                           "--cacert", str(appliance.var / "ca" / "ca.pem"), *args], capture_output=True, timeout=60)


def system_appliance(make_appliance, tls_origin, **env: str):
    appliance = make_appliance(proxy={"upstream": "system"}, tls={"upstream_ca": tls_origin.ca.path})
    appliance.env = env
    return appliance.start()


def test_http_and_https_follow_the_environment(make_appliance, tinyproxy, origin, tls_origin):
    """http_proxy carries plain HTTP in absolute form, https_proxy HTTPS by CONNECT; both captured; status names them."""
    appliance = system_appliance(make_appliance, tls_origin, http_proxy=tinyproxy.url, HTTPS_PROXY=tinyproxy.url)
    session = appliance.new_session()
    assert curl(appliance, f"{origin.url}/bytes?n=8").stdout == pattern(8)
    result = curl(appliance, f"https://localhost:{tls_origin.port}/bytes?n=9")
    assert result.stdout == pattern(9), result.stderr
    assert tinyproxy.seen() == [f"GET {origin.url}/bytes?n=8", f"CONNECT localhost:{tls_origin.port}"]
    flows = appliance.wait_for_flows(session["id"], 2)
    assert [(f["scheme"], f["status"], f["error"]) for f in flows] == [("http", 200, None), ("https", 200, None)]
    upstream = appliance.status()["upstream"]
    assert upstream == {"mode": "system", "http_proxy": f"127.0.0.1:{tinyproxy.port}",
                        "https_proxy": f"127.0.0.1:{tinyproxy.port}", "no_proxy": ""}


def test_no_proxy_hosts_are_reached_directly(make_appliance, tinyproxy, origin, tls_origin):
    """Hosts in no_proxy (here by IP and by name) bypass the environment's proxy; others still use it."""
    appliance = system_appliance(make_appliance, tls_origin, http_proxy=tinyproxy.url, https_proxy=tinyproxy.url,
                                 no_proxy="127.0.0.1,.localhost")
    assert curl(appliance, f"{origin.url}/bytes?n=3").stdout == pattern(3)
    assert curl(appliance, f"https://localhost:{tls_origin.port}/bytes?n=4").stdout == pattern(4)
    assert tinyproxy.seen() == []
    assert appliance.status()["upstream"]["no_proxy"] == "127.0.0.1,.localhost"


def test_credentials_in_the_variable_are_sent(make_appliance, tmp_path, origin, tls_origin):
    """user:password in http_proxy becomes Proxy-Authorization, which tinyproxy's BasicAuth accepts."""
    guarded = TinyProxy(tmp_path, "guarded", credentials=("lab", "s3cret"))
    try:
        url = f"http://lab:s3cret@127.0.0.1:{guarded.port}"
        appliance = system_appliance(make_appliance, tls_origin, http_proxy=url, https_proxy=url)
        assert curl(appliance, f"{origin.url}/bytes?n=5").stdout == pattern(5)
        result = curl(appliance, f"https://localhost:{tls_origin.port}/bytes?n=6")
        assert result.stdout == pattern(6), result.stderr
        assert len(guarded.seen()) == 2
        assert "s3cret" not in str(appliance.status()["upstream"])
    finally:
        guarded.stop()


def test_unreachable_or_unusable_proxy_is_502_naming_it(make_appliance, origin, tls_origin):
    """A dead proxy in http_proxy and a socks5:// https_proxy both give 502s that say so, and flows with the error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    appliance = system_appliance(make_appliance, tls_origin, http_proxy=f"http://127.0.0.1:{dead}",
                                 https_proxy="socks5://127.0.0.1:1080")
    session = appliance.new_session()
    result = curl(appliance, "-w", "\n%{http_code}", f"{origin.url}/bytes?n=1")
    assert result.stdout.endswith(b"\n502")
    assert f"upstream proxy 127.0.0.1:{dead}: connection refused".encode() in result.stdout
    result = curl(appliance, "-w", "\n%{http_code}", f"https://localhost:{tls_origin.port}/")
    assert result.stdout.endswith(b"\n502"), result
    assert b"https_proxy names a socks5:// proxy" in result.stdout
    flows = appliance.wait_for_flows(session["id"], 2)
    assert f"upstream proxy 127.0.0.1:{dead}: connection refused" in flows[0]["error"]
    assert "https_proxy names a socks5:// proxy" in flows[1]["error"]
    assert appliance.status()["upstream"]["https_proxy"].startswith("invalid: https_proxy names a socks5://")


def test_unset_environment_means_direct(make_appliance, origin, tls_origin):
    """upstream = system with no proxy variables connects directly."""
    appliance = system_appliance(make_appliance, tls_origin)
    assert curl(appliance, f"{origin.url}/bytes?n=2").stdout == pattern(2)
    assert appliance.status()["upstream"] == {"mode": "system", "http_proxy": None, "https_proxy": None, "no_proxy": ""}
