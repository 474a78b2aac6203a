"""The key stays in the proxy: no log line, error body, response header or `check` output shows it,
and a proxy that would let anyone spend it refuses to start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from helpers import WAIT, free_port, raw_request, raw_server, read_head, running_app
from procs import run_cli, sseproxy_process

KEY = "sk-live-0123456789abcdef"
TOKEN = "inbound-token-fedcba9876543210"


async def test_refuses_to_start_as_an_open_relay(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("listen: 0.0.0.0:0\nroutes:\n  - upstream: http://127.0.0.1:1\n"
                      "    request_headers: {set: {Authorization: 'Bearer ${KEY}'}}\n")
    code, out, err = await run_cli("serve", "--config", str(config), env={"KEY": KEY})
    assert code == 2
    assert "inbound_auth" in err and "public: true" in err and "127.0.0.1" in err
    assert KEY not in out + err
    config.write_text(config.read_text() + "public: true\n")
    code, out, err = await run_cli("check", str(config), env={"KEY": KEY})
    assert code == 0 and KEY not in out + err


async def test_no_secret_in_any_output_after_every_error_path(tmp_path: Path) -> None:
    async def redirect_and_break(request: web.Request) -> web.StreamResponse:
        if request.path == "/redirect":
            return web.Response(status=302, headers={"Location": "https://other.example/"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        assert request.transport is not None
        request.transport.abort()  # mid-stream failure
        return response

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(WAIT)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect_and_break)
    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN + "\n")
    async with running_app(app) as up, raw_server(silent) as slow:
        config = tmp_path / "sidecar.yaml"
        config.write_text(f"""
listen: 127.0.0.1:0
max_body: 100
inbound_auth: {{tokens: ["${{file:{secret_file}}}"]}}
cors: {{allow_origins: ["http://localhost:5173"]}}
routes:
  - {{path: /slow, upstream: "{slow}", timeouts: {{idle: 200ms}},
      request_headers: {{set: {{Authorization: "Bearer ${{KEY}}"}}}}}}
  - {{path: /dead, upstream: "http://127.0.0.1:{free_port()}",
      request_headers: {{set: {{Authorization: "Bearer ${{KEY}}"}}}}}}
  - {{path: /api, methods: [GET, POST], upstream: "{up}",
      request_headers: {{set: {{Authorization: "Bearer ${{KEY}}", x-api-key: "${{KEY}}"}}}}}}
""")
        async with sseproxy_process("serve", "--config", str(config), "--log-level", "debug",
                                    env={"KEY": KEY}) as (proc, url):
            auth = {"Authorization": f"Bearer {TOKEN}"}
            seen: list[bytes] = []
            for method, target, headers, body in [
                ("GET", "/api/x", {}, b""),                                   # 401 missing
                ("GET", "/api/x", {"Authorization": f"Bearer {KEY}"}, b""),   # 401 wrong (the key itself)
                ("GET", "/api/x", {**auth, "Host": "evil.example"}, b""),     # 403 host
                ("GET", "/nowhere", auth, b""),                               # 404
                ("DELETE", "/api/x", auth, b""),                              # 405
                ("POST", "/api/x", auth, b"x" * 101),                         # 413
                ("GET", "/dead", auth, b""),                                  # 502
                ("GET", "/slow", auth, b""),                                  # 504
                ("GET", "/api/../x", auth, b""),                              # 400
                ("GET", "/api/redirect", auth, b""),                          # 302 to another host
                ("OPTIONS", "/api/x", {"Origin": "http://localhost:5173",
                                       "Access-Control-Request-Method": "POST"}, b""),  # 204
                ("GET", "/api/stream", auth, b""),                            # error event mid-stream
            ]:
                resp = await raw_request(url, method, target, headers, body)
                try:
                    data = await resp.body()
                except Exception:  # the broken stream ends truncated
                    data = b"".join(resp.chunks)
                seen.append(repr(resp.headers).encode() + data)
                resp.close()
            statuses_seen = b"\n".join(seen)
        assert proc.stdout is not None and proc.stderr is not None
        output = (await proc.stdout.read() + await proc.stderr.read()).decode()
    assert "outcome=upstream_error" in output and "status=504" in output  # the paths were really taken
    for secret in (KEY, TOKEN):
        assert secret not in output
        assert secret.encode() not in statuses_seen
    code, out, err = await run_cli("check", str(config), env={"KEY": KEY})
    assert code == 0 and KEY not in out + err and TOKEN not in out + err


def test_a_secret_containing_another_is_redacted_whole_after_a_reload() -> None:
    from sseproxy.logs import Redactor

    redactor = Redactor(["sk-live"])
    redactor.add(["sk-live-0123456789"])  # the reloaded config's key extends the old one
    assert redactor("key sk-live-0123456789") == "key <redacted>"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_final_log_line_is_redacted_whatever_field_or_traceback_carries_the_secret(fmt: str) -> None:
    """Not only the message: extra fields in JSON lines, exception text and tracebacks too."""
    import logging

    from sseproxy.logs import LineFormatter, Redactor

    formatter = LineFormatter(fmt, fmt, Redactor(["sk-live-0123456789"]))
    try:
        raise ValueError("bad header value 'Bearer sk-live-0123456789\x01'")
    except ValueError:
        import sys
        exc_info = sys.exc_info()
    record = logging.LogRecord("sseproxy.access", logging.INFO, __file__, 1, "plain", (), exc_info)
    from sseproxy.accesslog import RequestRecord
    record.access = RequestRecord("GET", "/", 0.0, error="token sk-live-0123456789 refused")
    line = formatter.format(record)
    assert "sk-live" not in line and "<redacted>" in line
    assert "ValueError" in line  # the traceback is still there, only the secret is gone
