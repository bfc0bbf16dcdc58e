"""Tests for capture.rules: pushed session rules compiled for the proxy."""

from __future__ import annotations

import ipaddress

from capture.flow import Flow, Message
from capture.rules import RuleSet, SessionRule, matching_sessions


def make_flow(**overrides) -> Flow:
    """A finished GET to api.example.com with a 200 response, changed by ``overrides``."""
    values = dict(
        client="10.0.0.7",
        client_port=50000,
        scheme="http",
        host="api.example.com",
        port=80,
        method="GET",
        path="/items",
        request=Message(headers=((b"Host", b"api.example.com"),)),
        status=200,
        reason="OK",
        response=Message(headers=((b"Content-Type", b"text/plain"),), body=b"ok", size=2),
        start=1700000000.0,
        end=1700000000.5,
    )
    values.update(overrides)
    return Flow(**values)


def session(session_id: int, clients=(), filter: str = "", **extra) -> dict:
    """A session dict as the session manager pushes it."""
    return {"id": session_id, "clients": list(clients), "filter": filter, "state": "capturing", **extra}


def ids(rules: tuple[SessionRule, ...]) -> list[int]:
    return [rule.session_id for rule in rules]


def test_from_sessions_compiles_networks_and_filter() -> None:
    """Clients become networks (single IPs as /32 or /128) and the filter a predicate."""
    ruleset = RuleSet.from_sessions(
        [session(3, ["10.0.0.0/24", "192.168.1.5", "2001:db8::1"], "~m POST", capture_responses=False)]
    )
    (rule,) = ruleset.rules
    assert rule.session_id == 3
    assert rule.networks == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("2001:db8::1/128"),
    )
    assert rule.capture_responses is False
    assert rule.matches(make_flow(method="POST")) is True
    assert rule.matches(make_flow(method="GET")) is False


def test_from_sessions_defaults() -> None:
    """Missing clients, filter and capture_responses mean every client, every flow, responses kept."""
    (rule,) = RuleSet.from_sessions([{"id": 9}]).rules
    assert rule.networks == ()
    assert rule.capture_responses is True
    assert rule.matches(make_flow()) is True


def test_from_sessions_non_strict_cidr() -> None:
    """A CIDR with host bits set is accepted as its network."""
    (rule,) = RuleSet.from_sessions([session(1, ["10.0.0.7/24"])]).rules
    assert rule.networks == (ipaddress.ip_network("10.0.0.0/24"),)


def test_bad_filter_skips_only_that_session() -> None:
    """A session whose filter does not parse is skipped; the others still compile."""
    ruleset = RuleSet.from_sessions([session(1, filter="~m GET"), session(2, filter="~m ("), session(3)])
    assert ids(ruleset.rules) == [1, 3]


def test_bad_client_or_id_skips_only_that_session() -> None:
    """A bad CIDR or a missing id skips that session alone."""
    ruleset = RuleSet.from_sessions(
        [session(1, ["not-an-ip"]), {"clients": []}, session(4, ["10.0.0.0/33"]), session(5)]
    )
    assert ids(ruleset.rules) == [5]


def test_non_map_session_is_skipped() -> None:
    """A pushed session that is not a map is skipped like any other bad rule, not an exception."""
    ruleset = RuleSet.from_sessions([["not", "a", "map"], session(2)])  # type: ignore[list-item]
    assert ids(ruleset.rules) == [2]


def test_empty_ruleset() -> None:
    """No sessions: nothing is captured for anybody."""
    assert RuleSet().for_client("10.0.0.7") == ()
    assert RuleSet.from_sessions([]).for_client("10.0.0.7") == ()


def test_for_client_empty_clients_means_all() -> None:
    """A session with no clients applies to every client, IPv4 and IPv6."""
    ruleset = RuleSet.from_sessions([session(1)])
    assert ids(ruleset.for_client("10.1.2.3")) == [1]
    assert ids(ruleset.for_client("2001:db8::5")) == [1]


