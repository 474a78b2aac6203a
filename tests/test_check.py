"""What a person reads before the proxy starts: config errors, and ``check`` as a process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from procs import run_cli

CONFIG_DIR = Path(__file__).parent.parent / "config"

INJECTING = """routes:
  - upstream: http://127.0.0.1:1
    request_headers:
      set: {Authorization: "Bearer ${OPENAI_API_KEY}", X-Optional: "${OPTIONAL:-}", X-Parts: "${EMPTY}${FULL}"}
"""


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("value", ["", "  "])
async def test_an_injected_value_that_is_only_the_scheme_word_is_a_config_error(
        tmp_path: Path, command: str, value: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(INJECTING)
    args = ("check", str(path)) if command == "check" else ("serve", "--config", str(path))
    code, _out, err = await run_cli(*args, env={"OPENAI_API_KEY": value, "EMPTY": "", "FULL": "x"})
    assert code == 2
    assert err.splitlines() == [
        f"{path}: routes[0].request_headers.set.Authorization: environment variable OPENAI_API_KEY is empty, so "
        f"this header would be sent as 'Bearer {value}'; set it, or write the default out (${{VAR:-}}) "
        "if empty is meant"]


async def test_an_empty_injected_value_with_the_default_written_out_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(INJECTING.replace("${OPENAI_API_KEY}", "${OPENAI_API_KEY:-}"))
    code, out, err = await run_cli("check", str(path), env={"OPENAI_API_KEY": "", "EMPTY": "", "FULL": "x"})
    assert code == 0, err
    assert "ok, 1 route" in out


async def test_an_empty_secret_file_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("\n")
    path = tmp_path / "sidecar.yaml"
    path.write_text("routes:\n  - upstream: http://127.0.0.1:1\n"
                    f"    request_headers: {{add: {{api-key: '${{file:{secret}}}'}}}}\n")
    code, _out, err = await run_cli("check", str(path))
    assert code == 2
    assert f"routes[0].request_headers.add.api-key: secret file {secret} is empty" in err


async def test_config_errors_say_what_was_meant_and_show_the_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text("listen: localhost:80808\nheartbat: 5s\nroutes:\n  - upstream: http://127.0.0.1:99999\n"
                    "    methods: GET\n    strip_prefix: flase\n    stream: sometimes\n    upstrem: x\n"
                    "    timeouts: {idel: 5s}\n    cors: {max_age: -1}\n")
    code, _out, err = await run_cli("check", str(path))
    assert code == 2
    assert sorted(err.splitlines()) == sorted(f"{path}: {line}" for line in [
        "listen: 'localhost:80808': port 80808 is out of range (0 to 65535)",
        "heartbat: unknown key; did you mean `heartbeat`?",
        "routes[0].upstream: 'http://127.0.0.1:99999': the port is out of range (0 to 65535)",
        "routes[0].methods: expected a list such as [GET, POST], got 'GET'",
        "routes[0].strip_prefix: expected true or false, got 'flase'",
        "routes[0].stream: expected one of auto, always or never, got 'sometimes'",
        "routes[0].upstrem: unknown key; did you mean `upstream`?",
        "routes[0].timeouts.idel: unknown key; did you mean `idle`?",
        "routes[0].cors.max_age: expected a number at least 0, got -1",
    ])


async def test_a_bad_value_in_an_injected_header_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("routes:\n  - upstream: http://127.0.0.1:1\n    request_headers: {set: {X-Key: [sk-secret-1]}}\n")
    code, _out, err = await run_cli("check", str(path))
    assert code == 2 and "request_headers.set.X-Key: expected a string" in err
    assert "sk-secret-1" not in err


async def test_check_allow_missing_env_validates_without_the_secrets_and_lists_them() -> None:
    unset = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "SSEPROXY_TOKEN")}
    code, _out, err = await run_cli_with_env("check", str(CONFIG_DIR / "sidecar.toml"), env=unset)
    assert code == 2 and "environment variable SSEPROXY_TOKEN is not set" in err
    code, out, err = await run_cli_with_env("check", "--allow-missing-env", str(CONFIG_DIR / "sidecar.toml"),
                                            env=unset)
    assert code == 0, err
    assert ("needs: OPENAI_API_KEY, SSEPROXY_TOKEN; not set here, checked with placeholders: OPENAI_API_KEY, "
            "SSEPROXY_TOKEN") in out
    assert "inbound_auth header=Authorization tokens=1 (redacted)" in out


async def test_check_redacts_only_what_came_from_the_environment_and_shows_the_effective_settings(
        tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
listen: 127.0.0.1:8080
heartbeat: 20s
timeouts: {connect: 3s}
cors: {allow_origins: ["http://localhost:5173"], expose_headers: [X-Request-Id]}
inbound_auth: {header: X-Proxy-Token, tokens: ["${T1}", "${T2}"]}
allowed_hosts: [app.localhost]
routes:
  - name: anthropic
    path: /anthropic
    upstream: https://api.anthropic.com
    timeouts: {idle: 10m}
    request_headers:
      set: {x-api-key: "${ANTHROPIC_API_KEY}", anthropic-version: "2023-06-01", Authorization: "Bearer sk-pasted"}
  - path: /
    upstream: http://localhost:5173
    cors: false
    heartbeat: 0
""")
    code, out, err = await run_cli("check", str(path), env={"ANTHROPIC_API_KEY": "ant-secret-value",
                                                            "T1": "token-one-value", "T2": "token-two-value"})
    assert code == 0, err
    for secret in ("ant-secret-value", "token-one-value", "token-two-value", "sk-pasted"):
        assert secret not in out + err
    assert ('request_headers: {"set": {"x-api-key": "<redacted>", "anthropic-version": "2023-06-01", '
            '"Authorization": "<redacted>"}}') in out
    assert "inbound_auth header=X-Proxy-Token tokens=2 (redacted)" in out
    assert "allowed_hosts app.localhost" in out
    assert 'cors {"allow_origins": ["http://localhost:5173"]' in out and '"expose_headers": ["X-Request-Id"]' in out
    assert "public=false" in out
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("[0] anthropic")))
    assert "connect=3s idle=600s heartbeat=20s" in lines[first + 1] and "cors=on" in lines[first + 1]
    second = lines.index(next(line for line in lines if line.startswith("[1] /")))
    assert "connect=3s idle=300s heartbeat=0s" in lines[second + 1] and "cors=off" in lines[second + 1]


async def run_cli_with_env(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m sseproxy ARGS`` with exactly ``env`` (run_cli adds to this process's environment)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sseproxy", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
