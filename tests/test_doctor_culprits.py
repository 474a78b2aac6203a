"""``sseproxy doctor`` against the real culprits, not imitations: Express with the `compression`
middleware (what webpack-dev-server's ``compress: true`` and Next.js use), and Debian's nginx with
``proxy_buffering on``. Each needs its tool: node with express and compression in tests/e2e's
node_modules (or on NODE_PATH), and nginx; a test whose tool is missing is skipped, or fails under CI=true."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, free_port, running_app
from procs import run_cli, sseproxy_process
from test_doctor import EVENTS, upstream_app

NODE_MODULES = Path(__file__).parent / "e2e" / "node_modules"
EXPRESS_SERVER = """
const express = require('express');
const compression = require('compression');
const app = express();
app.use(compression());
app.get('/events', (req, res) => {
  res.set({ 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.flushHeaders();
  let i = 0;
  const timer = setInterval(() => {
    res.write(`id: ${i}\\ndata: {"token": "t${i}"}\\n\\n`);
    if (++i === %(events)d) { clearInterval(timer); res.end(); }
  }, 30);
  req.on('close', () => clearInterval(timer));
});
const server = app.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
"""
def nginx_conf(prefix: Path, http: str) -> str:
    """A whole nginx.conf for a test's own nginx: one worker, in the foreground, every path under
    ``prefix``, no access log, with ``http`` (server blocks or an include) inside ``http {}``."""
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{http}
}}
"""


BUFFERING_SERVER = """  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_buffering on;
    }}
  }}"""


def node_path() -> str:
    return os.pathsep.join(p for p in (str(NODE_MODULES), os.environ.get("NODE_PATH", "")) if p)


def has_express() -> bool:
    if shutil.which("node") is None:
        return False
    check = subprocess.run(["node", "-e", "require.resolve('express'); require.resolve('compression')"],
                           env={**os.environ, "NODE_PATH": node_path()}, capture_output=True)
    return check.returncode == 0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


async def doctor(url: str) -> tuple[int, dict[str, Any]]:
    code, out, err = await run_cli("doctor", "--timeout", "10s", "--json", url)
    assert out, err
    return code, json.loads(out)


@contextlib.asynccontextmanager
async def express_server(tmp_path: Path) -> AsyncIterator[str]:
    script = tmp_path / "server.cjs"
    script.write_text(EXPRESS_SERVER % {"events": EVENTS})
    proc = await asyncio.create_subprocess_exec("node", str(script), stdout=asyncio.subprocess.PIPE,
                                                env={**os.environ, "NODE_PATH": node_path()})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), WAIT * 2)).decode()
        assert line.startswith("listening "), line
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


@contextlib.asynccontextmanager
async def nginx_in_front(binary: str, upstream: str, prefix: Path) -> AsyncIterator[str]:
    port = free_port()
    server = BUFFERING_SERVER.format(port=port, upstream=upstream.rsplit(":", 1)[1])
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, server))
    proc = await asyncio.create_subprocess_exec(binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                                "-e", "stderr", stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


def require(present: bool, reason: str) -> None:
    """Skip without the tool locally; under CI=true a missing tool is a failure (.ci/run installs it)."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: .ci/run should have installed it")
    pytest.skip(reason)


async def test_express_compression_is_buffered_direct_and_streams_through_sseproxy(tmp_path: Path) -> None:
    require(has_express(), "needs node with express and compression (npm, in tests/e2e)")
    async with express_server(tmp_path) as url:
        code, report = await doctor(f"{url}/events")
        assert (code, report["verdict"]) == (1, "buffered"), report["causes"]
        assert [c["code"] for c in report["causes"] if c["severity"] == "problem"] == ["compression"]
        assert "only when compression is accepted" in report["causes"][0]["message"]
        assert report["headers"]["content-encoding"] in ("br", "gzip")  # compression 1.8 prefers br
        assert report["headers"]["x-powered-by"] == "Express"
        assert report["events"] == report["identity"]["events"] == EVENTS
        async with sseproxy_process("serve", "--listen", "127.0.0.1:0", "--route", f"/={url}") as (_, proxy):
            code, report = await doctor(f"{proxy}/events")
        assert (code, report["verdict"]) == (0, "streams"), report["causes"]
        assert report["events"] == EVENTS and "content-encoding" not in report["headers"]


async def test_nginx_with_proxy_buffering_is_a_buffering_intermediary(tmp_path: Path) -> None:
    require(nginx_binary() is not None, "needs nginx (Debian's package)")
    binary = nginx_binary()
    assert binary is not None
    async with running_app(upstream_app()) as upstream, nginx_in_front(binary, upstream, tmp_path) as nginx:
        code, report = await doctor(f"{upstream}/events")
        assert (code, report["verdict"]) == (0, "streams"), report["causes"]  # the server itself is clean
        code, report = await doctor(f"{nginx}/events")
    assert (code, report["verdict"]) == (1, "buffered"), report["causes"]
    assert [c["code"] for c in report["causes"] if c["severity"] == "problem"] == ["buffering_intermediary"]
    assert report["headers"]["server"].startswith("nginx")
    assert "nginx" in report["causes"][0]["message"] and "proxy_buffering off" in report["causes"][0]["fix"]
    assert report["events"] == EVENTS