def test_for_client_specific_ips_and_cidrs() -> None:
    """Sessions apply only to their listed IPs and networks."""
    ruleset = RuleSet.from_sessions(
        [
            session(1, ["10.0.0.7"]),
            session(2, ["10.0.0.0/24"]),
            session(3, ["192.168.0.0/16", "2001:db8::/32"]),
            session(4),
        ]
    )
    assert ids(ruleset.for_client("10.0.0.7")) == [1, 2, 4]
    assert ids(ruleset.for_client("10.0.0.8")) == [2, 4]
    assert ids(ruleset.for_client("10.0.1.1")) == [4]
    assert ids(ruleset.for_client("192.168.44.1")) == [3, 4]
    assert ids(ruleset.for_client("2001:db8::99")) == [3, 4]
    assert ids(ruleset.for_client("2001:db9::1")) == [4]


def test_for_client_ipv4_mapped_ipv6() -> None:
    """A client seen as ::ffff:a.b.c.d (dual-stack listener) matches IPv4 rules."""
    ruleset = RuleSet.from_sessions([session(1, ["10.0.0.0/24"]), session(2, ["10.0.0.9"])])
    assert ids(ruleset.for_client("::ffff:10.0.0.9")) == [1, 2]
    assert ids(ruleset.for_client("::ffff:10.0.5.9")) == []


def test_for_client_not_an_address() -> None:
    """A client string that is not an IP matches nothing, not even catch-all sessions."""
    ruleset = RuleSet.from_sessions([session(1)])
    assert ruleset.for_client("unix:/tmp/sock") == ()


def test_for_client_cache_returns_same_answer() -> None:
    """A second lookup for the same client gives the same candidates (cached)."""
    ruleset = RuleSet.from_sessions([session(1, ["10.0.0.0/8"])])
    first = ruleset.for_client("10.9.9.9")
    assert ruleset.for_client("10.9.9.9") is first
    assert ids(first) == [1]


def test_for_client_cache_bounded() -> None:
    """The per-client cache is cleared when it grows past its bound, and answers stay right."""
    ruleset = RuleSet.from_sessions([session(1, ["10.0.0.0/8"])])
    for n in range(5000):
        ruleset.for_client(f"10.0.{n // 256}.{n % 256}")
    assert len(ruleset._by_client) <= 4097
    assert ids(ruleset.for_client("10.0.0.1")) == [1]
    assert ruleset.for_client("11.0.0.1") == ()


def test_matching_sessions_applies_filters() -> None:
    """matching_sessions keeps the candidates whose filter accepts the flow, in order."""
    ruleset = RuleSet.from_sessions(
        [
            session(1, filter="~d api.example.com"),
            session(2, filter="~m POST"),
            session(3),
            session(4, filter="~c 404"),
            session(5, filter="!~m POST"),
        ]
    )
    candidates = ruleset.for_client("10.0.0.7")
    assert matching_sessions(candidates, make_flow()) == [1, 3, 5]
    assert matching_sessions(candidates, make_flow(method="POST", host="other.org")) == [2, 3]
    assert matching_sessions(candidates, make_flow(status=404)) == [1, 3, 4, 5]
    assert matching_sessions((), make_flow()) == []


def test_matching_sessions_takes_plain_fields() -> None:
    """The proxy's plain field tuples are filtered like a Flow."""
    flow = make_flow(method="POST")
    fields = (*flow[:8], (list(flow.request.headers), *flow.request[1:]), *flow[9:11], tuple(flow.response), *flow[12:])
    candidates = RuleSet.from_sessions([session(1, filter="~m POST"), session(2, filter="~m GET"), session(3)]).rules
    assert matching_sessions(candidates, fields) == [1, 3]


def test_sessions_that_take_everything_do_not_look_at_the_flow() -> None:
    """No flow is built, and no filter called, when every candidate takes everything."""
    rules = RuleSet.from_sessions([session(1), session(2, filter="~all"), session(3, filter="~m GET")]).rules
    assert [rule.everything for rule in rules] == [True, True, False]
    assert matching_sessions(rules[:2], ()) == [1, 2]  # () would fail to build into a Flow
