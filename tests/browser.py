"""Running the browser driver (tests/e2e/drive.mjs) from pytest: Debian's Chromium, playwright-core.

Outside CI, a missing Chromium, Node or npm install skips the browser tests with the reason; with
CI=true it is an error, because .ci/run installs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

E2E = Path(__file__).parent / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_browser_tools() -> None:
    missing = [what for what, ok in [
        ("Chromium (apt-get install chromium)", Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
        ("tests/e2e/node_modules (npm install --prefix tests/e2e)",
         (E2E / "node_modules" / "playwright-core").exists()),
    ] if not ok]
    if missing:
        reason = "browser tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI installs them: see .ci/run)")
        pytest.skip(reason)


def page_site(pages: dict[str, str], *routes: web.RouteDef) -> web.Application:
    """An upstream for a page test: each of ``pages`` (path: HTML) served as text/html, with
    ``routes`` (the streams, scripts and so on the pages load) beside them."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    app.add_routes([web.get(path, page) for path in pages])
    app.add_routes(routes)
    return app


class Browser:
    """A page in headless Chromium; ``expect`` waits (bounded) for something the page reports."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._commands = 0

    async def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for item in self.seen:
            if predicate(item):
                self.seen.remove(item)
                return item
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the page never reported it; it reported {self.seen[-20:]}")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                err = await self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"the browser driver exited: {err.decode()[-2000:]}")
            item = json.loads(line)
            if predicate(item):
                return item
            self.seen.append(item)

    async def command(self, within: float = 20, **command: Any) -> None:
        """Send the driver a command (see drive.mjs) and wait for it to be done; fail with its error."""
        assert self.proc.stdin is not None
        self._commands += 1
        ident = self._commands
        self.proc.stdin.write(json.dumps({"id": ident, **command}).encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await self.expect(lambda i: i["kind"] in ("done", "failed") and i.get("id") == ident, within)
        if answer["kind"] == "failed":
            raise AssertionError(f"the browser could not {command}: {answer['error']}")

    async def wait_for(self, expression: str, timeout: float = 10) -> None:
        """Wait (bounded) until a JS expression is true in the page."""
        await self.command(within=timeout + 5, waitFor=expression, timeout=int(timeout * 1000))


@contextlib.asynccontextmanager
async def browser_page(url: str) -> AsyncIterator[Browser]:
    require_browser_tools()
    proc = await asyncio.create_subprocess_exec(
        "node", str(E2E / "drive.mjs"), url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=E2E, env={**os.environ, "CHROMIUM": CHROMIUM})
    try:
        browser = Browser(proc)
        await browser.expect(lambda i: i["kind"] == "loaded", timeout=60)
        yield browser
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
