"""The web UI's server side over real HTTP: static files, sign-in, the cookie on the API, the Origin
check, rename, exports as attachments, onboarding and ``capturectl ui``."""

from __future__ import annotations

import re
from typing import Iterator

import pytest
import requests

from capture import labaddress
from capture.admin.webui import STATIC_DIR
from conftest import Appliance
from test_cli import capturectl, ok


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance for the module's tests: none of them needs a fresh one."""
    appliance = Appliance(tmp_path_factory.mktemp("webui")).start()
    yield appliance
    appliance.stop()


def browser(appliance: Appliance) -> requests.Session:
    """A requests session that acts like the UI's page: signed in by cookie, Origin of the listener."""
    session = requests.Session()
    session.trust_env = False
    response = session.post(appliance.admin_url + "/ui/signin", json={"token": appliance.token},
                            headers={"Origin": appliance.admin_url}, timeout=10)
    assert response.status_code == 200, response.text
    return session


def test_static_files_have_types_cache_headers_and_a_policy(shared):
    """Each shipped file comes with its type, no-cache plus an ETag (a 304 when unchanged), nosniff, a
    CSP without inline script, Referrer-Policy same-origin; /ui redirects to /ui/; unknown files are 404."""
    base = shared.admin_url
    index = requests.get(base + "/ui/", timeout=10)
    assert index.status_code == 200 and index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'type="module"' in index.text and "<script>" not in index.text
    policy = index.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert index.headers["Referrer-Policy"] == "same-origin"
    assert index.headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in index.headers
    for name, content_type in (("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
                               ("icon.svg", "image/svg+xml")):
        response = requests.get(f"{base}/ui/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"] == content_type
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.content == (STATIC_DIR / name).read_bytes()
        again = requests.get(f"{base}/ui/{name}", headers={"If-None-Match": response.headers["ETag"]}, timeout=10)
        assert again.status_code == 304 and again.content == b""
    assert requests.get(base + "/ui/nothing.js", timeout=10).status_code == 404
    assert requests.get(base + "/ui/../admin.token", timeout=10).status_code == 404
    moved = requests.get(base + "/ui", allow_redirects=False, timeout=10)
    assert moved.status_code in (301, 302) and moved.headers["Location"].endswith("/ui/")


def test_every_shipped_module_is_served():
    """Every .js the UI imports exists in the package directory (a missing module breaks the page)."""
    names = {p.name for p in STATIC_DIR.glob("*.js")}
    for path in STATIC_DIR.glob("*.js"):
        for imported in re.findall(r'from "\./([\w.]+)"', path.read_text()):
            assert imported in names, (path.name, imported)


def test_sign_in_sets_a_random_cookie_that_the_api_accepts_and_sign_out_revokes(shared):
    """Sign-in with the right token sets an HttpOnly SameSite=Strict cookie that is not the token; the API
    answers with it; a wrong token is a 401 and no cookie; after sign-out the old cookie is refused."""
    base = shared.admin_url
    wrong = requests.post(base + "/ui/signin", json={"token": "nope"}, headers={"Origin": base}, timeout=10)
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
    session = browser(shared)
    cookie = session.cookies.get("capture_ui")
    assert cookie and shared.token not in cookie
    header = requests.post(base + "/ui/signin", json={"token": shared.token}, headers={"Origin": base},
                           timeout=10).headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Domain" not in header
    assert session.get(base + "/ui/session", timeout=10).json() == {"signed_in": True}
    assert session.get(base + "/api/sessions", timeout=10).status_code == 200
    created = session.post(base + "/api/sessions", json={"name": "by cookie"}, headers={"Origin": base}, timeout=10)
    assert created.status_code == 201
    out = session.post(base + "/ui/signout", headers={"Origin": base}, timeout=10)
    assert out.status_code == 200
    stale = requests.get(base + "/api/sessions", cookies={"capture_ui": cookie}, timeout=10)
    assert stale.status_code == 401
    assert requests.get(base + "/ui/session", cookies={"capture_ui": cookie}, timeout=10).json() == {"signed_in": False}


def test_sign_in_link_redirects_without_the_token(shared):
    """/ui/?token=RIGHT sets the cookie and redirects to /ui/; a wrong one redirects to the form's error."""
    base = shared.admin_url
    right = requests.get(base + "/ui/", params={"token": shared.token}, allow_redirects=False, timeout=10)
    assert right.status_code == 302 and right.headers["Location"].endswith("/ui/")
    assert "capture_ui=" in right.headers["Set-Cookie"] and shared.token not in right.headers["Set-Cookie"]
    wrong = requests.get(base + "/ui/", params={"token": "x"}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 302 and wrong.headers["Location"].endswith("/ui/#signin-failed")
    assert "Set-Cookie" not in wrong.headers


def test_cookie_changes_need_this_origin(shared):
    """With the cookie, a state change from another origin (another port), or with no Origin, is a 403
    and changes nothing; so is a read the browser marks same-site; the bearer token needs no Origin."""
    base = shared.admin_url
    session = browser(shared)
    before = shared.api("GET", "/api/sessions").json()
    elsewhere = "http://127.0.0.1:1"
    for headers in ({"Origin": elsewhere}, {}, {"Origin": "null"}):
        refused = session.post(base + "/api/sessions", json={"name": "evil"}, headers=headers, timeout=10)
        assert refused.status_code == 403, headers
        assert "Access-Control-Allow-Origin" not in refused.headers
    read = session.get(base + "/api/sessions", headers={"Sec-Fetch-Site": "same-site"}, timeout=10)
    assert read.status_code == 403
    signin_elsewhere = requests.post(base + "/ui/signin", json={"token": shared.token}, headers={"Origin": elsewhere}, timeout=10)
    assert signin_elsewhere.status_code == 403 and "Set-Cookie" not in signin_elsewhere.headers
    assert shared.api("GET", "/api/sessions").json() == before
    assert shared.api("POST", "/api/sessions", json={"name": "token"}).status_code == 201


def test_rename_route(shared):
    """PATCH /api/sessions/ID {"name"} renames; other fields or an empty name are 400s; unknown is 404."""
    sid = shared.new_session(name="before")["id"]
    renamed = shared.api("PATCH", f"/api/sessions/{sid}", json={"name": "after"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "after"
    assert shared.api("GET", f"/api/sessions/{sid}").json()["name"] == "after"
    assert shared.api("PATCH", f"/api/sessions/{sid}", json={"name": "x", "filter": "~q"}).status_code == 400
    assert shared.api("PATCH", f"/api/sessions/{sid}", json={"name": " "}).status_code == 400
    assert shared.api("PATCH", "/api/sessions/999999", json={"name": "x"}).status_code == 404


def test_exports_are_attachments_and_take_a_filter(shared, origin):
    """HAR, Postman and cookies downloads say attachment; ?filter= narrows each; a bad filter is a 400."""
    sid = shared.new_session(name="exports", cookies={"enabled": True})["id"]
    with shared.client() as client:
        client.get(f"{origin.url}/set-cookie?flavour=oat", timeout=10)
        client.get(f"{origin.url}/json?keep=1", timeout=10)
    shared.wait_for_flows(sid, 2)
    for kind in ("har", "postman", "cookies"):
        response = shared.api("GET", f"/api/sessions/{sid}/{kind}")
        assert response.status_code == 200, response.text
        assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert len(shared.api("GET", f"/api/sessions/{sid}/har", params={"filter": "keep"}).json()["log"]["entries"]) == 1
    assert shared.api("GET", f"/api/sessions/{sid}/cookies").json()["cookies"]
    assert shared.api("GET", f"/api/sessions/{sid}/cookies", params={"filter": "~m DELETE"}).json()["cookies"] == []
    bad = shared.api("GET", f"/api/sessions/{sid}/cookies", params={"filter": "~m ("})
    assert bad.status_code == 400 and "position" in bad.json()["error"]


def test_sort_by_host_and_method(shared, origin):
    """The listing sorts by the table's other columns too (host, method, path), both ways."""
    sid = shared.new_session(name="sorting")["id"]
    with shared.client() as client:
        for method, path in (("POST", "/b"), ("GET", "/c"), ("DELETE", "/a")):
            client.request(method, origin.url + path, timeout=10)
    shared.wait_for_flows(sid, 3)
    methods = [f["method"] for f in shared.flows(sid, sort="method")["flows"]]
    assert methods == ["DELETE", "GET", "POST"]
    paths = [f["path"] for f in shared.flows(sid, sort="path", order="desc")["flows"]]
    assert paths == ["/c", "/b", "/a"]
    assert shared.api("GET", f"/api/sessions/{sid}/flows", params={"sort": "colour"}).status_code == 400


def test_onboarding_page_links_to_the_ui_and_the_qr_route_is_svg(shared):
    """The admin's / links to /ui/; /api/onboarding names the proxy port and CA; the QR code is an SVG."""
    page = requests.get(shared.admin_url + "/", timeout=10).text
    assert 'href="/ui/"' in page
    info = shared.api("GET", "/api/onboarding").json()
    assert info["proxy_port"] == shared.proxy_port and info["onboarding_url"] == shared.admin_url + "/"
    assert info["ca_sha256"] == shared.status()["ca_sha256"]
    qr = shared.api("GET", "/api/onboarding/qr.svg")
    assert qr.headers["Content-Type"] == "image/svg+xml" and qr.text.startswith("<svg")


def test_capturectl_ui_prints_a_sign_in_link_that_works(shared):
    """`capturectl ui` prints /ui/?token=...; following it signs a browser in."""
    link = ok(capturectl(shared, "ui")).strip()
    assert link.startswith(shared.admin_url + "/ui/?token=")
    session = requests.Session()
    session.trust_env = False
    assert session.get(link, timeout=10).url == shared.admin_url + "/ui/"
    assert session.get(shared.admin_url + "/ui/session", timeout=10).json() == {"signed_in": True}


def test_capturectl_ui_names_the_lab_address_when_listening_everywhere(make_appliance):
    """On every interface, the link carries this machine's lab address (loopback where it has none)."""
    appliance = make_appliance(admin={"listen": "tcp:0"}).start()
    link = ok(capturectl(appliance, "ui")).strip()
    host = labaddress.lab_address() or "127.0.0.1"
    assert link.startswith(f"http://{host}:{appliance.admin_port}/ui/?token=")


def test_reachable_host():
    """Loopback is swapped for the lab address only when the listener is on every interface."""
    assert labaddress.listens_everywhere("tcp:8081") and labaddress.listens_everywhere("tcp:port=1:interface=0.0.0.0")
    assert not labaddress.listens_everywhere("tcp:8081:interface=127.0.0.1")
    assert labaddress.reachable_host("127.0.0.1", "tcp:8081:interface=127.0.0.1") == "127.0.0.1"
    assert labaddress.reachable_host("lab.example", "tcp:8081") == "lab.example"
    assert labaddress.reachable_host("localhost", "tcp:8081") == (labaddress.lab_address() or "localhost")
