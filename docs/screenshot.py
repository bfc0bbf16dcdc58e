"""Make docs/ui.png, the README's picture of the web UI: a real appliance, real traffic through
it, the real UI in Debian's Chromium, a flow's detail open.

    python docs/screenshot.py            # writes docs/ui.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from conftest import Appliance, Origin  # noqa: E402 - the test harness: appliance and origin as tests run them

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def traffic(appliance: Appliance, origin: Origin) -> None:
    with appliance.client() as client:
        client.get(f"{origin.url}/static/app.css", timeout=10)
        client.get(f"{origin.url}/static/app.js", timeout=10)
        client.post(f"{origin.url}/api/login", json={"user": "tester", "remember": True}, timeout=10)
        for item in (17, 18, 19):
            client.get(f"{origin.url}/api/items/{item}?expand=owner", timeout=10)
        client.put(f"{origin.url}/api/items/18", json={"name": "lamp", "tags": ["desk", "led"], "price": 24.5}, timeout=10)
        client.get(f"{origin.url}/status/404", timeout=10)
        client.get(f"{origin.url}/set-cookie?session=abc123", timeout=10)
        client.delete(f"{origin.url}/api/items/19", timeout=10)
        client.get(f"{origin.url}/status/500", timeout=10)
        client.get(f"{origin.url}/bytes?n=2048", timeout=10)


def main() -> None:
    out = Path(__file__).with_name("ui.png")
    origin = Origin()
    with tempfile.TemporaryDirectory() as tmp:
        appliance = Appliance(Path(tmp)).start()
        try:
            session = appliance.new_session(name="pixel 7, checkout flow")
            traffic(appliance, origin)
            appliance.wait_for_flows(session["id"], 12)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 760}, color_scheme="light")
                page.goto(f"{appliance.admin_url}/ui/?token={quote(appliance.token)}")
                rows = page.locator("#rows [role=row][data-id]")
                expect(rows).to_have_count(12)
                rows.nth(6).click()
                expect(page.get_by_role("region", name="Response")).to_be_visible()
                page.screenshot(path=str(out))
                browser.close()
        finally:
            appliance.stop()
            origin.stop()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
