"""Headless Chromium (Debian's `chromium`, installed by ./run-tests.sh when missing) driven over
the DevTools protocol, for the browser tests."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time

import requests
import websocket

from dpms_helpers import TIMEOUT

BROWSER_SECS = 60  # a bound on every wait for the browser


class Browser:
    """Headless Chromium on a DevTools port of its choosing (loopback), one page."""

    def __init__(self, binary, profile: pathlib.Path):
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",  # the tests run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + BROWSER_SECS
        while not (active.exists() and len(active.read_text().split()) >= 2):
            assert self.proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium opened no DevTools port"
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        pages = []
        while not pages:
            pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT).json()
                     if t.get("type") == "page"]
            assert time.monotonic() < deadline, "chromium has no page"
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=BROWSER_SECS,
                                              suppress_origin=True)
        self.next_id = 0

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        for _ in range(10_000):  # events come in between; bounded
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
        raise AssertionError(f"no answer to {method}")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        got = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in got, got
        return got["result"].get("value")

    def wait_for(self, expression: str, what: str):
        """Polls `expression` until it is truthy (bounded by BROWSER_SECS); its value."""
        deadline = time.monotonic() + BROWSER_SECS
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never showed {what}"
            time.sleep(0.1)
