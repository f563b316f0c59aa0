"""Debian's Firefox ESR, headless, driven over WebDriver BiDi - the W3C protocol Firefox speaks
itself on ``--remote-debugging-port`` - so no geckodriver (which Debian does not package and which
would have to be downloaded) is needed. Only what the page tests use: open a page, run a script
before the page's own, evaluate JavaScript, click.

Firefox runs an AudioContext only with a sound server to play to (a machine without one leaves every
context "suspended"), so each browser gets its own PulseAudio daemon with a null sink."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import websockets

# A profile that grants the microphone without a prompt and lets audio start without a gesture.
PREFS = {
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": False,
    "remote.active-protocols": 1,  # WebDriver BiDi only
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
}


def executable() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


class PulseAudio:
    """A private PulseAudio daemon with a null sink, for one browser's lifetime."""

    def __enter__(self) -> dict:
        path = shutil.which("pulseaudio")
        if path is None:
            raise RuntimeError("pulseaudio is not installed: run scripts/install.sh")
        self.dir = tempfile.TemporaryDirectory(prefix="pulse-")
        socket = Path(self.dir.name, "native")
        env = {
            **os.environ,
            "HOME": self.dir.name,
            "XDG_RUNTIME_DIR": self.dir.name,
            "PULSE_RUNTIME_PATH": self.dir.name,
        }
        self.proc = subprocess.Popen(
            [
                path,
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--log-target=stderr",
                "--load=module-null-sink sink_name=null",
                f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while not socket.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                self.__exit__()
                raise RuntimeError("pulseaudio did not start")
            time.sleep(0.1)
        return {"PULSE_SERVER": f"unix:{socket}"}

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


class Firefox:
    """``async with Firefox() as ff: ctx = await ff.open(url); await ff.evaluate(ctx, "1 + 1")``"""

    def __init__(self, start_timeout: float = 90.0):
        self.start_timeout = start_timeout
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Firefox:
        path = executable()
        if path is None:
            raise RuntimeError("Debian's firefox-esr is not installed: run scripts/install.sh")
        self._pulse = PulseAudio()
        sound = self._pulse.__enter__()
        self._profile = tempfile.TemporaryDirectory(prefix="ff-profile-")
        Path(self._profile.name, "user.js").write_text(
            "".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items())
        )
        self.proc = subprocess.Popen(
            [path, "--headless", "--no-remote", "--profile", self._profile.name, "--remote-debugging-port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **sound},
        )
        self.ws = None
        try:
            url = await asyncio.to_thread(self._listening_url)
            self.ws = await websockets.connect(url + "/session", max_size=None)
            await self.call("session.new", {"capabilities": {}})
        except BaseException:
            await self.__aexit__()
            raise
        return self

    def _listening_url(self) -> str:
        deadline = time.time() + self.start_timeout
        lines = []
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            lines.append(line)
            if m := re.search(r"WebDriver BiDi listening on (ws://\S+)", line):
                # keep draining its log: a full pipe would block the browser
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return m.group(1)
        raise RuntimeError("Firefox did not start its WebDriver BiDi server: " + "".join(lines)[-2000:])

    async def __aexit__(self, *exc) -> None:
        try:
            if self.ws is not None:
                await self.ws.close()
        finally:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._profile.cleanup()
            self._pulse.__exit__()

    async def call(self, method: str, params: dict) -> dict:
        n = next(self._ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == n:
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    async def open(self, url: str, before: str | None = None) -> str:
        """Navigate the first tab to ``url``; ``before`` (a function's source) runs in every new
        document ahead of the page's own scripts. Returns the browsing context id."""
        if before:
            await self.call("script.addPreloadScript", {"functionDeclaration": before})
        tree = await self.call("browsingContext.getTree", {})
        ctx = tree["contexts"][0]["context"]
        await self.call("browsingContext.navigate", {"context": ctx, "url": url, "wait": "complete"})
        return ctx

    async def click(self, ctx: str, selector: str) -> None:
        """A real (trusted) mouse click on the element's centre: it counts as a user gesture, which
        Firefox requires before an AudioContext may run."""
        x, y = await self.evaluate(
            ctx,
            f"(r => [r.x + r.width / 2, r.y + r.height / 2])"
            f"(document.querySelector({selector!r}).getBoundingClientRect())",
        )
        await self.call(
            "input.performActions",
            {
                "context": ctx,
                "actions": [
                    {
                        "type": "pointer",
                        "id": "mouse",
                        "parameters": {"pointerType": "mouse"},
                        "actions": [
                            {"type": "pointerMove", "x": int(x), "y": int(y)},
                            {"type": "pointerDown", "button": 0},
                            {"type": "pointerUp", "button": 0},
                        ],
                    }
                ],
            },
        )

    async def evaluate(self, ctx: str, expression: str):
        """The value of a JavaScript expression (promises awaited), as JSON-like Python data."""
        r = await self.call(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": ctx},
                "awaitPromise": True,
            },
        )
        if r.get("type") == "exception":
            raise RuntimeError(f"JavaScript failed: {r['exceptionDetails'].get('text')}")
        value = r["result"].get("value")
        return None if value is None else json.loads(value)
