"""The web UI in a real Chromium (Debian's, headless), driven by accessible names as a tester would:
sign-in, live rows, filter, sort, detail, replay, exports, charts, the QR code, and the security
promises (captured markup stays text; a page on another loopback port changes and reads nothing).

Few tests, each covering a whole task, on one appliance: the machine has two cores."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import jsonschema
import pytest
import zxingcpp
from playwright.sync_api import Page, expect

import test_e2e_grpc_messages
from conftest import Appliance, wait_for

DATA = Path(__file__).parent / "data"
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's Chromium, never a downloaded one, with nothing reaching out of the machine."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}, "accept_downloads": True}


@pytest.fixture(scope="module")
def grpc_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = test_e2e_grpc_messages.serve(tmp_path_factory.mktemp("grpc"))
    yield server
    server.stop(grace=None)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, grpc_origin: Any) -> Iterator[Appliance]:
    appliance = Appliance(tmp_path_factory.mktemp("ui"), tls={"upstream_ca": grpc_origin.ca.path}).start()
    yield appliance
    appliance.stop()


@pytest.fixture
def console(page: Page) -> Iterator[list[str]]:
    """Every console error and uncaught exception of the page; each test ends with none.

    Chromium logs every 4xx answer to a fetch as an error; a 400 (a bad filter, shown to the
    tester) and a 401 (a wrong token) are answers the UI expects and shows, so those are let pass.
    """
    errors: list[str] = []
    expected = ("status of 400 (Bad Request)", "status of 401 (Unauthorized)")

    def seen(message: Any) -> None:
        if message.type == "error" and not message.text.endswith(expected):
            errors.append(message.text)

    page.on("console", seen)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield errors
    assert errors == []


def sign_in(page: Page, appliance: Appliance) -> None:
    page.goto(appliance.admin_url + "/ui/?token=" + quote(appliance.token))
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def rows(page: Page):
    return page.get_by_role("grid", name="Flows").locator(".rows [role=row]")


def test_sign_in_wrong_then_right_then_out_and_by_link(ui, page, console):
    """A wrong token shows an error and nothing else; the right one opens the app; sign-out returns to
    the form; the link signs in and leaves no token in the address bar."""
    page.goto(ui.admin_url + "/ui/")
    page.get_by_label("Admin token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="Wrong admin token")).to_be_visible()
    expect(page.get_by_role("navigation", name="Views")).to_be_hidden()
    page.get_by_label("Admin token").fill(ui.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Views")).to_be_visible()
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["capture_ui"] and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert ui.token not in cookies[0]["value"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Admin token")).to_be_visible()
    page.goto(ui.admin_url + "/ui/?token=nope")
    assert "nope" not in page.url
    expect(page.get_by_role("alert").filter(has_text="Wrong admin token in the sign-in link")).to_be_visible()
    page.goto(ui.admin_url + "/ui/?token=" + quote(ui.token))
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert page.url == ui.admin_url + "/ui/"


def test_a_capture_session_in_the_browser(ui, origin, page, console, tmp_path):
    """Start a session, watch rows arrive live, filter (with an error shown at its position), sort by a
    column, read a flow with the keyboard, replay it, and download HAR, Postman and cookies that validate."""
    sign_in(page, ui)
    page.get_by_role("button", name="Sessions").click()
    form = page.locator("#start-form")
    form.get_by_label("Name").fill("browser run")
    form.get_by_label("Collect cookies").check()
    form.get_by_role("button", name="Start session").click()
    expect(page.get_by_role("row", name="browser run")).to_be_visible()
    page.get_by_role("button", name="Flows").click()
    expect(page.get_by_text("0 flows")).to_be_visible()

    with ui.client() as client:  # live: the page is not reloaded from here on
        client.get(f"{origin.url}/set-cookie?flavour=oat", timeout=10)
        client.post(f"{origin.url}/echo?item=42", json={"name": "widget", "tags": ["a", "b"]}, timeout=10)
        client.get(f"{origin.url}/status/404", timeout=10)
        client.get(f"{origin.url}/static/site.css", timeout=10)
    expect(rows(page)).to_have_count(4)
    expect(rows(page).nth(2)).to_have_class("row s-4xx")

    page.get_by_label("Filter", exact=True).fill("~m (")
    expect(page.get_by_role("alert").filter(has_text="position")).to_be_visible()
    page.get_by_label("Filter", exact=True).fill("~m POST")
    expect(rows(page)).to_have_count(1)
    page.get_by_label("Filter", exact=True).fill("")
    page.get_by_label("Hide assets").check()
    expect(rows(page)).to_have_count(3)
    page.get_by_label("Hide assets").uncheck()
    page.get_by_role("button", name="4xx").click()
    expect(rows(page)).to_have_count(1)
    page.get_by_role("button", name="4xx").click()
    expect(rows(page)).to_have_count(4)

    page.get_by_role("columnheader", name="Status").get_by_role("button").click()
    page.get_by_role("columnheader", name="Status").get_by_role("button").click()  # descending
    expect(page.get_by_role("columnheader", name="Status")).to_have_attribute("aria-sort", "descending")
    expect(rows(page).first.get_by_role("gridcell").nth(6)).to_have_text("404")
    page.get_by_role("columnheader", name="Time").get_by_role("button").click()
    expect(rows(page).first.get_by_role("gridcell").nth(5)).to_have_text("/set-cookie?flavour=oat")

    grid = page.get_by_role("grid", name="Flows")
    grid.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    detail = page.get_by_role("region", name="Flow detail")
    expect(detail.get_by_role("heading", name="POST")).to_be_visible()
    request = detail.get_by_role("region", name="Request")
    expect(request.get_by_role("table", name="Query")).to_contain_text("item42")
    expect(request.get_by_role("table", name="Headers")).to_contain_text("application/json")
    expect(request.locator(".json")).to_contain_text('"widget"')
    expect(detail.get_by_role("img", name="request sent")).to_be_visible()
    detail.get_by_role("button", name="Copy as curl").click()
    expect(detail.get_by_label("curl command")).to_contain_text("item=42")
    request.get_by_label("Request body view").select_option("hex")
    expect(request.locator("pre.hex")).to_contain_text("7b 22")
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()

    rows(page).nth(1).click()
    detail.get_by_role("button", name="Replay").click()
    expect(detail.get_by_role("status")).to_contain_text("Replayed as flow")
    expect(rows(page)).to_have_count(5)

    session_id = ui.api("GET", "/api/sessions").json()["sessions"][-1]["id"]
    files = {}
    for name in ("HAR", "Postman", "Cookies"):
        with page.expect_download() as info:
            page.get_by_role("button", name=name, exact=True).click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        files[name] = json.loads(path.read_text())
    har_schema = json.loads((DATA / "har-1.2.json").read_text())
    jsonschema.Draft6Validator(har_schema, format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER).validate(files["HAR"])
    assert len(files["HAR"]["log"]["entries"]) == 5
    postman_schema = json.loads((DATA / "postman-collection-v2.1.0.json").read_text())
    jsonschema.Draft7Validator(postman_schema).validate(files["Postman"])
    assert [folder["name"] for folder in files["Postman"]["item"]] == [f"127.0.0.1:{origin.port}"]  # by domain, then endpoint
    assert {c["name"] for c in files["Cookies"]["cookies"]} == {"flavour"}
    page.get_by_label("Filter", exact=True).fill("~m POST")
    expect(rows(page)).to_have_count(2)
    with page.expect_download() as info:
        page.get_by_role("button", name="HAR", exact=True).click()
    filtered = json.loads(Path(info.value.path()).read_text())
    assert {e["request"]["method"] for e in filtered["log"]["entries"]} == {"POST"}
    assert ui.flows(session_id)["total"] == 5


def test_overview_charts_and_onboarding_qr(ui, origin, page, console):
    """Overview draws a chart per grouping; Onboarding shows the proxy port and fingerprint, and its QR
    code decodes to the onboarding page's URL."""
    session = ui.new_session(name="charts")
    with ui.client() as client:
        client.get(f"{origin.url}/bytes?n=10", timeout=10)
    ui.wait_for_flows(session["id"], 1)
    sign_in(page, ui)
    page.get_by_label("Session", exact=True).select_option(str(session["id"]))
    page.get_by_role("button", name="Overview").click()
    for title in ("Flows by host", "Flows by method", "Flows by status", "Flows by content type", "Bytes by host"):
        chart = page.get_by_role("img", name=title)
        expect(chart).to_be_visible()
        expect(chart.locator("rect")).not_to_have_count(0)
    page.get_by_role("button", name="Onboarding").click()
    expect(page.locator("#proxy-port")).to_have_text(str(ui.proxy_port))
    expect(page.locator("#ca-fingerprint")).to_have_text(ui.status()["ca_sha256"])
    qr = page.get_by_role("img", name="QR code of the onboarding page")
    expect(qr).to_be_visible()
    wait_for(lambda: page.evaluate("document.querySelector('#qr').naturalWidth") > 0)
    # Grey levels read back from a canvas, decoded here: the code a phone's camera would see.
    width, height, grey = page.evaluate("""() => {
      const img = document.querySelector('#qr'), canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth * 2; canvas.height = img.naturalHeight * 2;
      const g = canvas.getContext('2d'); g.fillStyle = '#fff'; g.fillRect(0, 0, canvas.width, canvas.height);
      g.imageSmoothingEnabled = false; g.drawImage(img, 0, 0, canvas.width, canvas.height);
      const rgba = g.getImageData(0, 0, canvas.width, canvas.height).data, out = [];
      for (let i = 0; i < rgba.length; i += 4) out.push(rgba[i]);
      return [canvas.width, canvas.height, out];
    }""")
    image = memoryview(bytes(grey)).cast("B", (height, width))
    decoded = [code.text for code in zxingcpp.read_barcodes(image)]
    assert decoded == [ui.admin_url + "/"]
    expect(page.get_by_role("link", name=ui.admin_url + "/")).to_be_visible()


