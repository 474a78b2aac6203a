"""The page a browser navigation gets instead of a 502 or 504 JSON body.

A person who opens ``http://localhost:8080/`` while the dev server is down should read what happened
and what to do, not a line of JSON. API clients (anything that does not ask for ``text/html``) keep
the JSON body the spec describes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from yarl import URL

from .errors import ProxyError, UpstreamConnectError, UpstreamConnectTimeout, UpstreamTimeout

PAGE_STATUSES = frozenset({502, 504})


def wants_page(status: int, accept: str | None) -> bool:
    """A browser navigation asks for ``text/html`` first; ``fetch()`` and SDKs do not."""
    return status in PAGE_STATUSES and accept is not None and "text/html" in accept.lower()


def _shown(url: URL) -> str:
    return str(url.with_user(None)) if url.user or url.password else str(url)


def hint(error: ProxyError, upstreams: Sequence[URL], key_path: str) -> str:
    """What to try, from the kind of failure and where the route's upstream is set."""
    ports = ", ".join(sorted({str(u.port) for u in upstreams if u.port is not None}))
    if isinstance(error, UpstreamConnectError) and "cannot connect" in error.message:
        return (f"Is the server for this route running, on port {ports}? Start it, or point "
                f"{key_path} at where it listens (a ${{VAR}} there, such as DEV_SERVER_PORT in "
                "config/dev.yaml, sets the port without editing the file).")
    if isinstance(error, UpstreamConnectError):
        return f"Check the host name and TLS settings of {key_path}."
    if isinstance(error, UpstreamConnectTimeout):
        return ("The upstream did not accept the connection in time: is the host reachable from here? "
                "timeouts.connect sets how long to wait.")
    if isinstance(error, UpstreamTimeout):
        return ("The upstream accepted the request but sent no response headers in time: it may be busy or "
                "stuck. timeouts.idle sets how long to wait.")
    return "The upstream failed before it answered; its own log may say why."


def render(error: ProxyError, route: str, upstreams: Sequence[URL], key_path: str, request_id: str) -> str:
    tried = ", ".join(_shown(u) for u in upstreams)
    e = html.escape
    return f"""<!doctype html>
<html lang=en><meta charset=utf-8><title>{error.status} {e(error.type)} - sseproxy</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#222}}
code{{background:#f3f3f3;padding:0 .25rem}}dt{{font-weight:600}}</style>
<h1>{error.status}: the upstream {"did not answer in time" if error.status == 504 else "is not reachable"}</h1>
<dl>
<dt>Route</dt><dd><code>{e(route)}</code></dd>
<dt>Upstream tried</dt><dd><code>{e(tried)}</code></dd>
<dt>What failed</dt><dd>{e(error.message)}</dd>
<dt>Hint</dt><dd>{e(hint(error, upstreams, key_path))}</dd>
</dl>
<p><small>sseproxy, request id <code>{e(request_id)}</code>. API clients get this as JSON
(<code>{{"error": {{"type": "{e(error.type)}", ...}}}}</code>).</small></p>
"""
