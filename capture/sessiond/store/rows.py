"""What every backend stores and answers alike: checked session fields, flow columns, summaries.

The store backends differ in SQL and connections, not in what a session or
a flow summary is: the checks of a new session's fields, the summary
columns taken from a flow, and the dictionaries the admin API answers are
here once, so both backends give the same answer to the same call.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

from capture import filters
from capture.flow import Flow, iso_time, media_type
from capture.messages import WebSocketMessage
from capture.sessiond import query
from capture.sessiond.store.interface import MAX_NAME, MAX_PAGE, Invalid

INT64 = (-(2**63), 2**63 - 1)

SESSION_COLUMNS = (
    "id, name, state, created, updated, stopped, clients, filter,"
    " capture_responses, cookies_enabled, cookie_domains, flow_count"
)
SUMMARY_COLUMNS = (
    "f.id, f.time, f.client, f.method, f.scheme, f.host, f.port, f.path, f.url,"
    " f.status, f.request_size, f.response_size, f.content_type, f.duration_ms, f.error, f.appliance"
)
# datetime can show years 1..9999; keep a day's margin either side.
TIME_RANGE = (-62135596800.0 + 86400, 253402300800.0 - 86400)


def combine(
    residual: filters.Filter | None, predicate: Callable[[Flow], bool] | None
) -> Callable[[Flow], bool] | None:
    if predicate is None:
        return residual
    if residual is None:
        return predicate
    return lambda flow: residual(flow) and predicate(flow)



def check_page(limit: object, offset: object) -> None:
    """Invalid unless ``limit`` and ``offset`` ask for a page a store can serve."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be an integer from 1 to {MAX_PAGE}")
    if type(offset) is not int or not 0 <= offset <= INT64[1]:
        raise Invalid("offset must be a non-negative integer")


def plan(expression: object, dialect: query.Dialect, max_params: int) -> query.Query:
    """The filter split into SQL and residual; Invalid naming the position for a bad one.

    ``max_params`` leaves room for the statement's own parameters (session, paging).
    """
    if isinstance(expression, filters.Filter):
        tree = expression
    elif isinstance(expression, str):
        try:
            tree = filters.parse(expression)
        except filters.FilterError as e:
            raise Invalid(f"bad filter: {e}") from None
    else:
        raise Invalid("filter must be a string")
    return query.translate(tree, dialect, max_params - 8)


MAX_WORKER = 1 << 16


def check_worker(worker: object, ended: object) -> None:
    """Invalid unless ``worker`` numbers a proxy process and ``ended`` is a bool (ingest)."""
    if type(worker) is not int or not 0 <= worker < MAX_WORKER:
        raise Invalid(f"worker must be an integer from 0 to {MAX_WORKER - 1}")
    if type(ended) is not bool:
        raise Invalid("ended must be true or false")


def check_orphans(instance: object, worker: object, workers: object) -> int:
    """close_orphans's arguments checked; the lowest worker number past this run's (the whole range for None)."""
    if not isinstance(instance, str) or not instance or "\x00" in instance:
        raise Invalid("instance must be a non-empty string")
    check_worker(worker, False)
    if workers is None:
        return MAX_WORKER
    if type(workers) is not int or not worker < workers <= MAX_WORKER:
        raise Invalid(f"workers must be an integer above worker and at most {MAX_WORKER}")
    return workers


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise Invalid(f"name must be at most {MAX_NAME} characters")
    return name


def check_clients(clients: object) -> list[str]:
    """IPs and CIDRs, normalised: a single address is shown without a prefix."""
    if isinstance(clients, (str, bytes)) or not isinstance(clients, (list, tuple)):
        raise Invalid("clients must be a list of IP addresses or CIDR networks")
    result: list[str] = []
    for client in clients:
        if not isinstance(client, str):
            raise Invalid(f"clients: {client!r} is not a string")
        try:
            network = ipaddress.ip_network(client.strip(), strict=False)
        except ValueError:
            raise Invalid(f"clients: {client!r} is not an IP address or CIDR network") from None
        if network.prefixlen == network.max_prefixlen:
            text = str(network.network_address)
        else:
            text = str(network)
        if text not in result:
            result.append(text)
    return result


