"""How ``capturectl`` shows things to people: tables, sizes, times, one flow in full.

Pure functions over the admin API's JSON, so they are tested without a network.
Times are shown in the local time zone; the API's ISO 8601 UTC is in ``--json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

FLOW_HEADERS = ("ID", "TIME", "CLIENT", "METHOD", "STATUS", "SIZE", "DURATION", "URL")
# Widths for lines printed one at a time (tail), where the widest value is not known ahead.
TAIL_WIDTHS = (6, 12, 15, 7, 6, 9, 8)
MIN_LAST_COLUMN = 20


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1000:
        return f"{size} B"
    for unit in ("kB", "MB", "GB", "TB"):
        size /= 1000
        if size < 999.95 or unit == "TB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes}m{seconds:02d}s"


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def local_time(iso: str | None, spec: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An API time in the local zone; ``%f`` in ``spec`` becomes milliseconds."""
    moment = parse_time(iso)
    if moment is None:
        return iso or "-"
    moment = moment.astimezone()
    return moment.strftime(spec.replace("%f", f"{moment.microsecond // 1000:03d}"))


def truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 3, 0)] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int | None = None) -> list[str]:
    """Left-aligned columns two spaces apart; the last one is cut to fit ``width`` (if any)."""
    rows = [list(row) for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    last = widths[-1] if width is None else max(width - fixed, MIN_LAST_COLUMN)
    lines = []
    for row in [list(headers)] + rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths)] + [truncate(row[-1], last)]
        lines.append("  ".join(cells).rstrip())
    return lines


