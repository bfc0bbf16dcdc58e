"""``/ui/``: the web UI's static files, sign-in, sign-out and ``/ui/session`` (am I signed in?).

The files ship in the package (``capture/admin/ui/``) and are read once at
start; the browser revalidates them by ETag, so an upgrade shows at the next
load and an unchanged file costs a 304.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web import resource, server

from capture.admin.signin import SignIns, clear_cookie, cookie_request_allowed, cookie_value, set_cookie

STATIC_DIR = Path(__file__).with_name("ui")
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".txt": b"text/plain; charset=utf-8",
}
# No inline script or style, nothing from elsewhere; captured images come as blob: URLs made from the store's bytes.
UI_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
             b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class StaticFile:
    """One shipped file: its bytes, type and ETag."""

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:20].encode("ascii")


def load_static(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file under ``directory`` by its URL path below /ui/."""
    files = {}
    for path in sorted(directory.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            files[path.relative_to(directory).as_posix()] = StaticFile(path.read_bytes(), content_type)
    return files


def secure_headers(request: server.Request, policy: bytes = UI_POLICY) -> None:
    """Headers every UI and API answer carries."""
    request.setHeader(b"Content-Security-Policy", policy)
    request.setHeader(b"Referrer-Policy", b"same-origin")  # no-referrer would make Chromium send Origin: null
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cross-Origin-Resource-Policy", b"same-origin")
    request.setHeader(b"X-Frame-Options", b"DENY")


def cookie_allowed(request: server.Request) -> bool:
    """Whether this request may act with the UI cookie (see ``capture.admin.signin.cookie_request_allowed``)."""
    return cookie_request_allowed(
        request.method, request.getHeader(b"origin"), request.getHeader(b"sec-fetch-site"),
        request.getHeader(b"host"), request.isSecure(),
    )


class WebUi(resource.Resource):
    """Static files at ``/ui/...``, ``POST /ui/signin`` and ``POST /ui/signout``."""

    isLeaf = True
    log = Logger()

    def __init__(self, sign_ins: SignIns, files: dict[str, StaticFile] | None = None) -> None:
        super().__init__()
        self._sign_ins = sign_ins
        self._files = load_static() if files is None else files

    def render_GET(self, request: server.Request) -> bytes:
        secure_headers(request)
        name = _below_ui(request)
        if name == "session":  # asked at load, so that a signed-out page logs no 401
            signed_in = self._sign_ins.valid(cookie_value(request.getHeader(b"cookie")))
            return _json(request, 200, {"signed_in": signed_in})
        if name in ("", "index.html"):
            token = request.args.get(b"token")
            if token is not None:
                return self._sign_in_link(request, token[0])
            name = "index.html"
        static = self._files.get(name)
        if static is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"no such file in the web UI\n"
        request.setHeader(b"Content-Type", static.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", static.etag)
        if request.getHeader(b"if-none-match") == static.etag:
            request.setResponseCode(304)
            return b""
        return static.body

    def render_HEAD(self, request: server.Request) -> bytes:
        return self.render_GET(request)

    def render_POST(self, request: server.Request) -> bytes:
        secure_headers(request)
        name = _below_ui(request)
        if name not in ("signin", "signout"):
            return _json(request, 404, {"error": "no such route"})
        if not cookie_allowed(request):  # no sign-in (or out) forced on the tester from another page
            return _json(request, 403, {"error": "cross-origin request refused"})
        secure = request.isSecure()
        if name == "signout":
            self._sign_ins.sign_out(cookie_value(request.getHeader(b"cookie")))
            request.setHeader(b"Set-Cookie", clear_cookie(secure))
            return _json(request, 200, {"signed_in": False})
        token = _posted_token(request)
        sign_in = self._sign_ins.sign_in(token)
        if sign_in is None:
            self.log.info("web UI sign-in refused from {client}", client=request.getClientAddress().host)
            return _json(request, 401, {"error": "wrong admin token"})
        request.setHeader(b"Set-Cookie", set_cookie(sign_in, secure))
        return _json(request, 200, {"signed_in": True})

    def _sign_in_link(self, request: server.Request, token: bytes) -> bytes:
        """``/ui/?token=``: sign in, then send the browser to ``/ui/`` so the token leaves the address bar."""
        sign_in = self._sign_ins.sign_in(token.strip())
        request.setHeader(b"Cache-Control", b"no-store")
        if sign_in is None:
            request.redirect(b"/ui/#signin-failed")
        else:
            request.setHeader(b"Set-Cookie", set_cookie(sign_in, request.isSecure()))
            request.redirect(b"/ui/")
        return b""


def _below_ui(request: server.Request) -> str:
    path = request.path.decode("utf-8", "replace")
    return path[len("/ui/"):] if path.startswith("/ui/") else ""


def _posted_token(request: server.Request) -> bytes:
    data = request.content.read(4096)
    if (request.getHeader(b"content-type") or b"").startswith(b"application/json"):
        try:
            fields = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return b""
        token = fields.get("token") if isinstance(fields, dict) else None
        return token.strip().encode("utf-8") if isinstance(token, str) else b""
    values = parse_qs(data.decode("latin-1")).get("token") or [""]
    return values[0].strip().encode("latin-1")


def _json(request: server.Request, status: int, body: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"
