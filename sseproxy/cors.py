"""CORS: preflights answered by the proxy, responses decorated so each header appears exactly once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .config_sections import Cors
from .errors import Forbidden


@dataclass(frozen=True)
class CorsPolicy:
    """A route's CORS policy, compiled once: origins as a set, methods upper-case, header values joined."""

    origins: frozenset[str]
    any_origin: bool
    credentials: bool
    methods: frozenset[str]
    methods_header: str
    allow_headers: str | None        # None: echo the preflight's Access-Control-Request-Headers
    expose_headers: str
    max_age: str


def compile_cors(cors: Cors | None) -> CorsPolicy | None:
    if cors is None or not cors.enabled:
        return None
    return CorsPolicy(
        origins=frozenset(cors.allow_origins), any_origin="*" in cors.allow_origins,
        credentials=cors.allow_credentials, methods=frozenset(cors.allow_methods),
        methods_header=", ".join(cors.allow_methods),
        allow_headers=None if "*" in cors.allow_headers else ", ".join(cors.allow_headers),
        expose_headers=", ".join(cors.expose_headers), max_age=str(cors.max_age),
    )


def is_preflight(request: web.BaseRequest) -> bool:
    headers = request.headers
    return request.method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


def origin_allowed(cors: CorsPolicy, origin: str | None) -> bool:
    return origin is not None and (cors.any_origin or origin in cors.origins)


def _add_vary_origin(headers: CIMultiDict[str]) -> None:
    vary = [v.strip() for value in headers.getall("Vary", ()) for v in value.split(",") if v.strip()]
    if not any(v.lower() == "origin" or v == "*" for v in vary):
        headers["Vary"] = ", ".join([*vary, "Origin"])


def preflight(cors: CorsPolicy, headers: CIMultiDictProxy[str], route: str) -> web.Response:
    """204 with the allowed methods and headers, or 403 (without CORS headers) for a refused request."""
    origin = headers["Origin"]
    method = headers["Access-Control-Request-Method"].strip().upper()
    if not origin_allowed(cors, origin):
        raise Forbidden(f"origin {origin} is not allowed", route=route)
    if method not in cors.methods:
        raise Forbidden(f"method {method} is not allowed by CORS", route=route)
    out: CIMultiDict[str] = CIMultiDict()
    decorate(cors, origin, out)
    out["Access-Control-Allow-Methods"] = cors.methods_header
    allow_headers = cors.allow_headers if cors.allow_headers is not None else headers.get(
        "Access-Control-Request-Headers")
    if allow_headers:
        out["Access-Control-Allow-Headers"] = allow_headers
    out["Access-Control-Max-Age"] = cors.max_age
    return web.Response(status=204, headers=out)


def decorate(cors: CorsPolicy, origin: str | None, headers: CIMultiDict[str]) -> None:
    """Replace any Access-Control-* the upstream sent with this policy's, for an allowed origin."""
    for name in [k for k in headers if k.lower().startswith("access-control-")]:
        headers.popall(name, None)
    _add_vary_origin(headers)
    if not origin_allowed(cors, origin):
        return
    assert origin is not None
    headers["Access-Control-Allow-Origin"] = origin
    if cors.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = cors.expose_headers
