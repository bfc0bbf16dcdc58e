"""The admin listener: the JSON API under /api/, the web UI under /ui/, the onboarding pages beside them."""

from __future__ import annotations

from typing import Any, Callable

from twisted.web import resource, server

from capture import pages
from capture.admin.api import MAX_BODY, AdminApi
from capture.admin.signin import SignIns
from capture.admin.webui import WebUi
from capture.proxy.factory import ProxyFactory
from capture.shipper import Shipper


class _Onboarding(resource.Resource):
    """``/``, ``/ca.pem``, ``/ca.der``, ``/proxy.pac``: no token, a device needs them first."""

    isLeaf = True

    def __init__(self, proxy: ProxyFactory) -> None:
        super().__init__()
        self._proxy = proxy

    def render_GET(self, request: server.Request) -> bytes:
        proxy = self._proxy
        host = request.getRequestHostname().decode("ascii", "replace")
        page = pages.onboarding(
            request.path.decode("utf-8", "replace"), proxy.ca, host, proxy.proxy_port, proxy.settings.proxy.magic_host,
            web_ui=True,
        )
        if page is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"error": "no such page"}\n'
        request.setHeader(b"Content-Type", page.content_type)
        request.setHeader(b"Cache-Control", b"no-store")
        if page.filename:
            request.setHeader(b"Content-Disposition", b'inline; filename="%s"' % page.filename.encode("ascii"))
        return page.body


class BoundedRequest(server.Request):
    """A request whose body may not pass MAX_BODY: refused before it is read whole."""

    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse()
        super().gotLength(length if not self._refused else 0)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.content.tell() + len(data) > MAX_BODY:  # chunked, no length announced
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        body = b'{"error": "request body larger than %d bytes"}\n' % MAX_BODY
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        transport.loseConnection()


class _Root(resource.Resource):
    def __init__(self, api: AdminApi, ui: WebUi, onboarding: _Onboarding) -> None:
        super().__init__()
        self._api = api
        self._ui = ui
        self._onboarding = onboarding

    def getChild(self, name: bytes, request: server.Request) -> resource.Resource:
        if name == b"ui":
            if request.path == b"/ui":
                return resource.ForbiddenResource() if request.method != b"GET" else _ToUi()
            return self._ui
        return self._api if name == b"api" else self._onboarding


class _ToUi(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.redirect(b"/ui/")
        return b""


def admin_site(shipper: Shipper, token: str, status: Callable[[], dict[str, Any]], proxy: ProxyFactory,
               admin_endpoint: str = "") -> server.Site:
    """The admin listener's site; ``admin_endpoint`` (its listen string) says whether links may name the lab address."""
    sign_ins = SignIns(token, proxy.reactor.seconds)
    site = server.Site(_Root(AdminApi(shipper, sign_ins, status, proxy, admin_endpoint), WebUi(sign_ins), _Onboarding(proxy)))
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    site.noisy = False
    return site
