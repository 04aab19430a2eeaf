"""The report in a real headless Chromium: it loads from disk with no console error, no failed or external request,
every figure decoded, and a screenshot for a human to look at."""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import need_service, shared_report

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,3000", "--hide-scrollbars", "--remote-debugging-pipe"]


class Browser:
    """Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out, NUL-separated JSON): no port to
    open, no websocket library. Console messages reach us with their level, unlike --enable-logging."""

    def __init__(self, profile: Path):
        # bash maps our stdin/stdout pipes onto the fds 3 and 4 that --remote-debugging-pipe uses
        cmd = " ".join([CHROMIUM, *FLAGS, f"--user-data-dir={profile}"])
        self.proc = subprocess.Popen(["bash", "-c", f"exec {cmd} 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.events, self.replies, self.next_id = [], {}, 0
        self.inbox = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while chunk := self.proc.stdout.read1(65536):
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                self.inbox.put(json.loads(raw))

    def _pump(self, until: float):
        try:
            msg = self.inbox.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return
        if "id" in msg:
            self.replies[msg["id"]] = msg
        else:
            self.events.append(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while self.next_id not in self.replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            self._pump(deadline)
        reply = self.replies.pop(self.next_id)
        assert "error" not in reply, reply
        return reply.get("result", {})

    def wait_for(self, method: str, session: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method and e.get("sessionId") == session for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} in {timeout} s")
            self._pump(deadline)

    def settle(self, seconds: float = 0.5):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline)

    def open(self, url: str) -> str:
        """A new tab with console, log and network events on, 1400 x 3000 CSS pixels, loaded with url."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 3000, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        self.settle()
        return session

    def problems(self, session: str) -> dict:
        """Console errors and warnings, uncaught exceptions, browser log errors, failed requests, and every URL the
        page requested."""
        mine = [e for e in self.events if e.get("sessionId") == session]
        p = lambda m: [e["params"] for e in mine if e["method"] == m]
        return {"console": [(c["type"], [a.get("value", a.get("description")) for a in c["args"]])
                            for c in p("Runtime.consoleAPICalled") if c["type"] in ("error", "assert", "warning")],
                "exceptions": [(x["exceptionDetails"].get("text"), x["exceptionDetails"].get("exception", {}).get("description"))
                               for x in p("Runtime.exceptionThrown")],
                "log": [(x["entry"]["level"], x["entry"]["text"]) for x in p("Log.entryAdded")
                        if x["entry"]["level"] in ("error", "warning")],
                "failed": [x.get("errorText") for x in p("Network.loadingFailed")],
                "requests": [x["request"]["url"][:120] for x in p("Network.requestWillBeSent")]}

    def evaluate(self, session: str, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may already be gone; we kill it below either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    need_service(Path(CHROMIUM).exists(), f"Chromium ({CHROMIUM}, apt-get install chromium)")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_detector_sees_console_errors_and_missing_files(browser, tmp_path):
    """Sanity of the check itself: a page that logs console.error, throws, and references a missing image is
    reported on all three counts (so the clean result below is not vacuous)."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><meta charset="utf-8"><img src="missing.png">'
                    '<script>console.error("canary"); throw new Error("boom")</script>')
    found = browser.problems(browser.open(page.as_uri()))
    assert any("canary" in str(args) for _, args in found["console"])
    assert any("boom" in str(x) for x in found["exceptions"])
    assert found["failed"] and any(u.endswith("missing.png") for u in found["requests"])


def test_report_loads_clean_and_screenshot(browser, tmp_path_factory, tmp_path):
    """The shared study's report, opened from disk: no console error or warning, no exception, no failed request,
    no request other than the file itself and its inline data: images, no script element or inline event
    handler, every section present, every image decoded; the 1400 x 3000 screenshot is saved in the test's tmp dir
    and as reports/screenshot.png in the study's folder."""
    info = shared_report(tmp_path_factory)
    html_path = Path(info["html"])
    session = browser.open(html_path.as_uri())
    found = browser.problems(session)
    assert found["console"] == [] and found["exceptions"] == [] and found["log"] == [] and found["failed"] == [], found
    assert all(u == html_path.as_uri() or u.startswith("data:") for u in found["requests"]), found["requests"]
    assert browser.evaluate(session, "document.querySelectorAll('script, [onerror], [onload], iframe').length") == 0
    ids = browser.evaluate(session, "[...document.querySelectorAll('section')].map(s => s.id)")
    assert ids[:3] == ["headline", "provenance", "leaderboard"] and "on-the-line" in ids and "failures" in ids
    assert browser.evaluate(session, "[...document.images].every(i => i.complete && i.naturalWidth > 0)") is True
    assert browser.evaluate(session, "document.images.length") >= 6
    shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "screenshot.png").write_bytes(shot)
    keep = html_path.parent.parent / "screenshot.png"
    keep.write_bytes(shot)
    full = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
    (html_path.parent.parent / "screenshot-full.png").write_bytes(base64.b64decode(full["data"]))
    print(f"screenshot: {keep}")


def test_chromium_cli_screenshot_flags(tmp_path_factory, tmp_path):
    """The plain command line (`--screenshot --window-size=1400,3000` with the same isolation flags) also renders
    the report without a crash and writes a PNG: what a CI log or a person would run by hand."""
    need_service(Path(CHROMIUM).exists(), f"Chromium ({CHROMIUM}, apt-get install chromium)")
    info = shared_report(tmp_path_factory)
    out = tmp_path / "cli.png"
    flags = [f for f in FLAGS if f != "--remote-debugging-pipe"]
    proc = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={out}",
                           Path(info["html"]).as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copy(out, Path(info["html"]).parent.parent / "screenshot-cli.png")