HOSTILE_PATH = "/echo/<script>alert('path')</script>"
HOSTILE_HEADER = "<img src=x onerror=alert('header')>"
HOSTILE_BODY = "<html><body><script>alert('body')</script><img src=x onerror=alert(2)><b>bold</b></body></html>"


def test_captured_markup_is_shown_as_text(ui, origin, page, console):
    """Script in a path, a header and an HTML body is shown as the text it is: no dialog, no element."""
    session = ui.new_session(name="hostile")
    proxy = http.client.HTTPConnection("127.0.0.1", ui.proxy_port, timeout=10)  # sends the path as it is
    proxy.request("POST", origin.url + HOSTILE_PATH, body=HOSTILE_BODY.encode(),
                  headers={"X-Evil": HOSTILE_HEADER, "Content-Type": "text/html"})
    proxy.getresponse().read()
    proxy.close()
    ui.wait_for_flows(session["id"], 1)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, ui)
    page.get_by_label("Session", exact=True).select_option(str(session["id"]))
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("<script>alert('path')</script>")
    rows(page).first.click()
    request = page.get_by_role("region", name="Request")
    expect(request.get_by_role("table", name="Headers")).to_contain_text(HOSTILE_HEADER)
    expect(request.locator("pre.body")).to_have_text(HOSTILE_BODY)
    response = page.get_by_role("region", name="Response")
    expect(response).to_contain_text("alert('path')")  # the origin echoes the path back in JSON
    assert page.locator("#detail script, #detail b, #rows script, #detail img[src='x']").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_page_on_another_port_changes_and_reads_nothing(ui, page, console):
    """In the signed-in browser, a page served from another loopback port tries a form POST and fetch
    calls (create, delete, read) against the API: nothing changes, nothing is read."""
    keep = ui.new_session(name="keep me")
    sign_in(page, ui)
    before = ui.api("GET", "/api/sessions").json()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    _AttackerPage.page = b"<!doctype html><title>elsewhere</title><p>another port</p>"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        attacker = f"http://127.0.0.1:{server.server_address[1]}/"
        page.goto(attacker)
        api = ui.admin_url + "/api"
        results = page.evaluate("""async ([api, id]) => {
          const out = {};
          const attempt = async (name, url, init) => {
            try { const r = await fetch(url, {credentials: 'include', ...init}); out[name] = [r.type, r.status, await r.text()]; }
            catch (e) { out[name] = ['error', String(e)]; }
          };
          await attempt('read', api + '/sessions', {});
          await attempt('create', api + '/sessions', {method: 'POST', body: '{"name": "evil"}', headers: {'Content-Type': 'text/plain'}});
          await attempt('create-no-cors', api + '/sessions', {method: 'POST', mode: 'no-cors', body: '{"name": "evil2"}'});
          await attempt('delete', api + '/sessions/' + id, {method: 'DELETE'});
          await attempt('signout', api.replace('/api', '/ui/signout'), {method: 'POST', mode: 'no-cors'});
          return out;
        }""", [api, keep["id"]])
        for name, result in results.items():
            assert result[0] in ("error", "opaque") and ui.token not in json.dumps(result), (name, result)
            if result[0] == "opaque":
                assert result[1] == 0 and result[2] == ""
        form_target = page.evaluate("""(url) => {
          const form = document.createElement('form');
          form.method = 'POST'; form.action = url; form.enctype = 'text/plain';
          const field = document.createElement('input'); field.name = '{"name": "evil3", "x": "'; field.value = '"}';
          form.append(field); document.body.append(form); form.submit(); return url;
        }""", api + "/sessions")
        page.wait_for_url(form_target)
        assert "403" in page.content() or "refused" in page.content()
    finally:
        server.shutdown()
        server.server_close()
    assert ui.api("GET", "/api/sessions").json() == before
    page.goto(ui.admin_url + "/ui/")  # still signed in: the other page could not sign this browser out
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    console.clear()  # the refused requests log network errors on the attacker's page, as they should


