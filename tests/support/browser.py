"""A headless Chromium driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``): no
WebDriver, no websocket library. Enough to open pages at a given window size, type into forms, read the DOM
and take screenshots. Skips (or fails with GW_REQUIRE_BROWSER=1) when Chromium is missing.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.services import REQUIRE_BROWSER, unavailable

CHROMIUM = os.environ.get("GW_CHROMIUM", "/usr/bin/chromium")


def chromium_binary() -> str:
    """The Chromium to run (skips the test when there is none)."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        unavailable(f"headless Chromium not found at {CHROMIUM} (apt-get install -y chromium)", REQUIRE_BROWSER)
    return str(path)


class Browser:
    """One headless Chromium with one tab; every call waits at most ``timeout_s``."""

    def __init__(self, profile: Path, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4 (kept open: close_fds runs after preexec_fn).
        high_r, high_w = os.dup(to_child_r), os.dup(from_child_w)

        def fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=fds, pass_fds=(3, 4, high_r, high_w))
        for fd in (to_child_r, from_child_w, high_r, high_w):
            os.close(fd)
        self._buf = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable")
        except BaseException:
            self.close()
            raise

    # -- protocol ---------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A command to the tab."""
        return self._call(method, params, self.session)

    def _wait_event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == name:
                    return self._events.pop(i)
            self._events.append(self._read_message(deadline))

    # -- what tests use ---------------------------------------------------------------------------
    def size(self, width: int, height: int, *, mobile: bool) -> None:
        """Emulate a window (a phone: mobile=True, touch layout viewport)."""
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": mobile})

    def open(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")

    def run(self, script: str) -> Any:
        """Evaluate JavaScript in the page; its value."""
        result = self.call("Runtime.evaluate", {"expression": script, "returnByValue": True})
        return result.get("result", {}).get("value")

    def submit(self, script: str) -> None:
        """Run a script that submits a form and wait for the next page."""
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        self.run(script)
        self._wait_event("Page.loadEventFired")

    def html(self) -> str:
        """The current DOM."""
        return str(self.run("document.documentElement.outerHTML"))

    def url(self) -> str:
        """The current address."""
        return str(self.run("location.href"))

    def screenshot(self, path: Path, *, full_page: bool = False) -> bytes:
        """A PNG of the viewport (or the whole page) saved at ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        path.write_bytes(data)
        return data

    def allow_downloads(self, folder: Path) -> None:
        """Save downloads (a response with Content-Disposition: attachment) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self._call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})

    def wait_download(self, folder: Path, suffix: str) -> Path:
        """The first finished download in ``folder`` ending with ``suffix`` (waits at most ``timeout_s``)."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            done = sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.stat().st_size > 0)
            if done:
                return done[0]
            time.sleep(0.1)
        raise TimeoutError(f"no download ending {suffix!r} in {folder}: {sorted(p.name for p in folder.iterdir())}")

    def close(self) -> None:
        """Quit Chromium and close the pipes."""
        try:
            if self.proc.poll() is None:
                try:
                    self._call("Browser.close")
                except (OSError, RuntimeError, TimeoutError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
