"""The admin endpoints under ``admin_prefix``: never proxied."""

from __future__ import annotations

from aiohttp import web

from .errors import NoRoute
from .metrics import CONTENT_TYPE
from .runtime import Runtime


def owns(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


async def respond(runtime: Runtime, path: str) -> web.Response:
    """``/health``: 200, or 503 while draining (so load balancers stop sending); ``/metrics``."""
    prefix = runtime.snapshot.admin_prefix
    if path == prefix + "/health":
        if runtime.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})
    if path == prefix + "/metrics":
        return web.Response(body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
    raise NoRoute(f"no admin endpoint at {path}")
