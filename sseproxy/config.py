"""The config file's structure: frozen pydantic models that reject unknown keys.

These models describe what the user wrote, validated; ``runtime.compile_config`` turns them into
the objects a request uses. Secrets (injected header values, inbound tokens) are ``SecretStr``
so that no repr, log line or ``check`` output can show them. Addresses are checked in ``addresses``,
the field types the models are declared with are in ``config_fields``.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, field_validator, model_validator

from .addresses import host_name_problem as host_name_problem  # importable from here, as before
from .addresses import is_loopback_host, parse_listen
from .config_fields import (
    Compression,
    Count,
    Duration,
    HeaderName,
    HeaderValue,
    Model,
    SecretHeaderValue,
    Size,
    Upstreams,
)
from .config_fields import UpstreamUrl as UpstreamUrl  # importable from here, as before

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


class InboundAuth(Model):
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


class Route(Model):
    name: str | None = None
    path: str = "/"
    host: str | None = None
    methods: list[str] | None = None
    upstream: Upstreams
    strip_prefix: bool = True
    preserve_host: bool = False
    forwarded: bool = True
    websocket: bool = True
    stream: Literal["auto", "always", "never"] = "auto"
    request_headers: RequestHeaderRules = RequestHeaderRules()
    response_headers: HeaderRules = HeaderRules()
    timeouts: Timeouts = Timeouts()
    heartbeat: Duration | None = None
    cors: CorsSetting = None
    upstream_compression: Compression | None = None
    record: RecordSetting = None  # a directory; false: not this route, whatever the top level says
    retry: RetrySetting = None               # None: the top-level default
    limits: LimitsSetting = None             # None: the top-level default
    resume: ResumeSetting = None             # resumable streams (true: the defaults)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} must start with /")
        if any(seg in (".", "..") for seg in path.split("/")) or "?" in path or "#" in path:
            raise ValueError(f"{path!r} must be a plain path prefix")
        return path

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, methods: list[str] | None) -> list[str] | None:
        return None if methods is None else [m.upper() for m in methods]

    @field_validator("host")
    @classmethod
    def _lower_host(cls, host: str | None) -> str | None:
        return None if host is None else host.lower()

    @property
    def label(self) -> str:
        return self.name or self.path

    def injects_headers(self) -> bool:
        return bool(self.request_headers.set or self.request_headers.add)


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


class Config(Model):
    listen: str = "127.0.0.1:8080"
    public: bool = False
    access_log: Literal["text", "json", "off"] = "text"
    admin_prefix: str = "/_sseproxy"
    max_body: Size = 32 * 1024 * 1024
    shutdown_grace: Duration = 30.0
    header_timeout: Duration = 10.0
    max_header_size: Size = Field(32 * 1024, ge=1024)  # a request head over it gets 431
    inbound_auth: InboundAuth | None = None
    cors: CorsSetting = None
    timeouts: Timeouts = Timeouts(connect=10.0, idle=300.0)
    heartbeat: Duration = 15.0
    upstream_compression: Compression = "auto"
    allowed_hosts: list[str] = []
    trusted_proxies: list[str] = []     # CIDRs whose X-Forwarded-For is kept and appended to
    record: RecordSetting = None  # the default for every route: a directory to record exchanges into
    retry: RetrySetting = None               # the default for every route; none: no retries
    limits: LimitsSetting = None             # the default for every route; none: no limit
    underscores_in_headers: bool = False  # false: request headers with '_' in the name are dropped
    websocket: WebSocketLimits = WebSocketLimits()
    resume_memory: Annotated[Size, Field(gt=0)] = 256 * 1024 * 1024  # bounds the memory resume store
    routes: list[Route] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
        return cidrs

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @field_validator("admin_prefix")
    @classmethod
    def _valid_admin_prefix(cls, prefix: str) -> str:
        if not prefix.startswith("/") or prefix == "/" or prefix.endswith("/"):
            raise ValueError(f"{prefix!r} must be a path such as /_sseproxy")
        return prefix

    @field_validator("allowed_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        return [h.lower() for h in hosts]

    @model_validator(mode="after")
    def _not_an_open_relay(self) -> Config:
        host, _port = self.listen_address
        injecting = [r.label for r in self.routes if r.injects_headers()]
        if not is_loopback_host(host) and injecting and self.inbound_auth is None and not self.public:
            raise ValueError(
                f"listening on {self.listen} (not loopback) while route(s) {', '.join(injecting)} inject "
                "request headers, with no inbound_auth: anyone who reaches the port could spend the "
                "injected key. Add inbound_auth, listen on 127.0.0.1, or set public: true"
            )
        return self

    @model_validator(mode="after")
    def _token_limits_need_tokens(self) -> Config:
        if self.inbound_auth is not None:
            return self
        if self.limits is not None and self.limits.per == "token":
            raise ValueError("limits.per: token counts streams per inbound token, and there is no inbound_auth")
        for i, route in enumerate(self.routes):
            if route.limits is not None and route.limits.per == "token":
                raise ValueError(f"routes[{i}].limits.per: token counts streams per inbound token, "
                                 "and there is no inbound_auth")
        return self

    def retry_for(self, route: Route) -> Retry | None:
        """The route's retry setting, or the top-level default (``None``: no retries)."""
        return route.retry if route.retry is not None else self.retry

    def limits_for(self, route: Route) -> Limits | None:
        """The route's limits, or the top-level default (``None``: no limit)."""
        return route.limits if route.limits is not None else self.limits

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def record_dir(self, route: Route) -> str | None:
        """Where ``route`` records its exchanges: its own ``record``, else the top-level one."""
        record = route.record if route.record is not None else self.record
        return record or None


def dump_for_humans(value: Any) -> Any:
    """A plain structure of ``value`` for printing, with every secret replaced by ``<redacted>``."""
    if isinstance(value, SecretStr):
        return "<redacted>"
    if isinstance(value, BaseModel):
        return {k: dump_for_humans(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: dump_for_humans(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [dump_for_humans(v) for v in value]
    return value
