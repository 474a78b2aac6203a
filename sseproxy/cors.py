"""CORS: preflights answered by the proxy, responses decorated so each header appears exactly once."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .config import Cors
from .errors import Forbidden


def is_preflight(request: web.BaseRequest) -> bool:
    headers = request.headers
    return request.method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


def origin_allowed(cors: Cors, origin: str | None) -> bool:
    return origin is not None and ("*" in cors.allow_origins or origin in cors.allow_origins)


def _add_vary_origin(headers: CIMultiDict[str]) -> None:
    vary = [v.strip() for value in headers.getall("Vary", ()) for v in value.split(",") if v.strip()]
    if not any(v.lower() == "origin" or v == "*" for v in vary):
        headers["Vary"] = ", ".join([*vary, "Origin"])


def preflight(cors: Cors, headers: CIMultiDictProxy[str], route: str) -> web.Response:
    """204 with the allowed methods and headers, or 403 (without CORS headers) for a refused request."""
    origin = headers["Origin"]
    method = headers["Access-Control-Request-Method"].strip().upper()
    if not origin_allowed(cors, origin):
        raise Forbidden(f"origin {origin} is not allowed", route=route)
    if method not in cors.allow_methods:
        raise Forbidden(f"method {method} is not allowed by CORS", route=route)
    out: CIMultiDict[str] = CIMultiDict()
    decorate(cors, origin, out)
    out["Access-Control-Allow-Methods"] = ", ".join(cors.allow_methods)
    requested = headers.get("Access-Control-Request-Headers")
    if "*" in cors.allow_headers:
        if requested:
            out["Access-Control-Allow-Headers"] = requested
    elif cors.allow_headers:
        out["Access-Control-Allow-Headers"] = ", ".join(cors.allow_headers)
    out["Access-Control-Max-Age"] = str(cors.max_age)
    return web.Response(status=204, headers=out)


def decorate(cors: Cors, origin: str | None, headers: CIMultiDict[str]) -> None:
    """Replace any Access-Control-* the upstream sent with this policy's, for an allowed origin."""
    for name in [k for k in headers if k.lower().startswith("access-control-")]:
        headers.popall(name, None)
    _add_vary_origin(headers)
    if not origin_allowed(cors, origin):
        return
    assert origin is not None
    headers["Access-Control-Allow-Origin"] = origin
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(cors.expose_headers)
