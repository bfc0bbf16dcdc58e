"""``capturectl``: the admin API from a shell, for people (tables) and scripts (``--json``).

Standard library only: argparse for the command line, urllib for HTTP.  Every
failure a user can cause ends as one line on stderr and an exit code:

    2 usage   3 admin API unreachable   4 token missing or refused
    5 not found (404)   6 conflict (409)   1 anything else
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

from capture import __version__, cli_format as fmt

DEFAULT_CONFIG = "etc/capture.ini"
DEFAULT_ADMIN = "http://127.0.0.1:8081"
DEFAULT_TOKEN_FILE = "var/admin.token"
TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0  # the events stream sends a keepalive every 15 s
CHUNK = 64 * 1024
PROGRESS_INTERVAL = 0.25
EXIT_CODES = {401: 4, 404: 5, 409: 6}


class CliError(Exception):
    """One line for stderr and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- defaults from the environment and the shipped config ---------------------------


def config_defaults(path: str) -> tuple[str | None, str | None]:
    """(admin URL, token file) from a capture config, or Nones where it gives none.

    Raises ``capture.config.ConfigError`` for a file that is missing or bad.
    """
    from capture.config import load

    settings = load(path)
    return admin_url_for(settings.admin.listen), settings.admin.token_file


def admin_url_for(endpoint: str) -> str | None:
    """The URL to reach a ``tcp:PORT[:interface=ADDR]`` listener from this machine."""
    parts = [p.replace("\\", "") for p in re.split(r"(?<!\\):", endpoint)]  # "\:" escapes a colon
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    options = dict(p.partition("=")[::2] for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    port = options.get("port") or (positional[0] if positional else "")
    if not port.isdigit() or int(port) == 0:
        return None
    host = options.get("interface", "")
    if host in ("", "0.0.0.0", "::"):  # every address: this machine's loopback is one
        host = "::1" if parts[0] == "tcp6" or host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if parts[0] == 'ssl' else 'http'}://{host}:{int(port)}"


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill in --admin and --token-file: flag, then environment, then config, then built-in."""
    admin, token_file = args.admin or os.environ.get("CAPTURE_ADMIN"), args.token_file or os.environ.get("CAPTURE_TOKEN_FILE")
    if not (admin and token_file):
        from capture.config import ConfigError

        try:
            from_config = config_defaults(args.config or DEFAULT_CONFIG)
        except ConfigError as e:
            if args.config:  # asked for by name, so say why it was not used
                raise CliError(1, str(e)) from None
            from_config = (None, None)
        admin = admin or from_config[0] or DEFAULT_ADMIN
        token_file = token_file or from_config[1] or DEFAULT_TOKEN_FILE
    if "://" not in admin:
        admin = "http://" + admin
    args.admin, args.token_file = admin.rstrip("/"), token_file


# -- talking to the admin API ----------------------------------------------------------


class Api:
    """The admin API at ``base``, authorised with the token read from ``token_file``."""

    def __init__(self, base: str, token_file: str) -> None:
        self.base = base
        self.token_file = token_file
        self._token: str | None = None
        # Straight to the appliance: an http_proxy set for the lab machine may be this very proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def token(self) -> str:
        if self._token is None:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    self._token = f.read().strip()
            except FileNotFoundError:
                raise CliError(4, f"no token file at {self.token_file}; pass --token-file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise CliError(4, f"cannot read the token file {self.token_file}: {getattr(e, 'strerror', None) or e}") from None
            if not self._token:
                raise CliError(4, f"the token file {self.token_file} is empty")
        return self._token

    def open(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None,
             timeout: float = TIMEOUT) -> http.client.HTTPResponse:
        """The response to a request, once its status is 2xx; CliError otherwise."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        url = self.base + path + ("?" + urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (None for 204), read whole."""
        with self.open(method, path, **kwargs) as response:
            try:
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from None
            if response.status == 204 or not data:
                return None
            if "json" not in (response.headers.get("Content-Type") or ""):
                return data.decode("utf-8", "replace")
            try:
                return json.loads(data)
            except ValueError:
                raise CliError(1, f"the admin API at {self.base} answered {path} with something that is not JSON") from None

    def _http_error(self, error: urllib.error.HTTPError) -> CliError:
        try:
            text = json.loads(error.read())["error"]
        except Exception:
            text = f"HTTP {error.code} {error.reason}"
        if error.code == 401:
            return CliError(4, f"the admin token in {self.token_file} was not accepted")
        return CliError(EXIT_CODES.get(error.code, 1), str(text))

    def _unreachable(self, reason: Any) -> CliError:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = "no answer (timed out)"
        elif isinstance(reason, socket.gaierror):
            why = f"cannot resolve the host name ({reason.strerror})"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror[0].lower() + reason.strerror[1:]
        else:
            why = str(reason) or type(reason).__name__
        return CliError(3, f"cannot reach the capture admin API at {self.base}: {why} — is the appliance running?")


