"""The admin endpoints under ``admin_prefix``: never proxied. Health and metrics here; the
inspector's page, listing and feed in ``inspector_http``."""

from __future__ import annotations

from aiohttp import web

from . import inspector_http
from .errors import NoRoute
from .metrics import CONTENT_TYPE
from .runtime import Runtime


def owns(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


async def respond(runtime: Runtime, path: str, request: web.BaseRequest | None = None) -> web.StreamResponse:
    """``/health``: 200, or 503 while draining (so load balancers stop sending); ``/metrics``; the
    inspector (which needs the request: its client, token and connection)."""
    prefix = runtime.snapshot.admin_prefix
    if path == prefix + "/health":
        if runtime.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})
    if path == prefix + "/metrics":
        return web.Response(body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
    if request is not None and (response := await inspector_http.respond(runtime, request, path)) is not None:
        return response
    raise NoRoute(f"no admin endpoint at {path}")
