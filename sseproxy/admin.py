"""The admin endpoints under ``admin_prefix``: never proxied."""

from __future__ import annotations

from aiohttp import web

from .errors import NoRoute


def owns(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


async def respond(prefix: str, path: str) -> web.Response:
    if path == prefix + "/health":
        return web.json_response({"status": "ok"})
    raise NoRoute(f"no admin endpoint at {path}")
