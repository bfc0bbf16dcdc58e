"""capture.envproxy: which proxy ``upstream = system`` uses, read from an environment mapping (no sockets)."""

from __future__ import annotations

import pytest

from capture.config import SystemProxy, parse
from capture.envproxy import EnvironmentProxies, chained_proxy
from capture.upstream.errors import UpstreamProxyFailed
from capture.upstream.via import Via


def route(environ: dict[str, str], scheme: str = "http", host: str = "example.com", port: int = 80,
          direct: tuple[str, ...] = ()) -> str | None:
    via = EnvironmentProxies(environ, direct).via_for(scheme, host, port)
    return via.name if via is not None else None


def test_http_and_https_use_their_own_variable():
    """http targets follow http_proxy, https targets (and CONNECT tunnels) https_proxy."""
    environ = {"http_proxy": "http://plain.lab:3128", "https_proxy": "http://secure.lab:3129"}
    assert route(environ, "http") == "plain.lab:3128"
    assert route(environ, "https", port=443) == "secure.lab:3129"
    assert route({"http_proxy": "http://plain.lab:3128"}, "https") is None


def test_either_case_lower_case_first():
    """HTTP_PROXY works alone; when both cases are set the lower-case one wins, as in curl and Python."""
    assert route({"HTTP_PROXY": "http://upper.lab:1"}) == "upper.lab:1"
    assert route({"HTTPS_PROXY": "http://upper.lab:2"}, "https") == "upper.lab:2"
    assert route({"HTTP_PROXY": "http://upper.lab:1", "http_proxy": "http://lower.lab:1"}) == "lower.lab:1"
    assert route({"http_proxy": "http://p:1", "NO_PROXY": "example.com"}) is None


def test_read_per_lookup():
    """A change to the environment applies to the next lookup, not only at start."""
    environ = {"http_proxy": "http://first.lab:1"}
    proxies = EnvironmentProxies(environ)
    assert proxies.via_for("http", "example.com", 80).name == "first.lab:1"
    environ["http_proxy"] = "http://second.lab:2"
    assert proxies.via_for("http", "example.com", 80).name == "second.lab:2"
    environ["no_proxy"] = "*"
    assert proxies.via_for("http", "example.com", 80) is None
    del environ["http_proxy"], environ["no_proxy"]
    assert proxies.via_for("http", "example.com", 80) is None


@pytest.mark.parametrize("no_proxy, host, port, direct", [
    ("example.com", "example.com", 80, True),
    ("example.com", "api.example.com", 80, True),
    (".example.com", "api.example.com", 80, True),
    (".example.com", "example.com", 80, True),
    ("example.com", "badexample.com", 80, False),
    ("EXAMPLE.com", "Api.Example.COM", 80, True),
    ("a.test, example.com", "example.com", 80, True),
    ("a.test example.com", "example.com", 80, True),
    ("*", "anything.test", 80, True),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
    ("127.0.0.1", "127.0.0.1", 80, True),
    ("::1", "::1", 80, True),
    ("example.com:8080", "example.com", 8080, True),
    ("example.com:8080", "example.com", 80, False),
    ("[::1]:8080", "::1", 8080, True),
    ("", "example.com", 80, False),
])
def test_no_proxy_as_curl_reads_it(no_proxy, host, port, direct):
    """no_proxy entries: domains with their subdomains, a leading dot, *, IPs, CIDR, :port."""
    environ = {"http_proxy": "http://p.lab:3128", "no_proxy": no_proxy}
    assert (route(environ, host=host, port=port) is None) is direct


def test_no_upstream_globs_apply_too():
    """[proxy] no_upstream globs send a host direct even when the environment names a proxy."""
    assert route({"http_proxy": "http://p.lab:1"}, host="intra.corp", direct=("*.corp",)) is None
    assert route({"http_proxy": "http://p.lab:1"}, host="intra.example", direct=("*.corp",)) == "p.lab:1"


def test_proxy_urls():
    """Credentials become Basic auth; a bare host:port is http; no port is curl's 1080."""
    via = EnvironmentProxies({"http_proxy": "http://us%40er:p%3Ass@p.lab:8080"}).via_for("http", "x", 80)
    assert (via.host, via.port) == ("p.lab", 8080)
    assert via.authorization == Via("p.lab", 8080, "us@er", "p:ss").authorization
    assert route({"http_proxy": "p.lab:3128"}) == "p.lab:3128"
    assert route({"http_proxy": "http://p.lab"}) == "p.lab:1080"
    assert route({"http_proxy": "http://p.lab:3128/"}) == "p.lab:3128"


@pytest.mark.parametrize("value, words", [
    ("socks5://p.lab:1080", "names a socks5:// proxy"),
    ("https://p.lab:443", "names a https:// proxy"),
    ("http://p.lab:99999", "is not a proxy URL"),
    ("http://:3128", "names no host"),
])
def test_bad_variable_is_a_clear_failure_without_the_password(value, words):
    """A value we cannot use fails the lookup with UpstreamProxyFailed naming the variable, never its secret."""
    with pytest.raises(UpstreamProxyFailed) as raised:
        EnvironmentProxies({"https_proxy": value.replace("p.lab", "user:secret@p.lab")}).via_for("https", "x", 443)
    assert "https_proxy" in str(raised.value) and words in str(raised.value)
    assert "secret" not in str(raised.value)


def test_describe_for_status_hides_credentials():
    """/api/status's view names each proxy by host:port and the no_proxy list."""
    described = EnvironmentProxies({"HTTPS_PROXY": "http://u:secret@s.lab:1", "no_proxy": "localhost"}).describe()
    assert described == {"mode": "system", "http_proxy": None, "https_proxy": "s.lab:1", "no_proxy": "localhost"}


def test_config_upstream_system():
    """upstream = system parses to SystemProxy and builds the environment resolver with no_upstream."""
    settings = parse("[proxy]\nupstream = system\nno_upstream = *.corp\n")
    assert settings.proxy.upstream == SystemProxy()
    chained = chained_proxy(settings.proxy)
    assert isinstance(chained, EnvironmentProxies)
    configured = chained_proxy(parse("[proxy]\nupstream = http://p.lab:3128\n").proxy)
    assert configured.describe() == {"mode": "configured", "proxy": "p.lab:3128"}
    assert chained_proxy(parse("").proxy) is None
