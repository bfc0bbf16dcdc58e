"""``[proxy] upstream = system``: the chained proxy named by the appliance's environment.

A lab machine behind a corporate proxy has it in ``http_proxy``,
``https_proxy`` and ``no_proxy``; curl, Python and most tools follow those
variables, so the appliance can too.  Each lookup reads them again (either
case, the lower-case one first, as curl and Python do), so what a request
uses is always what the process's environment says now; the parsed proxy is
cached per value, so a request costs a few dictionary look-ups.

``no_proxy`` follows curl: a comma- or space-separated list of host names
(each also covering its subdomains; a leading dot is allowed), IP addresses,
CIDR networks, optionally ``:port``, or ``*`` for every host.  The
``[proxy] no_upstream`` globs apply as well.

No I/O here: the resolver takes a mapping for an environment, so it is
tested without processes or sockets.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from capture.config import ProxySettings, SystemProxy
from capture.upstream.errors import UpstreamProxyFailed
from capture.upstream.via import Via

DEFAULT_PROXY_PORT = 1080  # curl's default for a proxy named without a port


def _read(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """(variable that was set, its value): the lower-case name wins, as in curl and Python."""
    for key in (name, name.upper()):
        value = environ.get(key)
        if value is not None and value.strip():
            return key, value.strip()
    return "", ""


def parse_proxy(value: str, variable: str) -> Via:
    """A proxy URL as found in the environment; raises UpstreamProxyFailed naming the variable.

    The message never repeats the value: it may hold a password.
    """
    text = value if "://" in value else "http://" + value
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        raise UpstreamProxyFailed(f"{variable} is not a proxy URL ({e})") from None
    if url.scheme.lower() != "http":
        raise UpstreamProxyFailed(f"{variable} names a {url.scheme}:// proxy; only http:// proxies are supported")
    if not url.hostname:
        raise UpstreamProxyFailed(f"{variable} names no host")
    username = password = None
    if url.username is not None:
        username = unquote(url.username)
        password = unquote(url.password or "")
    return Via(url.hostname, port or DEFAULT_PROXY_PORT, username, password)


class _Bypass:
    """One parsed ``no_proxy`` value: which hosts are reached directly."""

    def __init__(self, value: str) -> None:
        self.everything = False
        self.names: list[tuple[str, int | None]] = []
        self.networks: list[tuple[Any, int | None]] = []
        for item in value.replace(",", " ").split():
            item = item.strip().lower()
            if item == "*":
                self.everything = True
                continue
            host, port = _split_port(item)
            try:
                self.networks.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                self.names.append((host.lstrip(".").rstrip("."), port))

    def direct(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        if self.networks:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                address = None
            if address is not None:
                for network, wanted in self.networks:
                    if address in network and wanted in (None, port):
                        return True
        for name, wanted in self.names:
            if name and (host == name or host.endswith("." + name)) and wanted in (None, port):
                return True
        return False


def _split_port(item: str) -> tuple[str, int | None]:
    """'host:port', '[v6]:port' or a bare host / address / network."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        if port.isdigit():
            return host, int(port)
    return item, None


class EnvironmentProxies:
    """Which proxy a request uses, as ``http_proxy``/``https_proxy``/``no_proxy`` say now.

    ``via_for`` is what the upstream pool and raw tunnels ask per connection.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, direct: tuple[str, ...] = ()) -> None:
        self._environ = os.environ if environ is None else environ
        self._direct = direct
        self._proxies: dict[tuple[str, str], Via] = {}
        self._bypass: dict[str, _Bypass] = {}

    def via_for(self, scheme: str, host: str, port: int) -> Via | None:
        """The proxy for this target, or None to connect directly; UpstreamProxyFailed for a bad variable."""
        if any(fnmatch.fnmatchcase(host, pattern) for pattern in self._direct):
            return None
        variable, value = _read(self._environ, "https_proxy" if scheme == "https" else "http_proxy")
        if not value:
            return None
        _, exceptions = _read(self._environ, "no_proxy")
        if exceptions:
            bypass = self._bypass.get(exceptions)
            if bypass is None:
                bypass = self._bypass[exceptions] = _Bypass(exceptions)
                _bound(self._bypass)
            if bypass.direct(host, port):
                return None
        key = (variable, value)
        via = self._proxies.get(key)
        if via is None:
            via = self._proxies[key] = parse_proxy(value, variable)
            _bound(self._proxies)
        return via

    def describe(self) -> dict[str, Any]:
        """For /api/status: what the environment says now, credentials left out."""
        found: dict[str, Any] = {"mode": "system"}
        for name in ("http_proxy", "https_proxy"):
            variable, value = _read(self._environ, name)
            if not value:
                found[name] = None
                continue
            try:
                found[name] = parse_proxy(value, variable).name
            except UpstreamProxyFailed as e:
                found[name] = f"invalid: {e}"
        found["no_proxy"] = _read(self._environ, "no_proxy")[1]
        return found


def _bound(cache: dict[Any, Any]) -> None:
    """The environment changes rarely; a cache that grows anyway is emptied, not kept growing."""
    if len(cache) > 64:
        cache.clear()


def chained_proxy(settings: ProxySettings) -> Via | EnvironmentProxies | None:
    """What ``[proxy] upstream`` asks for: nothing (direct), a configured proxy, or the environment's."""
    chained = settings.upstream
    if chained is None:
        return None
    if isinstance(chained, SystemProxy):
        return EnvironmentProxies(direct=settings.no_upstream)
    return Via(chained.host, chained.port, chained.username, chained.password, settings.no_upstream)
