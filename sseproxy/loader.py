"""Reads a config: YAML or TOML by extension, ``${VAR}`` expansion, CLI overrides, validation.

This is the only module that reads config files or the environment. Every mistake becomes a
``Problem`` naming the file and the key path, and all of them are reported together.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import Config
from .errors import ConfigError, Problem

_VAR = re.compile(r"\$\{(?:file:(?P<file>[^}]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")


@dataclass(frozen=True)
class Overrides:
    """What CLI flags say; flags win over the file. ``routes`` are ``(prefix, url)`` pairs."""

    listen: str | None = None
    routes: tuple[tuple[str, str], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an error in a mapping's key: the key is already named
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def expand(value: Any, loc: tuple[int | str, ...], env: Mapping[str, str], problems: list[Problem],
           source: str) -> Any:
    """``value`` with ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` replaced in every string."""
    if isinstance(value, str):
        def substitute(m: re.Match[str]) -> str:
            if m.group("file"):
                path = Path(m.group("file"))
                try:
                    return path.read_text().rstrip("\r\n")
                except OSError as e:
                    problems.append(Problem(source, format_loc(loc), f"cannot read secret file {path}: "
                                                                     f"{e.strerror or e}"))
                    return ""
            name = m.group("name")
            if name in env:
                return env[name]
            if m.group("default") is not None:
                return m.group("default")
            problems.append(Problem(source, format_loc(loc), f"environment variable {name} is not set"))
            return ""
        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand(v, (*loc, str(k)), env, problems, source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, (*loc, i), env, problems, source) for i, v in enumerate(value)]
    return value


def read_document(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; raises ``ConfigError`` for unreadable or malformed files."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError([Problem(source, "", "unknown config format: use .yaml, .yml or .toml")])
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(source, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([Problem(source, "", f"invalid {suffix[1:].upper()}: {e}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(source, "", "the top level must be a mapping of keys")])
    return data


def _message(error: Mapping[str, Any]) -> str:
    kind, msg = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validate(data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> Config:
    problems: list[Problem] = []
    expanded = expand(dict(data), (), env, problems, source)
    if problems:
        raise ConfigError(problems)
    try:
        return Config.model_validate(expanded)
    except ValidationError as e:
        raise ConfigError([Problem(source, format_loc(tuple(err["loc"])), _message(err))
                           for err in e.errors(include_url=False)]) from None


def apply_overrides(data: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    merged = dict(data)
    merged.update(overrides.extra)
    if overrides.listen is not None:
        merged["listen"] = overrides.listen
    if overrides.routes:
        flagged = [{"path": prefix, "upstream": url} for prefix, url in overrides.routes]
        merged["routes"] = flagged + list(merged.get("routes") or [])
    return merged


def load(path: str | Path | None, overrides: Overrides = Overrides(),
         env: Mapping[str, str] | None = None) -> Config:
    """The validated config from ``path`` (or none) with ``overrides`` applied on top."""
    env = os.environ if env is None else env
    data = read_document(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "command line"
    return validate(apply_overrides(data, overrides), source, env)
