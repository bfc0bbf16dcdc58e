"""Pages the appliance serves itself: the magic host seen through the proxy."""

from __future__ import annotations

import html

from capture import __version__, http1
from capture.config import Settings

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>capture proxy</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:1em auto;padding:0 1em;line-height:1.5}}</style>
</head><body>
<h1>Your traffic goes through capture</h1>
<p>This device's HTTP proxy is set to a <b>capture</b> appliance (version {version}).
Testers record what this device sends in capture sessions, started from the
appliance's admin API.</p>
<p>Plain HTTP is captured now. Open <code>http://{magic}/</code> again at any time
to check that the proxy is still set.</p>
</body></html>
"""


def proxy_page(settings: Settings) -> bytes:
    """The page ``http://capture.proxy/`` answers with, as a whole response."""
    body = _PAGE.format(version=html.escape(__version__), magic=html.escape(settings.proxy.magic_host)).encode()
    headers = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
    ]
    return http1.response_head(b"1.1", 200, b"OK", headers) + body
