"""The command line as a user runs it: real processes, real ports, signals."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
from helpers import WAIT, Gate, free_port, raw_request, running_app
from procs import run_cli, sseproxy_process
from upstreams import echo_app, gated_stream_app

CONFIG_DIR = Path(__file__).parent.parent / "config"


async def test_check_prints_the_route_table_with_secrets_redacted() -> None:
    env = {"OPENAI_API_KEY": "sk-very-secret", "ANTHROPIC_API_KEY": "ant-very-secret"}
    code, out, err = await run_cli("check", str(CONFIG_DIR / "llm-sidecar.yaml"), env=env)
    assert code == 0, err
    assert "ok, 3 routes" in out
    assert "openai: */openai GET,POST -> https://api.openai.com/v1" in out
    assert "<redacted>" in out
    assert "sk-very-secret" not in out + err and "ant-very-secret" not in out + err


async def test_check_reports_each_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "dev.yaml"
    bad.write_text("routes:\n  - upstream: http://127.0.0.1:1\n  - upstream: htp://x\n    nope: 1\n")
    code, _out, err = await run_cli("check", str(bad))
    assert code == 2
    assert f"{bad}: routes[1].upstream: 'htp://x' is not an http(s) URL" in err.splitlines()
    assert f"{bad}: routes[1].nope: unknown key" in err.splitlines()


async def test_bad_flags_exit_2() -> None:
    assert (await run_cli("serve", "--route", "no-equals-sign"))[0] == 2
    code, _, err = await run_cli("serve", "--listen", "127.0.0.1:0")
    assert code == 2 and "no routes" in err
    code, _, err = await run_cli("serve", "--listen", "nowhere", "--route", "/=http://127.0.0.1:1")
    assert code == 2 and "listen" in err


async def test_serve_quick_mode_prints_one_ready_line_relays_and_stops_on_sigterm() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as stream_up, \
            running_app(echo_app()) as echo_up, \
            sseproxy_process("serve", "--listen", "127.0.0.1:0", "--route", f"/api={echo_up}",
                             "--route", f"/={stream_up}") as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        ok = await raw_request(url, "GET", "/api/x", {})
        assert json.loads(await ok.body())["path"] == "/x"
        stream = await raw_request(url, "GET", "/events", {})
        gate.release(b"data: 1\n\n")
        assert await stream.next_chunk() == b"data: 1\n\n"
        gate.release(None)
        assert await stream.next_chunk() is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert 'GET /api/x" route=/api status=200' in log  # one access-log line per request
        assert "outcome=ok" in log


async def test_demo_streams_tokens_one_by_one() -> None:
    port = free_port()
    async with sseproxy_process("demo", "--listen", f"127.0.0.1:{port}") as (_proc, url):
        payload = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        events: list[str] = []
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/v1/chat/completions", json=payload, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for chunk in resp.content.iter_any():
                text = chunk.decode()
                assert text.endswith("\n\n")  # whole events only
                events.extend(e for e in text.split("\n\n") if e)
        assert events[-1] == "data: [DONE]"
        tokens = [json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1]]
        assert len(tokens) > 10
        assert "".join(tokens).startswith("Streaming works")


async def test_serve_lifts_the_open_file_limit_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the child inherits 1,024
    try:
        async with sseproxy_process("serve", "--listen", "127.0.0.1:0", "--route", "/=http://127.0.0.1:1") as (proc, _):
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3] == line.split()[4] == str(hard)