def key_values(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    """``key: value`` lines with the values lined up."""
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return [f"{key + ':':<{width}} {value}" for key, value in pairs]


# -- status and sessions -----------------------------------------------------------


def status_lines(status: dict[str, Any], admin_url: str) -> list[str]:
    manager = status.get("session_manager") or {}
    listeners = status.get("listeners") or {}
    if manager.get("connected"):
        state = f"connected, pid {manager.get('pid')}"
        state += ", responding" if manager.get("responding") else ", not responding"
        if manager.get("sessions") is not None:
            state += f", {manager['sessions']} session(s)"
    else:
        state = "not connected"
    passthrough = status.get("auto_passthrough") or []
    pairs: list[tuple[str, Any]] = [
        ("version", status.get("version", "?")),
        ("admin API", admin_url),
        ("proxy listener", listeners.get("proxy") or "-"),
        ("admin listener", listeners.get("admin") or "-"),
        ("session manager", state),
        ("manager restarts", manager.get("restarts", 0)),
        ("appliance", status.get("appliance") or "-"),
        ("database", database_line(status.get("database"))),
    ]
    workers = status.get("workers")
    if isinstance(workers, dict):
        pairs.append(("proxy workers", f"{workers.get('running')} of {workers.get('configured')} running,"
                                       f" {workers.get('restarts', 0)} restart(s)"))
    pairs += [
        ("pending flows", status.get("pending_flows", 0)),
        ("spilled flows", status.get("spilled_flows", 0)),
        ("dropped flows", status.get("dropped_flows", 0)),
        ("client connections", status.get("client_connections", 0)),
        ("auto-passthrough", f"{len(passthrough)} host(s)"),
        ("CA SHA-256", status.get("ca_sha256", "-")),
    ]
    return key_values(pairs)


def database_line(database: Any) -> str:
    """The store in a few words: which, and plainly whether it answers and why not."""
    if not isinstance(database, dict):
        return "-"
    name = database.get("url") or f"{database.get('backend', '?')} {database.get('path') or ''}".strip()
    if database.get("reachable") is None:
        return f"{database.get('error') or 'unknown'}"
    if database.get("reachable"):
        return f"{name}, reachable"
    since = f" since {database['since']}" if database.get("since") else ""
    return f"{name}, UNREACHABLE{since}: {database.get('error') or 'no reason given'}"


def session_rows(sessions: Iterable[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(s["id"]),
            s.get("name") or "",
            s.get("state") or "",
            ", ".join(s.get("clients") or []) or "all",
            s.get("filter") or "-",
            str(s.get("flow_count", 0)),
            local_time(s.get("created")),
        ]
        for s in sessions
    ]


SESSION_HEADERS = ("ID", "NAME", "STATE", "CLIENTS", "FILTER", "FLOWS", "CREATED")


def session_summary(s: dict[str, Any]) -> str:
    cookies = s.get("cookies") or {}
    if cookies.get("enabled"):
        cookie_text = "cookies " + (", ".join(cookies.get("domains") or []) or "all domains")
    else:
        cookie_text = "cookies off"
    return "; ".join([
        f"session {s['id']} {s.get('name')!r}: {s.get('state')}",
        "clients " + (", ".join(s.get("clients") or []) or "all"),
        "filter " + (repr(s["filter"]) if s.get("filter") else "none"),
        "responses " + ("stored" if s.get("capture_responses", True) else "not stored"),
        cookie_text,
        f"{s.get('flow_count', 0)} flow(s)",
    ])


# -- flows ---------------------------------------------------------------------------


def flow_row(flow: dict[str, Any]) -> list[str]:
    status = flow.get("status")
    url = flow.get("url") or ""
    if flow.get("error"):
        url += f"  [{flow['error']}]"
    return [
        str(flow.get("id", "")),
        local_time(flow.get("time"), "%H:%M:%S.%f"),
        flow.get("client") or "",
        flow.get("method") or "",
        str(status) if status else ("ERR" if flow.get("error") else "-"),
        human_size(flow.get("response_size")),
        human_duration(flow.get("duration_ms")),
        url,
    ]


def tail_line(flow: dict[str, Any], width: int | None = None) -> str:
    """One flow as a table row of fixed widths, for rows printed as they arrive."""
    cells = flow_row(flow)
    head = "  ".join(cell.ljust(w) for cell, w in zip(cells, TAIL_WIDTHS))
    url = cells[-1]
    if width is not None:
        url = truncate(url, max(width - sum(TAIL_WIDTHS) - 2 * len(TAIL_WIDTHS), MIN_LAST_COLUMN))
    return f"{head}  {url}".rstrip()


def tail_header() -> str:
    return "  ".join(h.ljust(w) for h, w in zip(FLOW_HEADERS, TAIL_WIDTHS)) + "  URL"


def state_line(session: dict[str, Any]) -> str:
    if session.get("state") == "deleted":
        return f"-- session {session.get('id')} deleted"
    when = local_time(session.get("updated"), "%H:%M:%S.%f")
    return (f"-- {when}  session {session.get('id')} {session.get('name')!r} is {session.get('state')}"
            f" ({session.get('flow_count', 0)} flows)")


def flow_detail(flow: dict[str, Any], show_binary: bool = False) -> list[str]:
    """One flow in full, as ``capturectl show`` prints it."""
    sessions = ", ".join(str(i) for i in flow.get("session_ids") or []) or "-"
    server = flow.get("server_ip") or flow.get("host") or "-"
    lines = [
        f"flow {flow.get('id')}  {local_time(flow.get('time'), '%Y-%m-%d %H:%M:%S.%f')}"
        f"  client {flow.get('client')}:{flow.get('client_port')}  server {server}  session(s) {sessions}",
        "",
    ]
    request = flow.get("request") or {}
    version = f"HTTP/{flow.get('http_version') or '1.1'}"
    lines.append(f"{flow.get('method')} {flow.get('url')} {version}")
    lines += _message(request, show_binary)
    response = flow.get("response")
    lines.append("")
    if response is None:
        lines.append("(no response)")
    else:
        lines.append(f"{version} {response.get('status')} {response.get('reason') or ''}".rstrip())
        lines += _message(response, show_binary)
    lines += ["", "timings: " + _timings(flow.get("timings") or {}, flow.get("duration_ms"))]
    if flow.get("error"):
        lines.append(f"error: {flow['error']}")
    if flow.get("websocket"):
        lines += _websocket(flow["websocket"], show_binary)
    return lines


def _websocket(section: dict[str, Any], show_binary: bool) -> list[str]:
    """A WebSocket's messages, one line each (``>`` from the client, ``<`` to it), and how it closed."""
    count = section.get("message_count") or 0
    messages = section.get("messages") or []
    lines = ["", f"websocket: {count} message(s){', open' if section.get('open') else ''}"]
    for message in messages:
        arrow = ">" if message.get("from_client") else "<"
        content = message.get("content") or ""
        if message.get("encoding") == "base64" and not show_binary:
            content = f"<{message.get('size')} bytes, base64; --body prints it>"
        cut = " <truncated>" if message.get("truncated") else ""
        if message.get("omitted"):
            content, cut = f"<{message.get('size')} bytes, not stored: responses are not captured>", ""
        lines.append(f"{local_time(message.get('time'), '%H:%M:%S.%f')} {arrow} {message.get('type')}: {content}{cut}")
    if count > len(messages):
        lines.append(f"<{count - len(messages)} more: GET /api/flows/ID/messages?offset={len(messages)}>")
    close = section.get("close")
    if close:
        lines.append(f"closed by {close.get('closed_by')}: {close.get('code')} {close.get('reason') or ''}".rstrip())
    return lines


def _message(message: dict[str, Any], show_binary: bool) -> list[str]:
    lines = [f"{name}: {value}" for name, value in message.get("headers") or []]
    size, stored = message.get("size") or 0, message.get("stored_size") or 0
    if size == 0:
        return lines
    lines.append("")
    if stored == 0:
        lines.append(f"<{size} bytes, not stored>")
        return lines
    body = message.get("body") or ""
    if message.get("body_encoding") == "base64" and not show_binary:
        lines.append(f"<{stored} bytes, base64; --body prints it>")
    else:
        lines += body.splitlines() or [""]
    if message.get("truncated") or stored < size:
        lines.append(f"<truncated: {stored} of {size} bytes stored>")
    return lines


def _timings(timings: dict[str, Any], duration_ms: float | None) -> str:
    marks = [parse_time(timings.get(k)) for k in ("start", "request_done", "response_start", "end")]
    parts = []
    for label, a, b in (("request", 0, 1), ("wait", 1, 2), ("response", 2, 3)):
        if marks[a] is not None and marks[b] is not None:
            parts.append(f"{label} {human_duration((marks[b] - marks[a]).total_seconds() * 1000)}")
    parts.append(f"total {human_duration(duration_ms)}")
    return ", ".join(parts)
