"""Config values that would pass validation yet fail every request (a header value with a line
break, a header name that is no token, an upstream host no resolver takes) are config errors at
`check`, at start and at reload, named by key path and never showing the secret."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers import WAIT, raw_request, running_app
from procs import read_lines_until, sseproxy_process
from upstreams import echo_app

from sseproxy.errors import ConfigError
from sseproxy.loader import load

SECRETS = ("sk-line-one", "X-Evil", "sk-first-line", "sk-second-line", "sk-ctl")


async def run_bounded(*args: str, env: dict[str, str]) -> tuple[int | None, str, str]:
    """``python -m sseproxy ARGS``; a process that is still running after a few seconds (a `serve`
    that started instead of refusing) is killed and reported with returncode None."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sseproxy", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT * 2)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return None, out.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def bad_config(tmp_path: Path) -> Path:
    secret = tmp_path / "two-lines"
    secret.write_text("sk-first-line\nsk-second-line\n")  # the loader strips only the trailing newline
    path = tmp_path / "bad.yaml"
    path.write_text(
        "routes:\n"
        "  - path: /env\n    upstream: http://127.0.0.1:1\n"
        "    request_headers: {set: {Authorization: 'Bearer ${KEY}'}}\n"
        "  - path: /file\n    upstream: http://127.0.0.1:1\n"
        f"    request_headers: {{add: {{X-Api-Key: '${{file:{secret}}}'}}}}\n"
        "  - path: /resp\n    upstream: http://127.0.0.1:1\n"
        '    response_headers: {set: {X-Frame: "a\\r\\nb"}, add: {X-Other: "c\\nd"}}\n'
        "  - path: /host\n    upstream: http://a..b/v1\n"
        "  - path: /names\n    upstream: http://127.0.0.1:1\n"
        "    request_headers: {set: {'Bad Name': v}, remove: ['X:Y']}\n"
        "    response_headers: {add: {'X(1)': v}}\n"
        "  - path: /ctl\n    upstream: [http://127.0.0.1:1, 'http://exa mple.com']\n"
        "    request_headers: {set: {X-Key: '${CTL}'}}\n")
    return path


def expected_problems(path: Path) -> list[str]:
    return [f"{path}: {loc}: " for loc in (
        "routes[0].request_headers.set.Authorization", "routes[1].request_headers.add.X-Api-Key",
        "routes[2].response_headers.set.X-Frame", "routes[2].response_headers.add.X-Other",
        "routes[3].upstream", "routes[4].request_headers.set.Bad Name", "routes[4].request_headers.remove[0]",
        "routes[4].response_headers.add.X(1)", "routes[5].upstream[1]", "routes[5].request_headers.set.X-Key")]


ENV = {"KEY": "sk-line-one\r\nX-Evil: 1", "CTL": "sk-ctl\x01"}


@pytest.mark.parametrize("command", ["check", "serve"])
async def test_unusable_values_are_config_errors_at_check_and_at_start(tmp_path: Path, command: str) -> None:
    path = bad_config(tmp_path)
    args = ("check", str(path)) if command == "check" else ("serve", "--config", str(path), "--listen", "127.0.0.1:0")
    code, out, err = await run_bounded(*args, env=ENV)
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    for prefix in expected_problems(path):
        assert [line for line in lines if line.startswith(prefix)], (prefix, lines)
    assert len(lines) == len(expected_problems(path)), lines
    assert "line break" in err and "control character" in err and "not a valid header name" in err
    assert "'a..b' is not a valid host name" in err
    for secret in SECRETS:
        assert secret not in out + err


async def test_a_reload_to_a_two_line_secret_file_is_refused_and_the_old_key_stays(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    secret = tmp_path / "key"
    secret.write_text("sk-first-line\n")
    config = tmp_path / "live.yaml"
    async with running_app(echo_app(seen)) as up:
        config.write_text(f"routes:\n  - upstream: '{up}'\n"
                          f"    request_headers: {{set: {{Authorization: 'Bearer ${{file:{secret}}}'}}}}\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0") as (proc, url):
            assert (await raw_request(url, "GET", "/one", {})).status == 200
            secret.write_text("sk-first-line\nsk-second-line\n")
            proc.send_signal(signal.SIGHUP)
            assert proc.stderr is not None
            log = "".join(await read_lines_until(proc.stderr, "request_headers.set.Authorization", limit=500))
            resp = await raw_request(url, "GET", "/two", {})
            assert resp.status == 200 and json.loads(await resp.body())["path"] == "/two"
    assert "reload failed, keeping the old config" in log
    assert "routes[0].request_headers.set.Authorization" in log and "line break" in log
    assert "sk-second-line" not in log and "sk-first-line" not in log
    assert [s["headers"]["Authorization"] for s in seen] == ["Bearer sk-first-line"] * 2  # type: ignore[index]


@pytest.mark.parametrize("host", [
    "a..b", ".a", "a.-b", "-a.example", "a-.example", "x" * 64 + ".example", ("x" * 60 + ".") * 5 + "com",
    "a%20b", "a!b", "1.2.3.999", "example.123", "[::1x]", "[fe80::zz]",
])
def test_invalid_upstream_hosts_are_refused(tmp_path: Path, host: str) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(f"routes:\n  - upstream: 'http://{host}:8080/v1'\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    [problem] = caught.value.problems
    assert problem.loc == "routes[0].upstream"


@pytest.mark.parametrize("host", [
    "localhost", "127.0.0.1", "10.0.0.1", "[::1]", "[2001:db8::1]", "api.example.com", "api.example.com.",
    "my_service", "vite-dev", "xn--bcher-kva.example", "bücher.example", "x" * 63 + ".example",
])
def test_valid_upstream_hosts_still_pass(tmp_path: Path, host: str) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(f"routes:\n  - upstream: 'http://{host}:8080/v1'\n"
                    "    request_headers: {set: {X-Tabbed: \"a\\tb\", X_Under: ok}}\n")
    load(path, env={})
