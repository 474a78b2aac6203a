"""The strict base model and the field types the config's models are declared with.

Each type refuses, at load time, a value that would otherwise pass and then fail every request
(a header value with a line break, an upstream host no resolver takes): such a mistake is a config
error naming its key path, never a 500. Messages about header values never show the value, which
may be a secret.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from .addresses import check_upstream_url
from .units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Compression = Literal["auto", "pass", "identity"]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")   # RFC 9110 field-name
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # what no field value may carry (tab may)


class Model(BaseModel):
    """Every config model: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
    return name


def _header_value(value: str) -> None:
    """Refuse what aiohttp would refuse at send time (a 500 on every request). The message never
    shows the value: it may be a secret."""
    found = _CONTROL.search(value)
    if found is None:
        return
    if found.group() in "\r\n":
        raise ValueError("the value contains a line break (CR or LF), which no header value may carry "
                         "(an environment variable or secret file of more than one line?)")
    raise ValueError(f"the value contains a control character ({ord(found.group()):#04x}), which no header "
                     "value may carry")


def _plain_value(value: str) -> str:
    _header_value(value)
    return value


def _secret_value(value: SecretStr) -> SecretStr:
    _header_value(value.get_secret_value())
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_plain_value)]
SecretHeaderValue = Annotated[SecretStr, AfterValidator(_secret_value)]


def _as_upstream_list(value: object) -> object:
    """One URL or a list; a single URL is checked here so that its error names ``upstream`` itself."""
    return [check_upstream_url(value)] if isinstance(value, str) else value


UpstreamUrl = Annotated[str, BeforeValidator(check_upstream_url)]
Upstreams = Annotated[list[UpstreamUrl], BeforeValidator(_as_upstream_list), Field(min_length=1)]


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]
