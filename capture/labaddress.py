"""This machine's address on the lab network, for links a phone or another computer can open."""

from __future__ import annotations

import ipaddress
import re
import socket

_PROBE = ("192.0.2.1", 9)  # TEST-NET-1: connecting a UDP socket picks a route and sends nothing


def lab_address() -> str | None:
    """The local address of the default route, or None when there is only loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE)
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


def listens_everywhere(endpoint: str) -> bool:
    """Whether a ``tcp:PORT[:interface=ADDR]`` listener description binds every interface."""
    parts = [p.replace("\\", "") for p in re.split(r"(?<!\\):", endpoint)]
    options = dict(p.partition("=")[::2] for p in parts[1:] if "=" in p)
    return parts[0] in ("tcp", "tcp6", "ssl") and options.get("interface", "") in ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def reachable_host(asked_host: str, endpoint: str) -> str:
    """The host to put in a link for another device: the one asked for, unless that is loopback
    and the listener is on every interface, where the lab address serves better."""
    if is_loopback(asked_host) and listens_everywhere(endpoint):
        return lab_address() or asked_host
    return asked_host