def test_websocket_messages_in_the_detail(ui, page, console):
    """A WebSocket's flow shows its messages (direction, type, content) and how it closed."""
    from websockets.sync.client import connect  # sync: Playwright's own loop runs in this thread

    from test_e2e_websocket import WsOrigin

    server = WsOrigin()
    try:
        session = ui.new_session(name="sockets")
        with connect(f"ws://127.0.0.1:{server.port}/chat", proxy=ui.proxy_url, open_timeout=15) as ws:
            ws.send("hello <b>there</b>")
            ws.recv(timeout=15)
            ws.close(4000, "done here")
        flow_id = ui.wait_for_flows(session["id"], 1)[0]["id"]
        wait_for(lambda: ui.api("GET", f"/api/flows/{flow_id}").json()["websocket"]["open"] is False, 15)
        sign_in(page, ui)
        page.get_by_label("Session", exact=True).select_option(str(session["id"]))
        rows(page).first.click()
        messages = page.get_by_role("region", name="WebSocket messages")
        expect(messages.get_by_role("heading")).to_have_text("WebSocket messages (2)")
        expect(messages.get_by_role("row")).to_have_count(3)
        expect(messages.get_by_role("row").nth(1)).to_contain_text("→")
        expect(messages.get_by_role("row").nth(1)).to_contain_text("hello <b>there</b>")
        expect(messages).to_contain_text("closed by client, code 4000 done here")
    finally:
        server.stop()


