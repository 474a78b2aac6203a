"""``sseproxy doctor``: why is my stream batched? Requests a URL as a browser would and again with
identity, times every read and event off the socket, and names each cause with its fix.

Modules, one job each: ``http1`` (the request's bytes, a sans-io response parser), ``timeline`` (the
recording of one request: reads, times, events), ``probe`` (the only I/O), ``measures`` and
``analysis`` (numbers and judgement, pure), ``fixes`` (the fix for each cause), ``report`` (text and
JSON) and ``plot`` (SVG).
"""

from __future__ import annotations

from collections.abc import Callable

from ..framing import StreamKind
from .analysis import Cause, Diagnosis, diagnose
from .probe import BROWSER_ENCODING, Request, parse_target, probe
from .report import EXIT_CODES

__all__ = ["EXIT_CODES", "Cause", "Diagnosis", "Request", "examine", "parse_target"]


async def examine(request: Request, progress: Callable[[str], None] | None = None) -> Diagnosis:
    """Both requests, one after the other (so that a server able to serve one stream at a time is
    measured fairly), then the diagnosis. The identity request is made only for a stream."""
    say = progress or (lambda _: None)
    say(f"requesting with Accept-Encoding: {BROWSER_ENCODING} (up to {request.timeout:g} s)")
    browser = await probe(request, BROWSER_ENCODING)
    identity = None
    if browser.failure is None and browser.kind in (StreamKind.SSE, StreamKind.LINES) \
            and 200 <= (browser.status or 0) < 300:
        say(f"requesting again with Accept-Encoding: identity (up to {request.timeout:g} s)")
        identity = await probe(request, "identity")
    return diagnose(browser, identity, request.timeout)
