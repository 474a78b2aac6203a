"""What a person reads before the proxy starts: config errors, and ``check`` as a process."""

from __future__ import annotations

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