def test_grpc_messages_in_the_detail(ui, grpc_origin, page, console):
    """A bidirectional gRPC call's flow names its service and method and lists its messages as they
    passed, request and response in turn, each with its time and decoded fields."""
    session = ui.new_session(name="grpc")
    with test_e2e_grpc_messages.channel_through(ui, grpc_origin.port) as channel:
        assert test_e2e_grpc_messages.ping_pong_sizes(channel) == [2.0, 4.0]
    ui.wait_for_flows(session["id"], 1)
    sign_in(page, ui)
    page.get_by_label("Session", exact=True).select_option(str(session["id"]))
    rows(page).first.click()
    messages = page.get_by_role("region", name="gRPC messages")
    expect(messages.get_by_role("heading")).to_have_text(f"gRPC {test_e2e_grpc_messages.SERVICE}/Sizes")
    expect(messages).to_contain_text("grpc-status 0")
    summaries = messages.locator("summary")
    expect(summaries).to_have_count(4)
    for i, side in enumerate(["request", "response", "request", "response"]):
        expect(summaries.nth(i)).to_contain_text(f"{side} message {i + 1}")
        expect(summaries.nth(i)).to_contain_text(re.compile(r"at \d\d:\d\d:\d\d\.\d{3}"))
    expect(messages.locator("pre").nth(2)).to_contain_text('"value": 3')
    # The bodies are binary framing: shown as hex, not as mojibake text.
    expect(page.get_by_label("Request body view")).to_have_value("hex")
    expect(page.get_by_label("Response body view")).to_have_value("hex")


def test_session_actions(ui, page, console):
    """From the Sessions view: pause, resume, rename, stop and delete a session, each seen by the API."""
    session = ui.new_session(name="to manage")
    sign_in(page, ui)
    page.get_by_role("button", name="Sessions").click()
    row = page.get_by_role("row", name="to manage")

    def state() -> str:
        return ui.api("GET", f"/api/sessions/{session['id']}").json()["state"]

    row.get_by_role("button", name="Pause").click()
    expect(row.get_by_text("paused", exact=True)).to_be_visible()
    assert state() == "paused"
    row.get_by_role("button", name="Resume").click()
    expect(row.get_by_text("capturing", exact=True)).to_be_visible()
    row.get_by_role("button", name="Rename").click()
    row.get_by_label("New name").fill("managed")
    row.get_by_role("button", name="Save name").click()
    row = page.get_by_role("row", name="managed")
    expect(row).to_be_visible()
    assert ui.api("GET", f"/api/sessions/{session['id']}").json()["name"] == "managed"
    row.get_by_role("button", name="Stop").click()
    expect(row.get_by_text("stopped", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name="Clear")).to_have_count(0)
    row.get_by_role("button", name="Delete").click()
    row.get_by_role("button", name="Confirm delete").click()
    expect(page.get_by_role("row", name="managed")).to_have_count(0)
    assert ui.api("GET", f"/api/sessions/{session['id']}").status_code == 404