def check_cookies(cookies: object) -> tuple[bool, list[str]]:
    if cookies is None:
        return False, []
    if not isinstance(cookies, dict):
        raise Invalid('cookies must be an object {"enabled": bool, "domains": [str]}')
    unknown = set(cookies) - {"enabled", "domains"}
    if unknown:
        raise Invalid(f"cookies: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    enabled = cookies.get("enabled", False)
    if not isinstance(enabled, bool):
        raise Invalid("cookies.enabled must be true or false")
    domains = cookies.get("domains", [])
    if isinstance(domains, str) or not isinstance(domains, (list, tuple)):
        raise Invalid("cookies.domains must be a list of domain names")
    result: list[str] = []
    for domain in domains:
        if not isinstance(domain, str):
            raise Invalid(f"cookies.domains: {domain!r} is not a string")
        # ".example.com" and "example.com" mean the same: it and its subdomains.
        name = domain.strip().lower().strip(".")
        if not name or any(ch.isspace() or ch in "/:@" for ch in name):
            raise Invalid(f"cookies.domains: {domain!r} is not a domain name")
        if name not in result:
            result.append(name)
    return enabled, result


def session_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    (session_id, name, state, created, updated, stopped, clients, filter_,
     capture_responses, cookies_enabled, cookie_domains, flow_count) = row
    return {
        "id": session_id,
        "name": name,
        "state": state,
        "created": iso_time(created),
        "updated": iso_time(updated),
        "stopped": None if stopped is None else iso_time(stopped),
        "clients": json.loads(clients),
        "filter": filter_,
        "capture_responses": bool(capture_responses),
        "cookies": {"enabled": bool(cookies_enabled), "domains": json.loads(cookie_domains)},
        "flow_count": flow_count,
    }


def link_targets(session_ids: object, existing: set[int]) -> list[int]:
    """The sessions a flow goes to: those named that still exist, once each."""
    if not isinstance(session_ids, (list, tuple)):
        raise ValueError("session ids must be a list")
    targets: list[int] = []
    for session_id in session_ids:
        if type(session_id) is not int:
            raise ValueError("session id must be an integer")
        if session_id in existing and session_id not in targets:
            targets.append(session_id)
    return targets


def flow_row(flow: Flow) -> tuple[Any, ...]:
    """The summary columns; ValueError for what SQLite or the API could not hold.

    Called for every flow stored, so each header is looked up once.
    """
    for moment in (flow.start, flow.request_done, flow.response_start, flow.end):
        if moment is not None and not (
            math.isfinite(moment) and TIME_RANGE[0] < moment < TIME_RANGE[1]
        ):
            raise ValueError("flow time out of range")
    response = flow.response
    response_size = response.size if response is not None else 0
    for number in (flow.client_port, flow.port, flow.status, flow.request.size, response_size):
        if not INT64[0] <= number <= INT64[1]:
            raise ValueError("flow number out of range")
    url = flow.url
    has_response, request_type, response_type, plain = derived_columns(flow, url)
    return (
        flow.start,
        flow.client,
        flow.client_port,
        flow.method,
        flow.scheme,
        flow.host,
        flow.port,
        flow.path,
        url,
        flow.status,
        flow.request.size,
        response_size,
        media_type(response_type),  # Flow.content_type, from the header already found
        flow.duration_ms,
        flow.error,
        flow.kind,
        has_response,
        request_type,
        response_type,
        plain,
    )


def derived_columns(flow: Flow, url: str) -> tuple[int, str | None, str | None, int]:
    """has_response, request_type, response_type, plain: see :mod:`capture.sessiond.store.sqlite`, schema version 2.

    ``url`` is ``flow.url``, which the caller needs too and builds once.
    """
    response = flow.response
    request_type = flow.request.header("content-type")
    response_type = None if response is None else response.header("content-type")
    return (int(response is not None), request_type, response_type,
            plain(flow.method, url, flow.host, flow.client, request_type or "", response_type or ""))


def plain(*texts: str) -> int:
    """1 when every searched text is printable ASCII, so SQL's case folding matches Python's."""
    joined = "".join(texts)
    return int(joined.isascii() and joined.isprintable())


def summary_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """``Flow.summary()`` plus ``id`` and ``appliance``, from the columns without the blob."""
    (flow_id, moment, client, method, scheme, host, port, path, url, status,
     request_size, response_size, content_type, duration_ms, error, appliance) = row
    return {
        "id": flow_id,
        "time": iso_time(moment),
        "client": client,
        "method": method,
        "scheme": scheme,
        "host": host,
        "port": port,
        "path": path,
        "url": url,
        "status": status or None,
        "request_size": request_size,
        "response_size": response_size,
        "content_type": content_type,
        "duration_ms": duration_ms,
        "error": error or None,
        "appliance": appliance or None,
    }



class _Captured:
    """A flow with what the store knows beyond it, for filters that ask.

    ``appliance`` captured it (``~via``); ``websocket_messages``, when not
    None, reads a WebSocket's messages in order (``~b ~bq ~bs``).  Every
    other attribute is the flow's own.
    """

    __slots__ = ("_flow", "appliance", "websocket_messages")

    def __init__(self, flow: Flow, appliance: str, messages: Callable[[], Iterator[WebSocketMessage]] | None) -> None:
        self._flow = flow
        self.appliance = appliance
        self.websocket_messages = messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._flow, name)


