"""The web UI on a big session: time to first rows, scroll jumps, and the page's memory.

Builds a store holding ``--flows`` flows in one session (bench/store_query.py's
synthetic mix), starts the appliance on it, opens the UI in Debian's Chromium
(headless, Playwright) and prints one JSON line:

- ``first_rows_ms``: from navigating to the signed-in UI until the table shows rows;
- ``jump_ms``: for scroll jumps to the middle and the end, until those rows show;
- ``filter_ms`` and ``sort_ms``: a filter typed (the field waits 250 ms for more typing, counted here)
  and a column sorted, until the new rows show;
- ``js_heap_mb`` and ``dom_nodes`` (Chrome's own counters) and ``row_elements`` (rows in the DOM).

    python bench/ui_flows.py                 # 100,000 flows
    python bench/ui_flows.py --quick         # 5,000 flows: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from playwright.sync_api import sync_playwright  # noqa: E402

from capture.sessiond.store import open_store  # noqa: E402
from store_query import packed_flow  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--enable-precise-memory-info"]


def build(database: Path, count: int) -> None:
    store = open_store(str(database))
    session_id = store.create_session("bench ui")["id"]
    rnd = random.Random(1)
    for first in range(0, count, 500):
        store.ingest("bench", [(i + 1, [session_id], packed_flow(i, rnd, 64)) for i in range(first, min(count, first + 500))])
    store.stop(session_id)  # history: nothing else arrives while the page is measured
    store.close()


def start(directory: Path) -> tuple[subprocess.Popen, str, str]:
    config = directory / "capture.ini"
    config.write_text(f"""[proxy]
listen = tcp:0:interface=127.0.0.1
[tls]
ca_dir = {directory}/ca
[store]
socket = {directory}/run/sessiond.sock
database = {directory}/capture.sqlite
[admin]
listen = tcp:0:interface=127.0.0.1
token_file = {directory}/admin.token
""")
    log = open(directory / "twistd.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                "--pidfile=", "capture", "--config", str(config)], cwd=directory, stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.findall(r"admin listening on .*?:(\d+)", (directory / "twistd.log").read_text(errors="replace"))
        if found and (directory / "admin.token").exists():
            break
        if process.poll() is not None:
            raise SystemExit((directory / "twistd.log").read_text())
        time.sleep(0.2)
    else:
        raise SystemExit("the appliance did not start in 60 s")
    return process, f"http://127.0.0.1:{found[0]}", (directory / "admin.token").read_text().strip()


def until_rows(page, minimum_id: int | None = None) -> float:
    """Milliseconds until the table shows loaded rows (and, if given, one with at least that id)."""
    started = time.perf_counter()
    page.wait_for_function("""(minimum) => {
      const rows = [...document.querySelectorAll('#rows [role=row][data-id]')];
      return rows.length > 0 && (minimum === null || rows.some((r) => Number(r.dataset.id) >= minimum));
    }""", arg=minimum_id, timeout=60000, polling="raf")
    return round((time.perf_counter() - started) * 1000, 1)


def until_changed(page, action) -> float:
    """Milliseconds from ``action`` until the rows shown are other rows (its filter or order has arrived)."""
    before = page.evaluate(_SHOWN)
    started = time.perf_counter()
    action()
    page.wait_for_function(f"(before) => {{ const now = ({_SHOWN})(); return now !== '' && now !== before; }}",
                           arg=before, timeout=60000, polling="raf")
    return round((time.perf_counter() - started) * 1000, 1)


_SHOWN = "() => [...document.querySelectorAll('#rows [role=row][data-id]')].map((r) => r.dataset.id).join(',')"


def measure(admin: str, token: str, count: int) -> dict:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{admin}/ui/?token={token}", wait_until="commit")
        started = time.perf_counter()
        until_rows(page)
        first = round((time.perf_counter() - started) * 1000, 1)
        jumps = {}
        for name, fraction in (("middle", 0.5), ("end", 1.0)):
            page.evaluate("(f) => { const v = document.querySelector('#viewport'); v.scrollTop = v.scrollHeight * f; }", fraction)
            jumps[name] = until_rows(page, int(count * fraction * 0.98))
        filter_ms = until_changed(page, lambda: page.get_by_label("Filter", exact=True).fill("~m POST & ~d api"))
        sort_ms = until_changed(page, lambda: page.get_by_role("columnheader", name="Duration").get_by_role("button").click())
        client = page.context.new_cdp_session(page)
        client.send("Performance.enable")
        metrics = {m["name"]: m["value"] for m in client.send("Performance.getMetrics")["metrics"]}
        rows = page.locator("#rows [role=row]").count()
        browser.close()
    return {"flows": count, "first_rows_ms": first, "jump_ms": jumps, "filter_ms": filter_ms, "sort_ms": sort_ms,
            "js_heap_mb": round(metrics["JSHeapUsedSize"] / 2**20, 1), "dom_nodes": int(metrics["Nodes"]),
            "row_elements": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 flows, to check the script works")
    args = parser.parse_args()
    count = 5000 if args.quick else args.flows
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        build(directory / "capture.sqlite", count)
        print(f"built a store of {count} flows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        process, admin, token = start(directory)
        try:
            print(json.dumps(measure(admin, token, count)))
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
