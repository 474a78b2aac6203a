"""The config's sections: headers, timeouts, CORS, inbound auth, retry, limits, resume, WebSocket.

Each is a model a route or the top level carries, with the shorthands a section accepts
(``cors: false``, ``retry: false``, ``resume: true``) turned into the model here. Secrets (injected
header values, inbound tokens) are ``SecretStr`` so that no repr, log line or ``check`` output can
show them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from .config_fields import Count, Duration, HeaderName, HeaderValue, Model, SecretHeaderValue, Size

DEFAULT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HeaderRules(Model):
    """Response header rules: remove, then set (replace), then add (append)."""

    set: dict[HeaderName, HeaderValue] = {}
    add: dict[HeaderName, HeaderValue] = {}
    remove: list[HeaderName] = []


class RequestHeaderRules(Model):
    """Request header rules; values are secrets because this is where API keys are injected."""

    set: dict[HeaderName, SecretHeaderValue] = {}
    add: dict[HeaderName, SecretHeaderValue] = {}
    remove: list[HeaderName] = []


class Timeouts(Model):
    """Top level: the defaults (10s connect, 300s idle); on a route: unset keys inherit them."""

    connect: Duration | None = None
    idle: Duration | None = None


class Cors(Model):
    """CORS policy; ``cors: false`` on a route is stored as ``enabled: false``."""

    enabled: bool = True
    allow_origins: list[str] = []
    allow_credentials: bool = False
    allow_methods: list[str] = list(DEFAULT_METHODS)
    allow_headers: list[str] = ["*"]
    expose_headers: list[str] = []
    max_age: int = Field(600, ge=0)

    @field_validator("allow_methods")
    @classmethod
    def _upper_methods(cls, methods: list[str]) -> list[str]:
        return [m.strip().upper() for m in methods]

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError('allow_origins ["*"] cannot be used with allow_credentials: true '
                             "(browsers refuse it); list the exact origins")
        return self


def _cors_setting(value: object) -> object:
    if value is False:
        return {"enabled": False}
    if value is True:
        raise ValueError("cors: true is not a policy; give a mapping such as {allow_origins: [...]}")
    return value


CorsSetting = Annotated[Cors | None, BeforeValidator(_cors_setting)]


def _record_setting(value: object) -> object:
    if value is True:
        raise ValueError("record: true is not a directory; give one, e.g. record: recordings/")
    if isinstance(value, str) and not value.strip():
        raise ValueError("record is empty (is its environment variable set?); give a directory or false")
    if value is not None and value is not False and not isinstance(value, str):
        raise ValueError(f"{value!r} is not a directory; give one, e.g. record: recordings/, or false")
    return value


RecordSetting = Annotated[Literal[False] | str | None, BeforeValidator(_record_setting)]


class InboundAuth(Model):  # the tokens a client must present, in ``header``, to use the proxy at all
    header: HeaderName = "Authorization"
    tokens: list[SecretStr] = Field(min_length=1)

    @field_validator("tokens")
    @classmethod
    def _no_empty_token(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for token in tokens:
            if not token.get_secret_value().strip():
                raise ValueError("an inbound token is empty (is its environment variable set?)")
        return tokens


class Retry(Model):
    """Retry before the first byte reaches the client, never after (``retry.py`` holds the policy)."""

    on: list[Annotated[int, Field(ge=100, le=599)]] = [429, 502, 503, 529]  # upstream statuses to retry
    attempts: Count = Field(3, ge=1)           # tries in all, the next upstream first
    backoff: Duration = 0.25                 # doubled each time
    max_backoff: Duration = 5.0              # a Retry-After up to this is honoured
    max_body: Size = 1024 * 1024             # request bodies up to this are kept to resend

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: object) -> object:
        """YAML 1.1 reads the key ``on`` as ``true``: take it back."""
        if isinstance(value, dict) and True in value and "on" not in value:
            value = {("on" if k is True else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _backoff_within_max(self) -> Retry:
        if self.backoff > self.max_backoff:
            raise ValueError(f"backoff ({self.backoff:g}s) is more than max_backoff ({self.max_backoff:g}s)")
        return self


class Limits(Model):
    """Concurrent streams allowed, counted per inbound token, client address or route (``limits.py``)."""

    concurrent_streams: Count = Field(ge=0)    # 0: no limit
    per: Literal["token", "client", "route"] = "route"


def _off_or_mapping(off: dict[str, object]) -> Any:
    """``key: false`` turns a top-level default off for one route; ``true`` is not a setting."""

    def parse(value: object) -> object:
        if value is False:
            return off
        if value is True:
            raise ValueError("true is not a setting; give a mapping, or false to turn the default off")
        return value

    return BeforeValidator(parse)


class Resume(Model):
    """Resumable streams (``resume.py``): where events are kept, and for how long."""

    store: str = "memory"                      # memory | redis://HOST:PORT/DB
    ttl: Duration = 600.0                      # events stay resumable this long after the stream ends
    detach: Duration = 60.0                    # the upstream runs on this long with no client attached
    max_bytes: Annotated[Size, Field(gt=0)] = 8 * 1024 * 1024  # bounds one stream's kept events

    @field_validator("store")
    @classmethod
    def _known_store(cls, store: str) -> str:
        if store == "memory":
            return store
        parts = urlsplit(store)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"{store!r} is not a store: use memory or redis://HOST:PORT/DB")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ValueError(f"{store!r}: the port is not a number from 0 to 65535") from None
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"{store!r}: the database is a number, e.g. redis://127.0.0.1:6379/0")
        return store


def _resume_setting(value: object) -> object:
    if value is True:
        return {}
    if value is False:
        return None
    return value


ResumeSetting = Annotated[Resume | None, BeforeValidator(_resume_setting)]
RetrySetting = Annotated[Retry | None, _off_or_mapping({"attempts": 1})]
LimitsSetting = Annotated[Limits | None, _off_or_mapping({"concurrent_streams": 0})]


class WebSocketLimits(Model):
    """The memory WebSocket relays may use. aiohttp holds each message whole before relaying it, so
    ``max_message`` bounds one message (and one frame is refused from its header, before any of it
    is read); ``max_total`` bounds the messages held across all connections at once."""

    max_message: Annotated[Size, Field(gt=0)] = 1024 * 1024
    max_total: Annotated[Size, Field(gt=0)] = 64 * 1024 * 1024

    @model_validator(mode="after")
    def _total_holds_one_message(self) -> WebSocketLimits:
        if self.max_total < self.max_message:
            raise ValueError(f"max_total ({self.max_total} bytes) is less than max_message "
                             f"({self.max_message} bytes): no message that big could ever pass")
        return self
