"""Config loading: formats, ${VAR} expansion, units, unknown keys, and errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sseproxy.config import Config
from sseproxy.errors import ConfigError
from sseproxy.loader import Overrides, load
from sseproxy.runtime import compile_config
from sseproxy.units import parse_duration, parse_size

CONFIG_DIR = Path(__file__).parent.parent / "config"
ENV = {"OPENAI_API_KEY": "sk-test-secret", "ANTHROPIC_API_KEY": "ant-secret", "SSEPROXY_TOKEN": "tok-secret"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, env=env or {})
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.iterdir()), ids=lambda p: p.name)
def test_every_example_config_loads_and_compiles(path: Path) -> None:
    config = load(path, env=ENV)
    snapshot = compile_config(config)
    assert snapshot.routes
    assert "sk-test-secret" not in repr(config) and "sk-test-secret" not in repr(snapshot.routes)


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    yaml_file = write(tmp_path, "a.yaml", "listen: 127.0.0.1:9000\nheartbeat: 250ms\nmax_body: 512KiB\n"
                      "routes:\n  - path: /api\n    upstream: http://127.0.0.1:3000\n    timeouts: {idle: 5m}\n")
    toml_file = write(tmp_path, "a.toml", 'listen = "127.0.0.1:9000"\nheartbeat = "250ms"\nmax_body = "512KiB"\n'
                      '[[routes]]\npath = "/api"\nupstream = "http://127.0.0.1:3000"\ntimeouts = {idle = "5m"}\n')
    a, b = load(yaml_file, env={}), load(toml_file, env={})
    assert a == b
    assert a.heartbeat == 0.25 and a.max_body == 512 * 1024 and a.routes[0].timeouts.idle == 300


def test_env_expansion_with_defaults_and_missing_variables(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "routes:\n  - upstream: http://127.0.0.1:${PORT:-3000}/${BASE}\n"
                 "    request_headers: {set: {Authorization: 'Bearer ${KEY}'}}\n")
    config = load(path, env={"BASE": "v1", "KEY": "k"})
    assert config.routes[0].upstream == ["http://127.0.0.1:3000/v1"]
    assert problems(path, {"BASE": "v1"}) == [
        f"{path}: routes[0].request_headers.set.Authorization: environment variable KEY is not set"]


def test_secret_files(tmp_path: Path) -> None:
    secret = write(tmp_path, "key", "from-a-file\n")
    path = write(tmp_path, "s.yaml", f"routes:\n  - upstream: http://127.0.0.1:1\n"
                 f"    request_headers: {{set: {{x-api-key: '${{file:{secret}}}'}}}}\n")
    config = load(path, env={})
    assert config.routes[0].request_headers.set["x-api-key"].get_secret_value() == "from-a-file"
    secret.unlink()
    assert "cannot read secret file" in problems(path)[0]


def test_every_problem_is_reported_with_file_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "listen: nowhere\nheartbeat: soon\nbogus: 1\nroutes:\n"
                 "  - upstream: http://127.0.0.1:1\n  - upstream: htp://x\n    path: api\n    stream: maybe\n"
                 "    cors: {allow_origins: ['*'], allow_credentials: true}\n")
    found = problems(path)
    assert f"{path}: routes[1].upstream: 'htp://x' is not an http(s) URL" in found
    assert f"{path}: bogus: unknown key" in found
    assert any(p.startswith(f"{path}: listen: 'nowhere' is not HOST:PORT") for p in found)
    assert any(p.startswith(f"{path}: heartbeat: 'soon' is not a duration") for p in found)
    assert any(p.startswith(f"{path}: routes[1].path: 'api' must start with /") for p in found)
    assert any(p.startswith(f"{path}: routes[1].stream:") for p in found)
    assert any(p.startswith(f"{path}: routes[1].cors:") and "credentials" in p for p in found)
    assert len(found) == 7


def test_malformed_files_and_unknown_formats(tmp_path: Path) -> None:
    assert "invalid YAML" in problems(write(tmp_path, "x.yaml", "routes: [\n"))[0]
    assert "invalid TOML" in problems(write(tmp_path, "x.toml", "routes = [\n"))[0]
    assert "unknown config format" in problems(write(tmp_path, "x.json", "{}"))[0]
    assert "top level must be a mapping" in problems(write(tmp_path, "l.yaml", "- 1\n"))[0]


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "listen: 127.0.0.1:1\nroutes:\n  - path: /\n    upstream: http://127.0.0.1:2\n")
    config = load(path, Overrides(listen="127.0.0.1:9", routes=(("/api", "http://127.0.0.1:3"),)), env={})
    assert config.listen == "127.0.0.1:9"
    assert [r.path for r in config.routes] == ["/api", "/"]


def test_refuses_an_open_relay_unless_public() -> None:
    routes = [{"upstream": "http://127.0.0.1:1", "request_headers": {"set": {"Authorization": "Bearer k"}}}]
    with pytest.raises(ValueError, match="inbound_auth"):
        Config.model_validate({"listen": "0.0.0.0:8080", "routes": routes})
    Config.model_validate({"listen": "0.0.0.0:8080", "routes": routes, "public": True})
    Config.model_validate({"listen": "0.0.0.0:8080", "routes": routes, "inbound_auth": {"tokens": ["t"]}})
    Config.model_validate({"listen": "127.0.0.1:8080", "routes": routes})


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", ""]))
def test_durations(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


def test_sizes_and_bad_units() -> None:
    assert parse_size("32MiB") == 32 * 1024 * 1024 and parse_size(100) == 100 and parse_size("1KB") == 1000
    for bad in ("-1", "1 parsec", True, "1.5MiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("10 fortnights")
