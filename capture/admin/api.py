"""The admin control API: JSON over HTTP, every route behind the bearer token
(or the web UI's sign-in cookie, from the UI's own origin).

It keeps no data of its own: each route is a call to the session manager
over the UNIX socket, so the session manager stays the one source of truth.
"""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

import segno

from capture import labaddress
from capture.admin.events import EventStream
from capture.admin.replay import ReplayEntry, ReplayError, replay_request
from capture.admin.signin import SignIns, cookie_value
from capture.admin.webui import cookie_allowed, secure_headers
from capture.shipper import CallFailed, Interrupted, Shipper, Unavailable

MAX_BODY = 64 * 1024
STATUS_TIMEOUT = 2.0
REPLAY_FIND_SECONDS = 10.0  # a replayed flow reaches the store after the shipper's flush delay
_SESSION_FIELDS = {"name", "clients", "filter", "capture_responses", "cookies"}
# Calls that change nothing, so asking again after a lost connection cannot do anything twice.
_READS = frozenset({"sessions.list", "sessions.get", "sessions.stats", "flows.list", "flows.get", "flows.curl",
                    "flows.messages", "flows.body", "export.cookies", "passthrough.list"})
API_POLICY = b"default-src 'none'; frame-ancestors 'none'"  # JSON and downloads: nothing in them may run


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminApi(resource.Resource):
    """Routes ``/api/...`` requests to session-manager calls."""

    isLeaf = True
    log = Logger()

    def __init__(self, shipper: Shipper, sign_ins: SignIns, status: Callable[[], Awaitable[dict[str, Any]]], proxy: Any,
                 admin_endpoint: str = "") -> None:
        super().__init__()
        self._shipper = shipper
        self._proxy = proxy
        self._reactor = proxy.reactor
        self._sign_ins = sign_ins
        self._status = status
        self._admin_endpoint = admin_endpoint
        self._replays: ReplayEntry | None = None
        S, F = r"/api/sessions/(\d{1,15})", r"/api/flows/(\d{1,15})"
        self._routes: list[tuple[bytes, re.Pattern[str], Callable[..., Any]]] = [
            (b"GET", re.compile(r"/api/status"), self._get_status),
            (b"GET", re.compile(r"/api/sessions"), self._list_sessions),
            (b"POST", re.compile(r"/api/sessions"), self._create_session),
            (b"POST", re.compile(r"/api/sessions/prune"), self._prune_sessions),
            (b"GET", re.compile(S), self._get_session),
            (b"DELETE", re.compile(S), self._delete_session),
            (b"PATCH", re.compile(S), self._rename_session),
            (b"POST", re.compile(S + r"/(pause|resume|stop|clear)"), self._change_session),
            (b"GET", re.compile(S + r"/flows"), self._list_flows),
            (b"GET", re.compile(S + r"/stats"), self._stats),
            (b"GET", re.compile(S + r"/(har|postman)"), self._export),
            (b"GET", re.compile(S + r"/cookies"), self._cookies),
            (b"GET", re.compile(S + r"/events"), self._events),
            (b"GET", re.compile(F), self._get_flow),
            (b"GET", re.compile(F + r"/curl"), self._curl),
            (b"POST", re.compile(F + r"/replay"), self._replay),
            (b"GET", re.compile(F + r"/(request|response)/body"), self._raw_body),
            (b"GET", re.compile(F + r"/messages"), self._messages),
            (b"GET", re.compile(r"/api/onboarding"), self._onboarding),
            (b"GET", re.compile(r"/api/onboarding/qr\.svg"), self._onboarding_qr),
            (b"GET", re.compile(r"/api/passthrough"), self._list_passthrough),
            (b"DELETE", re.compile(r"/api/passthrough"), self._reset_passthrough),
        ]

    def render(self, request: server.Request) -> Any:
        secure_headers(request, API_POLICY)
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallbacks(lambda result: result and self._respond(request, *result), lambda f: self._failed(request, f))
        return server.NOT_DONE_YET

    def _dispatch(self, request: server.Request) -> Any:
        self._authorise(request)
        path = request.path.decode("utf-8", "replace").rstrip("/")
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match:
                if request.method == method:
                    return defer.ensureDeferred(handler(request, *match.groups()))
                allowed.append(method.decode())
        if allowed:
            raise ApiError(405, f"method not allowed here; use {', '.join(allowed)}")
        raise ApiError(404, "no such route")

    def _authorise(self, request: server.Request) -> None:
        """The bearer token, or the web UI's cookie from the UI's own pages; ApiError otherwise."""
        header = request.getHeader(b"authorization")
        if header is not None:
            scheme, _, token = header.partition(b" ")
            if scheme.lower() == b"bearer" and self._sign_ins.token_matches(token.strip()):
                return
            raise ApiError(401, "missing or wrong bearer token")
        if not self._sign_ins.valid(cookie_value(request.getHeader(b"cookie"))):
            raise ApiError(401, "missing or wrong bearer token")
        if not cookie_allowed(request):
            raise ApiError(403, "cross-origin request refused: the Origin is not this admin listener's")

    def _respond(self, request: server.Request, status: int, body: Any, content_type: bytes = b"application/json") -> None:
        if request._disconnected:
            return
        request.setResponseCode(status)
        if status == 204:
            request.finish()
            return
        request.setHeader(b"Content-Type", content_type)
        if isinstance(body, bytes):
            request.write(body)
        elif isinstance(body, str):
            request.write(body.encode("utf-8"))
        else:
            request.write(json.dumps(body, indent=1).encode("utf-8") + b"\n")
        request.finish()

    def _failed(self, request: server.Request, failure: Failure) -> None:
        if failure.check(ApiError):
            status, message = failure.value.status, failure.value.message
        elif failure.check(CallFailed):
            status, message = failure.value.status, failure.value.message
        elif failure.check(Unavailable):
            status, message = 503, f"session manager unavailable: {failure.value}"
        else:
            self.log.failure("admin request {path} failed", failure, path=request.path)
            status, message = 500, "internal error; see the appliance's log"
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="capture"')
        self._respond(request, status, {"error": message})

    async def _call(self, method: str, on_chunk: Callable[[bytes], None] | None = None, **args: Any) -> Any:
        """A session-manager call that waits for it while it starts or restarts, up to
        ``[admin] session_manager_wait`` seconds; Unavailable (a 503) only when it stays away.

        A read whose connection was lost before the answer is asked again on the
        next connection, within the same bound; a change is not, since the lost
        session manager may have made it.
        """
        wait = self._proxy.settings.admin.session_manager_wait
        deadline = self._reactor.seconds() + wait
        remaining = wait  # the whole bound for the first wait, so a 503 names it exactly
        while True:
            await self._shipper.wait_ready(remaining)
            try:
                return await self._shipper.call(method, on_chunk=on_chunk, **args)
            except Interrupted:
                remaining = deadline - self._reactor.seconds()
                if method not in _READS or remaining <= 0:
                    raise

    # -- routes -------------------------------------------------------------------

    async def _get_status(self, request: server.Request) -> tuple[int, Any]:
        """Status answers even when the session manager does not (frozen, overloaded)."""
        status = await self._status()
        manager_status = status["session_manager"]
        manager_status["responding"] = False
        # Only the session manager knows the database; without it, say that much.
        status["database"] = {"reachable": None, "error": "unknown: the session manager is not responding"}
        if self._shipper.connected:
            try:
                manager = await self._shipper.call("status").addTimeout(STATUS_TIMEOUT, self._reactor)
            except (Unavailable, CallFailed, defer.TimeoutError):
                pass
            else:
                manager_status.update(responding=True, sessions=manager["sessions"])
                if isinstance(manager.get("database"), dict):
                    status["database"] = manager["database"]
        return 200, status

    async def _list_sessions(self, request: server.Request) -> tuple[int, Any]:
        return 200, await self._call("sessions.list")

    async def _create_session(self, request: server.Request) -> tuple[int, Any]:
        fields = _json_body(request)
        unknown = set(fields) - _SESSION_FIELDS
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        fields.setdefault("name", time.strftime("session %Y-%m-%d %H:%M:%S"))
        return 201, await self._call("sessions.create", **fields)

    async def _prune_sessions(self, request: server.Request) -> tuple[int, Any]:
        """Retention: delete every session idle (no change, no flow) for longer than ``older_than``."""
        fields = _json_body(request)
        unknown = set(fields) - {"older_than"}
        if unknown or "older_than" not in fields:
            raise ApiError(400, 'expected {"older_than": AGE}, AGE as seconds or a string like "30d", "12h", "90m"')
        return 200, await self._call("sessions.prune", older_than=age_seconds(fields["older_than"]))

    async def _get_session(self, request: server.Request, session_id: str) -> tuple[int, Any]:
        return 200, await self._call("sessions.get", session_id=int(session_id))

    async def _delete_session(self, request: server.Request, session_id: str) -> tuple[int, Any]:
        await self._call("sessions.delete", session_id=int(session_id))
        return 204, None

    async def _rename_session(self, request: server.Request, session_id: str) -> tuple[int, Any]:
        fields = _json_body(request)
        if set(fields) != {"name"}:
            raise ApiError(400, "send {\"name\": \"...\"}: only the name can be changed")
        return 200, await self._call("sessions.rename", session_id=int(session_id), name=fields["name"])

    async def _change_session(self, request: server.Request, session_id: str, action: str) -> tuple[int, Any]:
        return 200, await self._call(f"sessions.{action}", session_id=int(session_id))

    async def _list_flows(self, request: server.Request, session_id: str) -> tuple[int, Any]:
        args = {
            "session_id": int(session_id),
            "limit": _int_arg(request, "limit", 100),
            "offset": _int_arg(request, "offset", 0),
            "filter": _str_arg(request, "filter"),
            "sort": _str_arg(request, "sort") or "time",
            "order": _str_arg(request, "order") or "asc",
        }
        return 200, await self._call("flows.list", **args)

    async def _stats(self, request: server.Request, session_id: str) -> tuple[int, Any]:
        return 200, await self._call("sessions.stats", session_id=int(session_id))

    async def _export(self, request: server.Request, session_id: str, kind: str) -> None:
        """Stream an export as the session manager produces it, never holding all of it here."""
        started = False

        def write(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                request.setHeader(b"Content-Type", b"application/json")
                filename = f"capture-session-{session_id}.{'har' if kind == 'har' else 'postman_collection.json'}"
                request.setHeader(b"Content-Disposition", f'attachment; filename="{filename}"'.encode())
            if not request._disconnected:
                request.write(data)

        try:
            await self._call(f"export.{kind}", on_chunk=write, session_id=int(session_id),
                                     filter=_str_arg(request, "filter"))
        except Exception:
            if not started:
                raise
            request.channel.transport.abortConnection()  # a cut-off export must not look complete
            return None
        if not request._disconnected:
            request.finish()
        return None

    async def _cookies(self, request: server.Request, session_id: str) -> tuple[int, Any, bytes] | tuple[int, Any]:
        form = _str_arg(request, "format") or "json"
        if form not in ("json", "netscape"):
            raise ApiError(400, "format must be json or netscape")
        result = await self._call("export.cookies", session_id=int(session_id), format=form,
                                  filter=_str_arg(request, "filter"))
        extension = "txt" if form == "netscape" else "json"
        request.setHeader(b"Content-Disposition", f'attachment; filename="capture-session-{session_id}-cookies.{extension}"'.encode())
        if form == "netscape":
            return 200, result, b"text/plain; charset=utf-8"
        return 200, result

    async def _events(self, request: server.Request, session_id: str) -> None:
        await self._call("sessions.get", session_id=int(session_id))  # 404 for an unknown session
        EventStream(request, self._shipper, int(session_id), self._reactor)
        return None

    async def _curl(self, request: server.Request, flow_id: str) -> tuple[int, Any, bytes]:
        command = await self._call("flows.curl", flow_id=int(flow_id))
        return 200, command + "\n", b"text/plain; charset=utf-8"

    async def _replay(self, request: server.Request, flow_id: str) -> tuple[int, Any]:
        """Send the flow's request again (edited by the JSON body, if any); the new flow once it is stored."""
        overrides = _json_body(request)
        original = await self._call("flows.get", flow_id=int(flow_id))
        if not original["session_ids"]:
            raise ApiError(409, f"flow {flow_id} is in no session any more, so a replay would be recorded nowhere")
        stored_body = await self._call("flows.body", flow_id=int(flow_id), part="request")
        try:
            outgoing = replay_request(original, overrides, stored_body)
        except ReplayError as e:
            raise ApiError(400, str(e)) from None
        if self._replays is None:
            self._replays = ReplayEntry(self._proxy, self._reactor, self._proxy.ca.pem)
        try:
            source_port = await self._replays.send(outgoing, original["client"])
        except (ReplayError, defer.TimeoutError) as e:
            raise ApiError(502, f"replay failed: {e or 'no answer in time'}") from None
        expression = f'~src "^{re.escape(original["client"])}:{source_port}$"'
        deadline = self._reactor.seconds() + REPLAY_FIND_SECONDS
        while True:
            for session_id in original["session_ids"]:
                try:
                    found = await self._call("flows.list", session_id=session_id, filter=expression, limit=1)
                except CallFailed:  # that session was deleted meanwhile
                    continue
                if found["flows"]:
                    return 200, await self._call("flows.get", flow_id=found["flows"][0]["id"])
            if self._reactor.seconds() > deadline:
                raise ApiError(504, "the request was replayed, but none of the original's sessions recorded it"
                                    " (stopped, paused, or its filter does not match the edited request)")
            await _sleep(self._reactor, 0.1)

    async def _raw_body(self, request: server.Request, flow_id: str, part: str) -> tuple[int, Any, bytes]:
        """The body as stored (compressed if it came so), as a download: never shown by the browser."""
        body = await self._call("flows.body", flow_id=int(flow_id), part=part)
        request.setHeader(b"Content-Disposition", f'attachment; filename="flow-{flow_id}-{part}.bin"'.encode())
        return 200, body, b"application/octet-stream"

    async def _get_flow(self, request: server.Request, flow_id: str) -> tuple[int, Any]:
        return 200, await self._call("flows.get", flow_id=int(flow_id))

    async def _messages(self, request: server.Request, flow_id: str) -> tuple[int, Any]:
        """A WebSocket flow's messages, paged: ``{"messages": [...], "total": N}``, in the order they passed."""
        return 200, await self._call("flows.messages", flow_id=int(flow_id),
                                             offset=_int_arg(request, "offset", 0),
                                             limit=_int_arg(request, "limit", 100))


    def _onboarding_url(self, request: server.Request) -> tuple[str, str]:
        """(host a device can reach, the onboarding page's URL on the admin listener)."""
        asked = request.getRequestHostname().decode("ascii", "replace")
        host = labaddress.reachable_host(asked, self._admin_endpoint)
        shown = f"[{host}]" if ":" in host else host
        port = request.getHost().port
        return host, f"{'https' if request.isSecure() else 'http'}://{shown}:{port}/"

    async def _onboarding(self, request: server.Request) -> tuple[int, Any]:
        host, url = self._onboarding_url(request)
        proxy_host = labaddress.reachable_host(host, self._proxy.settings.proxy.listen)
        return 200, {"proxy_host": proxy_host, "proxy_port": self._proxy.proxy_port, "onboarding_url": url,
                     "ca_sha256": self._proxy.ca.sha256, "ca_pem": "/ca.pem", "ca_der": "/ca.der",
                     "pac": "/proxy.pac", "qr_svg": "/api/onboarding/qr.svg"}

    async def _onboarding_qr(self, request: server.Request) -> tuple[int, Any, bytes]:
        """The onboarding page's URL as a QR code, drawn here so the page needs no script library."""
        _, url = self._onboarding_url(request)
        out = io.BytesIO()
        segno.make(url, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=False)
        return 200, out.getvalue().decode("ascii"), b"image/svg+xml"

    async def _list_passthrough(self, request: server.Request) -> tuple[int, Any]:
        """The appliance's one auto-passthrough table, kept by the session manager for every worker."""
        return 200, await self._call("passthrough.list")

    async def _reset_passthrough(self, request: server.Request) -> tuple[int, Any]:
        """Forget auto-passthrough hosts (all, or ?host= and/or ?client=) so they are intercepted again."""
        host, client = _str_arg(request, "host"), _str_arg(request, "client")
        return 200, await self._call("passthrough.forget", client=client, host=host)


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _json_body(request: server.Request) -> dict[str, Any]:
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    if not data.strip():
        return {}
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ApiError(400, "request body must be a JSON object")
    return fields


def _str_arg(request: server.Request, name: str) -> str:
    values = request.args.get(name.encode())
    if not values:
        return ""
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"parameter {name} is not UTF-8") from None


def _int_arg(request: server.Request, name: str, default: int) -> int:
    text = _str_arg(request, name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"parameter {name} must be an integer, not {text!r}") from None


_AGE = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)([smhdw]?)")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age_seconds(value: Any) -> float:
    """An age as seconds: a positive number, or digits and a unit (s, m, h, d, w) such as "30d"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e11:
        return float(value)
    if isinstance(value, str):
        match = _AGE.fullmatch(value.strip())
        if match and float(match.group(1)) > 0:
            return float(match.group(1)) * _AGE_UNITS[match.group(2)]
    raise ApiError(400, f"older_than must be a positive age such as 30d, 12h or 3600, not {value!r:.40}")
