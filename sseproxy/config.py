"""The config file's structure: the top level and its routes, frozen pydantic models that reject
unknown keys, and the checks that need the whole config.

These models describe what the user wrote, validated; ``runtime.compile_config`` turns them into
the objects a request uses. Secrets (injected header values, inbound tokens) are ``SecretStr``
so that no repr, log line or ``check`` output can show them. The sections (``config_sections``),
field types (``config_fields``) and address checks (``addresses``) they are built from are
importable from here too.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from .addresses import host_name_problem, is_loopback_host, parse_listen
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
    UpstreamUrl,
)
from .config_sections import (
    DEFAULT_METHODS,
    Cors,
    CorsSetting,
    HeaderRules,
    InboundAuth,
    Limits,
    LimitsSetting,
    RecordSetting,
    RequestHeaderRules,
    Resume,
    ResumeSetting,
    Retry,
    RetrySetting,
    Timeouts,
    WebSocketLimits,
)

__all__ = [
    "DEFAULT_METHODS", "Compression", "Config", "Cors", "CorsSetting", "Count", "Duration", "HeaderName",
    "HeaderRules", "HeaderValue", "InboundAuth", "Limits", "LimitsSetting", "Model", "RecordSetting",
    "RequestHeaderRules", "Resume", "ResumeSetting", "Retry", "RetrySetting", "Route", "SecretHeaderValue", "Size",
    "Timeouts", "UpstreamUrl", "WebSocketLimits", "dump_for_humans", "host_name_problem", "is_loopback_host",
    "parse_listen",
]


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
