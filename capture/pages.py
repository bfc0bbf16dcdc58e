"""Onboarding: the page, CA downloads and PAC file a device needs to start.

Served by the admin listener without a token and, through the proxy itself,
at the magic host (``http://capture.proxy/``), as ``mitm.it`` is for
mitmproxy.  One function answers both, so the two never drift apart.
"""

from __future__ import annotations

import html
from typing import NamedTuple

from capture import __version__
from capture.http import http1
from capture.tls.ca import CertificateAuthority

PEM_TYPE = b"application/x-pem-file"
DER_TYPE = b"application/x-x509-ca-cert"  # what iOS and Android offer to install


class Page(NamedTuple):
    content_type: bytes
    body: bytes
    filename: str | None = None


def onboarding(path: str, ca: CertificateAuthority, proxy_host: str, proxy_port: int, magic_host: str,
               web_ui: bool = False) -> Page | None:
    """The page for ``path`` (query ignored), or None if there is none.

    ``web_ui``: served by the admin listener, where the testers' web UI is, so the page links to it.
    """
    path = path.split("?", 1)[0]
    if path in ("/", "/index.html"):
        page = _index(ca, proxy_host, proxy_port, magic_host)
        if web_ui:
            page = page.replace("</h1>\n", "</h1>\n" + _UI_LINK, 1)
        return Page(b"text/html; charset=utf-8", page.encode("utf-8"))
    if path in ("/ca.pem", "/capture-ca.pem"):
        return Page(PEM_TYPE, ca.pem, "capture-ca.pem")
    if path in ("/ca.der", "/ca.crt", "/ca.cer", "/capture-ca.crt"):
        return Page(DER_TYPE, ca.der, "capture-ca.crt")
    if path == "/proxy.pac":
        pac = (
            "function FindProxyForURL(url, host) {\n"
            f'  return "PROXY {proxy_host}:{proxy_port}; DIRECT";\n'
            "}\n"
        )
        return Page(b"application/x-ns-proxy-autoconfig", pac.encode("ascii"))
    return None


def page_response(page: Page | None) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """(status, reason, headers, body) for the proxy to send (a 404 for no page)."""
    if page is None:
        return http1.error_parts(404, "no such page on the capture appliance")
    headers = [
        (b"Content-Type", page.content_type),
        (b"Content-Length", b"%d" % len(page.body)),
        (b"Cache-Control", b"no-store"),
    ]
    if page.filename:
        headers.append((b"Content-Disposition", b'inline; filename="%s"' % page.filename.encode("ascii")))
    return 200, b"OK", headers, page.body


def _index(ca: CertificateAuthority, proxy_host: str, proxy_port: int, magic_host: str) -> str:
    return _PAGE.format(
        version=html.escape(__version__),
        host=html.escape(proxy_host),
        port=proxy_port,
        magic=html.escape(magic_host),
        fingerprint=html.escape(ca.sha256),
    )


_UI_LINK = '<p>Testers: <a href="/ui/">open the web UI</a> to watch, filter and export the captured traffic.</p>\n'

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>capture: set up this device</title>
<style>
body{{font-family:system-ui,-apple-system,sans-serif;max-width:42em;margin:1em auto;padding:0 1em;line-height:1.5}}
code,.fp{{font-family:ui-monospace,monospace;word-break:break-all}}
.fp{{background:#f3f3f3;padding:.5em;display:block}}
a.button{{display:inline-block;padding:.6em 1em;margin:.2em 0;border:1px solid #333;border-radius:.4em;text-decoration:none}}
h2{{margin-top:1.5em}}
</style></head><body>
<h1>capture</h1>
<p>This is a <b>capture</b> appliance (version {version}): a proxy that records the
HTTP and HTTPS traffic of test devices for the testers who run it. To capture a
device: set its Wi-Fi proxy to this appliance, then install and trust its CA
certificate so HTTPS can be read.</p>

<h2>1. Set the proxy</h2>
<p>Server <code>{host}</code>, port <code>{port}</code>
(or automatic proxy configuration with the URL of <a href="/proxy.pac">proxy.pac</a> on the appliance's admin address).
When the proxy is set, <code>http://{magic}/</code> opens this page.</p>
<ul>
<li><b>iOS / iPadOS</b>: Settings &gt; Wi-Fi &gt; (i) next to the network &gt; Configure Proxy &gt; Manual.</li>
<li><b>Android</b>: Settings &gt; Network &amp; internet &gt; Internet &gt; the network's gear &gt; edit (pencil) &gt; Advanced options &gt; Proxy &gt; Manual.</li>
<li><b>macOS</b>: System Settings &gt; Network &gt; Wi-Fi &gt; Details &gt; Proxies &gt; Web proxy (HTTP) and Secure web proxy (HTTPS).</li>
<li><b>Windows</b>: Settings &gt; Network &amp; internet &gt; Proxy &gt; Manual proxy setup &gt; Edit.</li>
<li><b>Linux</b>: Settings &gt; Network &gt; Network Proxy &gt; Manual, or <code>export http_proxy=http://{host}:{port} https_proxy=http://{host}:{port}</code>.</li>
</ul>

<h2>2. Install the CA certificate</h2>
<p><a class="button" href="/ca.der">Download for iOS, Android, Windows (.crt)</a>
<a class="button" href="/ca.pem">Download as PEM (macOS, Linux, Firefox)</a></p>
<p>Its SHA-256 fingerprint, to compare with what the device shows:</p>
<span class="fp">{fingerprint}</span>
<ul>
<li><b>iOS / iPadOS</b>: open the download in Safari and allow it; then Settings &gt; General &gt;
VPN &amp; Device Management &gt; the capture profile &gt; Install. Then turn on full trust:
Settings &gt; General &gt; About &gt; Certificate Trust Settings &gt; enable the capture CA.
Without this last step HTTPS fails.</li>
<li><b>Android</b>: Settings &gt; Security &amp; privacy &gt; More security settings &gt; Encryption &amp; credentials &gt;
Install a certificate &gt; CA certificate, and pick the download. Chrome and the system trust it;
<b>apps</b> (targeting Android 7 and later) trust only system CAs unless their
<code>network_security_config</code> allows user CAs, as debug builds of your own app can.</li>
<li><b>macOS</b>: open the .pem in Keychain Access (System keychain), double-click the capture CA &gt; Trust &gt;
When using this certificate: Always Trust.</li>
<li><b>Windows</b>: open the .crt &gt; Install Certificate &gt; Local Machine &gt; Place all certificates in
"Trusted Root Certification Authorities".</li>
<li><b>Linux</b>: <code>sudo cp capture-ca.pem /usr/local/share/ca-certificates/capture-ca.crt &amp;&amp; sudo update-ca-certificates</code>;
Firefox keeps its own store: Settings &gt; Privacy &amp; Security &gt; Certificates &gt; View Certificates &gt; Authorities &gt; Import.</li>
</ul>

<h2>3. Check</h2>
<p>Open any HTTPS site. If it fails with a certificate error, the CA is not fully trusted yet.
Apps that pin their certificates cannot be intercepted; the appliance notices and passes their
traffic through untouched, so they keep working.</p>
</body></html>
"""