class FilterView:
    """How a store hands a decoded flow to a residual filter: with only what the filter reads.

    ``messages(flow_id)`` iterates a flow's stored WebSocket messages; it is
    handed on only when the filter has a body term (``~b ~bq ~bs``) and the
    flow is a WebSocket, and it runs only if that term is reached, so a
    filter without one never reads a message.
    """

    __slots__ = ("_via", "_messages")

    def __init__(self, tree: filters.Filter | None, messages: Callable[[int], Iterator[WebSocketMessage]]) -> None:
        self._via = _uses(tree, _VIA)
        self._messages = messages if _uses(tree, _BODIES) else None

    def __call__(self, flow_id: int, appliance: str, flow: Flow) -> Flow:
        messages = None
        if self._messages is not None and flow.kind == "websocket":
            messages = functools.partial(self._messages, flow_id)
        if messages is None and not self._via:
            return flow
        return _Captured(flow, appliance, messages)  # type: ignore[return-value]


_VIA = frozenset({"via"})
_BODIES = frozenset({"b", "bq", "bs"})


def _uses(tree: filters.Filter | None, names: frozenset[str]) -> bool:
    """Has the filter a regex term named one of ``names``?"""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (filters.And, filters.Or)):
            stack += (node.left, node.right)
        elif isinstance(node, filters.Not):
            stack.append(node.inner)
        elif isinstance(node, filters.Regex) and node.name in names:
            return True
    return False


def stats_result(session_id: str, totals: tuple[Any, ...], groups: dict[str, Any]) -> dict[str, Any]:
    """``/stats``'s answer from either backend's sums: totals, then each group's (key, count, sent, received) rows."""
    count, request_bytes, response_bytes, first, last, duration = totals
    result: dict[str, Any] = {
        "session_id": session_id,
        "flows": count,
        "request_bytes": int(request_bytes),
        "response_bytes": int(response_bytes),
        "first": None if first is None else iso_time(first),
        "last": None if last is None else iso_time(last),
        "duration_ms": round(float(duration), 3),
        "span_ms": None if first is None else round((last - first) * 1000.0, 3),
    }
    for name, rows in groups.items():
        result[name] = [
            {"key": key, "count": n, "request_bytes": int(sent), "response_bytes": int(received)}
            for key, n, sent, received in rows
        ]
    return result
