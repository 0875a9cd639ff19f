"""Check the built site in a real browser: `make docs-check` (after `make docs`).

Serves ``site/`` on 127.0.0.1 (a free port), drives Debian's headless Chromium over the DevTools
protocol (through the ``websockets`` package; no browser is downloaded), and for the home page, an
API page, a guide and a tutorial checks that the page rendered its content, that every image
loaded, and that the console shows no error (no exception, no ``console.error``, no failed
resource load). Then it checks that the search finds ``custom_root``: in the search index, and by
typing it into the site's search box and reading the results. Screenshots of each page go to
``site-screenshots/`` (or ``--screenshots DIR``). Exits non-zero, naming what failed.

Chromium: ``apt-get install -y chromium`` (Debian), or ``--chromium PATH`` / ``$CHROMIUM``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]

PAGES = [
    # (name, path, a JavaScript expression true once the content rendered, an element to scroll
    # to for a second screenshot or None)
    (
        "home",
        "",
        "document.querySelector('article h1') !== null && "
        "document.querySelector('article').innerText.includes('custom_root')",
        None,
    ),
    (
        "api",
        "api/implicitdiff/",
        "document.querySelectorAll('.doc-heading').length >= 4 && "
        "document.getElementById('implicitdiff.custom_root') !== null",
        "document.getElementById('implicitdiff.custom_root')",
    ),
    (
        "guide",
        "engine/",
        "document.querySelector('article h1') !== null && "
        "document.querySelectorAll('article pre').length > 0",
        None,
    ),
    (
        "tutorial",
        "tutorials/lasso_hyperparams/",
        "document.querySelectorAll('article img')"
        ".length > 0 && document.querySelector('article').innerText.includes('Output')",
        "document.querySelector('article img')",
    ),
    (
        "tutorial2",
        "tutorials/sparsemax_prediction/",
        "document.querySelectorAll('article img')"
        ".length > 0 && document.querySelector('article').innerText.includes('Output')",
        "document.querySelector('article img')",
    ),
]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Page:
    """One browser tab, spoken to over the DevTools protocol."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def wait_event(self, method: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if any(e.get("method") == method for e in self.events):
                return True
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                break
        return any(e.get("method") == method for e in self.events)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_true(self, expression: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.evaluate(expression):
                return True
            self.pump(0.25)
        return bool(self.evaluate(expression))

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                found.append(f"exception: {d.get('exception', {}).get('description', d['text'])}")
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                found.append(f"console.{p['type']}: {args}")
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                entry = p["entry"]
                found.append(f"log: {entry['text']} {entry.get('url', '')}")
        return found


def find_chromium(given: str | None) -> str:
    for candidate in (given, os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    sys.exit(
        "docs-check: no Chromium found; install it with `apt-get install -y chromium` "
        "(Debian, as root) or pass --chromium PATH"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default=str(ROOT / "site"))
    parser.add_argument("--screenshots", default=str(ROOT / "site-screenshots"))
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args()
    site, shots = Path(args.site), Path(args.screenshots)
    if not (site / "index.html").exists():
        sys.exit(f"docs-check: {site}/index.html is missing; run `make docs` first")
    shots.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []

    index = json.loads((site / "search" / "search_index.json").read_text())
    hits = [d["location"] for d in index["docs"] if "custom_root" in d["title"] + d["text"]]
    print(f"search index: {len(index['docs'])} entries, {len(hits)} mention custom_root")
    if not any("implicitdiff.custom_root" in loc for loc in hits):
        failures.append("search index: no entry for implicitdiff.custom_root")

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tempfile.TemporaryDirectory(prefix="docs-check-chromium-")
    browser = subprocess.Popen(
        [find_chromium(args.chromium), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
         "--remote-allow-origins=*", f"--user-data-dir={profile.name}",
         "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = Path(profile.name) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = [t for t in json.load(r) if t["type"] == "page"]
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Log"):
                page.send(f"{domain}.enable")

            for name, path, rendered, scroll_to in PAGES:
                page.events.clear()
                page.send("Page.navigate", url=base + path)
                loaded = page.wait_event("Page.loadEventFired", 60)
                ok = loaded and page.wait_true(rendered, 20)
                images = page.evaluate(
                    "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                    ".map(i => i.src)"
                )
                page.pump(1.0)  # late scripts, the search worker's start
                page.screenshot(shots / f"{name}.png")
                if scroll_to:
                    page.evaluate(f"{scroll_to}.scrollIntoView()")
                    page.pump(0.5)
                    page.screenshot(shots / f"{name}-detail.png")
                errors = page.errors()
                status = "ok" if ok and not images and not errors else "FAILED"
                print(f"{name:9s} {base + path}: {status}")
                if not ok:
                    failures.append(f"{name}: content did not render ({rendered})")
                if images:
                    failures.append(f"{name}: images that did not load: {images}")
                failures += [f"{name}: {e}" for e in errors]

            # The search box, typed into as a person would.
            page.events.clear()
            page.send("Page.navigate", url=base)
            page.wait_event("Page.loadEventFired", 60)
            page.evaluate("document.querySelector('label[for=\"__search\"]').click()")
            page.wait_true(
                "document.activeElement === document.querySelector('.md-search__input')", 10
            )
            page.send("Input.insertText", text="custom_root")
            found = page.wait_true(
                "Array.from(document.querySelectorAll('.md-search-result__item'))"
                ".some(e => e.innerText.includes('custom_root'))",
                30,
            )
            count = page.evaluate("document.querySelectorAll('.md-search-result__item').length")
            page.screenshot(shots / "search.png")
            errors = page.errors()
            print(f"search box: {count} results for custom_root: {'ok' if found else 'FAILED'}")
            if not found:
                failures.append("search box: no result mentioning custom_root")
            failures += [f"search: {e}" for e in errors]
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        server.shutdown()
        profile.cleanup()

    print(f"screenshots in {shots}/: " + ", ".join(sorted(p.name for p in shots.glob("*.png"))))
    if failures:
        print("docs-check FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("docs-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
