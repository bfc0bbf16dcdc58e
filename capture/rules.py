"""Session rules as the proxy holds them: which sessions capture which flows.

The session manager pushes the capturing sessions whenever they change; the
proxy compiles them here once and then decides per request, without a round
trip, which sessions want an exchange.  Pure logic, no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

from capture import filters
from capture.flow import Flow

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SessionRule:
    """What one capturing session records."""

    session_id: int
    networks: tuple[Network, ...]
    matches: Callable[[Flow], bool]
    capture_responses: bool
    everything: bool = False  # the filter matches every flow: no need to call it per flow

    def wants_client(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return not self.networks or any(address in net for net in self.networks)


class RuleSet:
    """The compiled rules, with a per-client cache of candidate sessions."""

    def __init__(self, rules: tuple[SessionRule, ...] = ()) -> None:
        self.rules = rules
        self._by_client: dict[str, tuple[SessionRule, ...]] = {}

    @classmethod
    def from_sessions(cls, sessions: list[dict[str, Any]]) -> RuleSet:
        """Compile pushed session dicts; a session whose rule will not compile is skipped."""
        compiled = []
        for session in sessions:
            try:
                compiled.append(_compile(session))
            except (AttributeError, KeyError, TypeError, ValueError):
                continue  # one bad rule must not stop capture for the others
        return cls(tuple(compiled))

    def for_client(self, client: str) -> tuple[SessionRule, ...]:
        """Sessions that may capture this client's exchanges."""
        found = self._by_client.get(client)
        if found is None:
            if len(self._by_client) > 4096:
                self._by_client.clear()
            address = _client_address(client)
            found = tuple(r for r in self.rules if address is not None and r.wants_client(address))
            self._by_client[client] = found
        return found


def matching_sessions(candidates: tuple[SessionRule, ...], fields: tuple[Any, ...]) -> list[int]:
    """Ids of the candidate sessions whose filter accepts the finished flow.

    The flow comes as a ``Flow`` or as its fields (``Flow.from_fields``): it is
    built only if some session's filter has to look at it.
    """
    found = []
    flow = None
    for rule in candidates:
        if not rule.everything:
            if flow is None:
                flow = Flow.from_fields(fields)
            if not rule.matches(flow):
                continue
        found.append(rule.session_id)
    return found


def _compile(session: dict[str, Any]) -> SessionRule:
    networks = tuple(ipaddress.ip_network(c, strict=False) for c in session.get("clients") or ())
    matches = filters.parse(session.get("filter") or "")
    return SessionRule(
        session_id=int(session["id"]),
        networks=networks,
        matches=matches,
        capture_responses=bool(session.get("capture_responses", True)),
        everything=matches == filters.Const(True),
    )


def _client_address(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
