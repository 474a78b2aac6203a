"""Reads a config: YAML or TOML by extension, ``${VAR}`` expansion, CLI overrides, validation.

This is the only module that reads config files or the environment. Every mistake becomes a
``Problem`` naming the file and the key path, and all of them are reported together.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

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


def _injected_header(loc: tuple[int | str, ...]) -> bool:
    """``routes[i].request_headers.set|add.NAME``: a value sent upstream as a credential."""
    return (len(loc) == 5 and loc[0] == "routes" and loc[2] == "request_headers" and loc[3] in ("set", "add"))


@dataclass
class Expansion:
    """What ``${…}`` expansion found: the variables it needed, those it could not find and the key
    paths whose value came (in part) from one, which ``check`` redacts and no other."""

    allow_missing: bool = False            # missing variables and files get a placeholder, not an error
    needed: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    templated: set[str] = field(default_factory=set)


def _placeholder(value: str, m: re.Match[str]) -> str:
    """What a missing variable becomes under ``check --allow-missing-env``: a port where one is
    expected (right after a colon), else a word that passes as a header value or host name."""
    return "1" if value[: m.start()].endswith(":") else "placeholder"


def _expand_string(value: str, loc: tuple[int | str, ...], env: Mapping[str, str], problems: list[Problem],
                   source: str, found: Expansion) -> str:
    if "${" not in value:
        return value
    where = format_loc(loc)
    found.templated.add(where)
    empty: list[str] = []      # variables and files that gave nothing, without a default written out
    defaulted = False

    def substitute(m: re.Match[str]) -> str:
        nonlocal defaulted
        if m.group("file"):
            path = Path(m.group("file"))
            found.needed.add(f"file:{path}")
            try:
                text = path.read_text().rstrip("\r\n")
            except OSError as e:
                if found.allow_missing:
                    found.missing.add(f"file:{path}")
                    return _placeholder(value, m)
                problems.append(Problem(source, where, f"cannot read secret file {path}: {e.strerror or e}"))
                return ""
            if not text.strip():
                empty.append(f"secret file {path}")
            return text
        name = m.group("name")
        if m.group("default") is not None:
            defaulted = True
            return env.get(name, m.group("default"))
        found.needed.add(name)
        if name in env:
            if not env[name].strip():
                empty.append(f"environment variable {name}")
            return env[name]
        if found.allow_missing:
            found.missing.add(name)
            return _placeholder(value, m)
        problems.append(Problem(source, where, f"environment variable {name} is not set"))
        return ""

    out = _VAR.sub(substitute, value)
    only_literal = out.split() == _VAR.sub("", value).split()  # the variables gave nothing but blanks
    if empty and only_literal and not defaulted and _injected_header(loc) and len(out.split()) <= 1:
        problems.append(Problem(source, where, f"{' and '.join(empty)} is empty, so this header would be sent as "
                                f"{out!r}; set it, or write the default out (${{VAR:-}}) if empty is meant"))
    return out


def expand(value: Any, loc: tuple[int | str, ...], env: Mapping[str, str], problems: list[Problem],
           source: str, found: Expansion | None = None) -> Any:
    """``value`` with ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` replaced in every string."""
    found = found if found is not None else Expansion()
    if isinstance(value, str):
        return _expand_string(value, loc, env, problems, source, found)
    if isinstance(value, dict):
        return {k: expand(v, (*loc, str(k)), env, problems, source, found) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, (*loc, i), env, problems, source, found) for i, v in enumerate(value)]
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


_EXAMPLES = {"methods": "[GET, POST]", "allow_methods": "[GET, POST]", "allow_origins": '["http://localhost:5173"]',
             "allow_headers": "[Content-Type, Authorization]", "expose_headers": "[X-Request-Id]",
             "upstream": "[http://127.0.0.1:3000, http://127.0.0.1:3001]", "remove": "[Cookie]",
             "tokens": '["${SSEPROXY_TOKEN}"]', "allowed_hosts": "[localhost, app.localhost]",
             "trusted_proxies": "[10.0.0.0/8]", "routes": "[{path: /api, upstream: http://127.0.0.1:3000}]",
             "on": "[429, 502, 503]"}


def _shown(value: Any) -> str:
    """A bad value as the user wrote it, cut short; a secret never reaches here (see ``_message``)."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` accepts (for "did you mean"), or none when it is not a model."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int) or part == "[key]":
            continue
        field_info = model.model_fields.get(part)
        found = _model_in(field_info.annotation) if field_info is not None else None
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(key, _keys_at(loc[:-1]), n=1, cutoff=0.6)
    return f"unknown key; did you mean `{close[0]}`?" if close else "unknown key"


def _message(error: Mapping[str, Any]) -> str:
    """Pydantic's message in plain words, with the bad value shown: what was wrong and what was meant."""
    kind, msg, loc = error["type"], str(error["msg"]), tuple(error["loc"])
    value, ctx = error.get("input"), error.get("ctx") or {}
    field_name = next((str(p) for p in reversed(loc) if isinstance(p, str) and p != "[key]"), "")
    secret = "request_headers" in loc or "tokens" in loc   # never echo what may be a key
    got = "" if secret else f", got {_shown(value)}"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "missing":
        return "required"
    if kind == "list_type":
        return f"expected a list such as {_EXAMPLES.get(field_name, '[a, b]')}{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false{got}"
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        return f"expected a whole number{got}" if kind.startswith("int") else f"expected a number{got}"
    if kind == "string_type":
        return f"expected a string (text){got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys such as {{key: value}}{got}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"expected one of {expected}{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"expected a number {words} {bound}{got}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length', 1)} item(s){got}"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validate(data: Mapping[str, Any], source: str, env: Mapping[str, str], found: Expansion | None = None) -> Config:
    problems: list[Problem] = []
    expanded = expand(dict(data), (), env, problems, source, found)
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
         env: Mapping[str, str] | None = None, found: Expansion | None = None) -> Config:
    """The validated config from ``path`` (or none) with ``overrides`` applied on top; ``found``
    (when given) learns what ``${…}`` expansion needed."""
    env = os.environ if env is None else env
    data = read_document(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "command line"
    return validate(apply_overrides(data, overrides), source, env, found)
