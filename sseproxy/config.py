"""The config file's structure: frozen pydantic models that reject unknown keys.

These models describe what the user wrote, validated; ``runtime.compile_config`` turns them into
the objects a request uses. Secrets (injected header values, inbound tokens) are ``SecretStr``
so that no repr, log line or ``check`` output can show them.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Compression = Literal["auto", "pass", "identity"]
DEFAULT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _check_upstream_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an http(s) URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an upstream is a base URL, without query or fragment")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value


def _as_upstream_list(value: object) -> object:
    """One URL or a list; a single URL is checked here so that its error names ``upstream`` itself."""
    return [_check_upstream_url(value)] if isinstance(value, str) else value


UpstreamUrl = Annotated[str, BeforeValidator(_check_upstream_url)]


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; raises ``ValueError`` naming the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{value!r} has no host (use 0.0.0.0:PORT to listen on every address)")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeaderRules(Model):
    """Response header rules: remove, then set (replace), then add (append)."""

    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class RequestHeaderRules(Model):
    """Request header rules; values are secrets because this is where API keys are injected."""

    set: dict[str, SecretStr] = {}
    add: dict[str, SecretStr] = {}
    remove: list[str] = []


class Timeouts(Model):
    connect: Duration = 10.0
    idle: Duration = 300.0


class TimeoutOverrides(Model):
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


class InboundAuth(Model):
    header: str = "Authorization"
    tokens: list[SecretStr] = Field(min_length=1)

    @field_validator("tokens")
    @classmethod
    def _no_empty_token(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for token in tokens:
            if not token.get_secret_value().strip():
                raise ValueError("an inbound token is empty (is its environment variable set?)")
        return tokens


class Route(Model):
    name: str | None = None
    path: str = "/"
    host: str | None = None
    methods: list[str] | None = None
    upstream: Annotated[list[UpstreamUrl], BeforeValidator(_as_upstream_list), Field(min_length=1)]
    strip_prefix: bool = True
    preserve_host: bool = False
    forwarded: bool = True
    websocket: bool = True
    stream: Literal["auto", "always", "never"] = "auto"
    request_headers: RequestHeaderRules = RequestHeaderRules()
    response_headers: HeaderRules = HeaderRules()
    timeouts: TimeoutOverrides = TimeoutOverrides()
    heartbeat: Duration | None = None
    cors: CorsSetting = None
    upstream_compression: Compression | None = None

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
    inbound_auth: InboundAuth | None = None
    cors: CorsSetting = None
    timeouts: Timeouts = Timeouts()
    heartbeat: Duration = 15.0
    upstream_compression: Compression = "auto"
    allowed_hosts: list[str] = []
    websocket: WebSocketLimits = WebSocketLimits()
    routes: list[Route] = []

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

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


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