# -- commands ----------------------------------------------------------------------------


def width() -> int | None:
    """Columns to fit URLs into: the terminal's, or $COLUMNS; None (whole URLs) into a pipe."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return None
    return shutil.get_terminal_size((100, 24)).columns


def emit(args: argparse.Namespace, data: Any, lines: Callable[[], list[str]]) -> None:
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print("\n".join(lines()))


def cmd_status(api: Api, args: argparse.Namespace) -> None:
    status = api.call("GET", "/api/status")
    emit(args, status, lambda: fmt.status_lines(status, api.base))


def cmd_sessions(api: Api, args: argparse.Namespace) -> None:
    result = api.call("GET", "/api/sessions")
    sessions = result.get("sessions", [])
    emit(args, result, lambda: fmt.table(fmt.SESSION_HEADERS, fmt.session_rows(sessions)) if sessions else ["no sessions"])


def cmd_start(api: Api, args: argparse.Namespace) -> None:
    fields: dict[str, Any] = {"name": args.name}
    if args.client:
        fields["clients"] = args.client
    if args.filter:
        fields["filter"] = args.filter
    if args.no_responses:
        fields["capture_responses"] = False
    if args.cookies or args.cookie_domain:
        fields["cookies"] = {"enabled": True, "domains": args.cookie_domain or []}
    session = api.call("POST", "/api/sessions", body=fields)
    emit(args, session, lambda: ["started " + fmt.session_summary(session)])


def cmd_change(api: Api, args: argparse.Namespace) -> None:
    if args.command == "delete":
        api.call("DELETE", f"/api/sessions/{args.id}")
        emit(args, {"id": args.id, "state": "deleted"}, lambda: [f"deleted session {args.id}"])
        return
    session = api.call("POST", f"/api/sessions/{args.id}/{args.command}")
    emit(args, session, lambda: [fmt.session_summary(session)])


def cmd_ui(api: Api, args: argparse.Namespace) -> None:
    """The web UI's sign-in link. The appliance names its lab address when the admin
    listener is on every interface, so the link also opens on another computer."""
    onboarding = api.call("GET", "/api/onboarding")
    link = onboarding["onboarding_url"] + "ui/?" + urlencode({"token": api.token()})
    emit(args, {"url": link}, lambda: [link])


def cmd_prune(api: Api, args: argparse.Namespace) -> None:
    result = api.call("POST", "/api/sessions/prune", body={"older_than": args.older_than})
    deleted = result.get("deleted", [])
    emit(args, result, lambda: [f"deleted {len(deleted)} idle session(s)" + (": " + ", ".join(map(str, deleted)) if deleted else "")])


def cmd_flows(api: Api, args: argparse.Namespace) -> None:
    params = {"filter": args.filter, "limit": args.limit, "offset": args.offset, "sort": args.sort,
              "order": "desc" if args.desc else "asc"}
    result = api.call("GET", f"/api/sessions/{args.id}/flows", params=params)
    flows, total = result.get("flows", []), result.get("total", 0)

    def lines() -> list[str]:
        out = fmt.table(fmt.FLOW_HEADERS, [fmt.flow_row(f) for f in flows], width()) if flows else []
        footer = f"{len(flows)} of {total} flows"
        if args.offset:
            footer += f" (from offset {args.offset})"
        return out + [footer]

    emit(args, result, lines)


def cmd_show(api: Api, args: argparse.Namespace) -> None:
    flow = api.call("GET", f"/api/flows/{args.flow_id}")
    emit(args, flow, lambda: fmt.flow_detail(flow, show_binary=args.body))


def cmd_curl(api: Api, args: argparse.Namespace) -> None:
    command = api.call("GET", f"/api/flows/{args.flow_id}/curl")
    emit(args, {"command": command.rstrip("\n")}, lambda: [command.rstrip("\n")])


def cmd_tail(api: Api, args: argparse.Namespace) -> None:
    """Follow the session's Server-Sent Events until Ctrl-C, --count flows, or the session ends."""
    session = api.call("GET", f"/api/sessions/{args.id}")
    response = api.open("GET", f"/api/sessions/{args.id}/events", timeout=STREAM_TIMEOUT)
    print(f"following session {args.id} {session.get('name')!r} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not args.json and sys.stdout.isatty():
        print(fmt.tail_header(), flush=True)
    seen = 0
    with response:
        for event, data in sse_events(response, api):
            if args.json:
                print(json.dumps({"event": event, "data": data}), flush=True)
            elif event == "flow":
                print(fmt.tail_line(data, width()), flush=True)
            elif event == "state":
                print(fmt.state_line(data), flush=True)
            if event == "flow":
                seen += 1
                if args.count and seen >= args.count:
                    return
            if event == "state" and data.get("state") in ("stopped", "deleted"):
                return
    if args.count:
        raise CliError(1, f"the event stream ended after {seen} of {args.count} flows (the appliance stopped?)")
    print("capturectl: the event stream ended (the appliance stopped?)", file=sys.stderr)


def sse_events(response: http.client.HTTPResponse, api: Api) -> Iterator[tuple[str, Any]]:
    """(event, decoded data) for each Server-Sent Event until the stream ends."""
    event, data = "", []
    while True:
        try:
            raw = response.readline()
        except (OSError, http.client.HTTPException) as e:
            raise CliError(1, f"the event stream from {api.base} was cut off ({str(e) or type(e).__name__}); "
                              "the appliance stopped, or this reader fell behind") from None
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    yield event or "message", json.loads("\n".join(data))
                except ValueError:
                    pass  # not ours to understand; the next event may be
            event, data = "", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


EXPORTS = {
    "har": ("har", {}),
    "postman": ("postman", {}),
    "cookies": ("cookies", {}),
    "netscape": ("cookies", {"format": "netscape"}),
}


def cmd_export(api: Api, args: argparse.Namespace) -> None:
    route, params = EXPORTS[args.format]
    if args.filter:
        params = {**params, "filter": args.filter}
    response = api.open("GET", f"/api/sessions/{args.id}/{route}", params=params, timeout=STREAM_TIMEOUT)
    to_stdout = args.output == "-"
    partial = args.output + ".part"
    progress = sys.stderr.isatty() and not to_stdout
    written, shown, line = 0, 0.0, ""
    try:
        out = sys.stdout.buffer if to_stdout else open(partial, "wb")
    except OSError as e:
        response.close()
        raise CliError(1, f"cannot write {args.output}: {e.strerror}") from None
    try:
        with response:
            while True:
                try:
                    data = response.read1(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise CliError(1, f"the export was cut off after {written} bytes ({str(e) or type(e).__name__}); "
                                      f"{args.output} not written") from None
                if not data:
                    break
                out.write(data)
                written += len(data)
                if progress and time.monotonic() - shown >= PROGRESS_INTERVAL:
                    shown, line = time.monotonic(), f"\r{fmt.human_size(written)}"
                    print(line, end="", file=sys.stderr, flush=True)
        if to_stdout:
            out.flush()
            return
        out.close()
        os.replace(partial, args.output)
    except BaseException:
        if not to_stdout:
            out.close()
            _remove(partial)
        raise
    clear = "\r" + " " * len(line) + "\r" if line else ""
    print(f"{clear}wrote {args.output} ({written} bytes)", file=sys.stderr)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- the command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def add_globals(parser: argparse.ArgumentParser, default: Any) -> None:
        group = parser.add_argument_group("connection and output")
        group.add_argument("--admin", metavar="URL", default=default,
                           help="admin API (default: $CAPTURE_ADMIN, else from the config, else " + DEFAULT_ADMIN + ")")
        group.add_argument("--token-file", metavar="PATH", default=default,
                           help="admin token file (default: $CAPTURE_TOKEN_FILE, else from the config, else " + DEFAULT_TOKEN_FILE + ")")
        group.add_argument("--config", metavar="PATH", default=default,
                           help=f"capture config to take those defaults from (default: {DEFAULT_CONFIG})")
        group.add_argument("--json", action="store_true", default=False if default is None else default,
                           help="print the API's JSON instead of tables")

    parser = argparse.ArgumentParser(prog="capturectl", description="Control a capture appliance through its admin API.")
    parser.add_argument("--version", action="version", version=f"capturectl {__version__}")
    add_globals(parser, None)
    # The same options after the command (capturectl sessions --json); given there, they win.
    common = argparse.ArgumentParser(add_help=False)
    add_globals(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    command("status", cmd_status, "listeners, session manager, queues, CA fingerprint")
    command("sessions", cmd_sessions, "list capture sessions")
    start = command("start", cmd_start, "start a capture session")
    start.add_argument("name")
    start.add_argument("--client", action="append", metavar="IP", help="a device's IP or CIDR (repeat; default: every device)")
    start.add_argument("--filter", metavar="EXPR", help="record only flows matching this filter expression")
    start.add_argument("--no-responses", action="store_true", help="do not store response bodies")
    start.add_argument("--cookies", action="store_true", help="collect cookies")
    start.add_argument("--cookie-domain", action="append", metavar="DOMAIN", help="collect cookies of this domain and its subdomains (repeat; implies --cookies)")
    for action, text in (("pause", "stop recording, keep the session"), ("resume", "record again"),
                         ("stop", "end the session for good (it stays readable)"),
                         ("clear", "delete the session's flows"), ("delete", "delete the session and its flows")):
        command(action, cmd_change, text).add_argument("id", type=int, metavar="ID")
    prune = command("prune", cmd_prune, "retention: delete sessions idle (no change, no flow) for longer than an age")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m, 3600 (seconds)")
    flows = command("flows", cmd_flows, "list a session's flows")
    flows.add_argument("id", type=int, metavar="ID")
    flows.add_argument("--filter", metavar="EXPR", help="filter expression, e.g. '~m POST & ~d api'")
    flows.add_argument("--limit", type=int, default=100, metavar="N", help="at most N flows (default 100)")
    flows.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N")
    flows.add_argument("--sort", choices=("time", "status", "duration", "size"), default="time")
    flows.add_argument("--desc", action="store_true", help="largest, latest or slowest first")
    show = command("show", cmd_show, "one flow in full: request, response, timings")
    show.add_argument("flow_id", type=int, metavar="FLOW_ID")
    show.add_argument("--body", action="store_true", help="print binary bodies (as base64) too")
    tail = command("tail", cmd_tail, "follow a session's new flows live")
    tail.add_argument("id", type=int, metavar="ID")
    tail.add_argument("--count", type=int, metavar="N", help="stop after N flows")
    export = command("export", cmd_export, "save a session as HAR, Postman collection or cookies")
    export.add_argument("id", type=int, metavar="ID")
    export.add_argument("--format", required=True, choices=tuple(EXPORTS))
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write ('-' for stdout)")
    export.add_argument("--filter", metavar="EXPR", help="only flows matching this (har and postman)")
    command("ui", cmd_ui, "print a link that signs in to the web UI (it holds the token: keep it to yourself)")
    curl = command("curl", cmd_curl, "a curl command that replays a flow")
    curl.add_argument("flow_id", type=int, metavar="FLOW_ID")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export" and args.filter and args.format not in ("har", "postman"):
        parser.error("--filter applies to --format har and postman only")
    try:
        resolve_defaults(args)
        args.handler(Api(args.admin, args.token_file), args)
    except CliError as e:
        print(f"capturectl: {e.message}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 0 if args.command == "tail" else 130
    except BrokenPipeError:
        # The reader (head, less) went away: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
