"""The admin listener: the JSON API under /api/ and the pages beside it."""

from __future__ import annotations

from typing import Any, Callable

from twisted.web import resource, server

from capture.admin.api import AdminApi
from capture.shipper import Shipper


class _Home(resource.Resource):
    """``/``: a pointer for people who open the admin address in a browser."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        if request.path not in (b"/", b""):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"error": "no such page"}\n'
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"capture admin listener: the JSON API is under /api/ (Authorization: Bearer TOKEN).\n"


class _Root(resource.Resource):
    def __init__(self, api: AdminApi) -> None:
        super().__init__()
        self._api = api
        self._home = _Home()

    def getChild(self, name: bytes, request: server.Request) -> resource.Resource:
        return self._api if name == b"api" else self._home


def admin_site(shipper: Shipper, token: str, status: Callable[[], dict[str, Any]]) -> server.Site:
    site = server.Site(_Root(AdminApi(shipper, token, status)))
    site.displayTracebacks = False
    site.noisy = False
    return site
