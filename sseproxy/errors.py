"""The error tree: every failure the proxy answers for, with its status and type.

Errors are also builtins where one fits (``UpstreamTimeout`` is a ``TimeoutError``), so callers can
catch either. Before a response has started, each becomes a JSON error body; after, a stream can only
be ended with an error frame or aborted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """How a request ended: set once, where it happens. The access log, the metrics and the
    decision to release or close the upstream connection all read it; nothing classifies strings.
    A ``StrEnum``: a member hashes as its string does, in C (``Enum.__hash__`` is a Python call, and
    the metrics look an outcome up twice per request)."""

    OK = "ok"
    CLIENT_CLOSED = "client_closed"    # the client left before the end
    UPSTREAM_ERROR = "upstream_error"  # a 502 before headers, or a failure mid-stream
    TIMEOUT = "timeout"                # a 504 before headers, or idle mid-stream
    REFUSED = "refused"                # the proxy's own 4xx answers
    SHUTDOWN = "shutdown"              # ended by shutdown after the grace period
    INTERNAL = "internal_error"        # a bug in the proxy: logged with its traceback


class ProxyError(Exception):
    """A request the proxy refuses or cannot complete, answered with ``status`` and ``type``."""

    status = 500
    type = "internal_error"
    outcome = Outcome.REFUSED

    def __init__(self, message: str, *, route: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.route = route
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"type": self.type, "message": self.message, "route": self.route}}


class BadRequest(ProxyError, ValueError):
    status = 400
    type = "bad_request"


class Unauthorized(ProxyError, PermissionError):
    status = 401
    type = "unauthorized"


class Forbidden(ProxyError, PermissionError):
    status = 403
    type = "forbidden"


class NoRoute(ProxyError, LookupError):
    status = 404
    type = "no_route"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "method_not_allowed"


class BodyTooLarge(ProxyError):
    status = 413
    type = "body_too_large"


class TooManyStreams(ProxyError):
    """A route's ``limits.concurrent_streams`` is reached for this token, client or route; the
    answer carries ``Retry-After`` (see ``limits.py``)."""

    status = 429
    type = "too_many_streams"
    outcome = Outcome.REFUSED


class NotImplementedCoding(ProxyError, NotImplementedError):
    """A request body in a transfer coding the proxy does not implement (anything but chunked)."""

    status = 501
    type = "not_implemented"


class UpstreamUnavailable(ProxyError, ConnectionError):
    status = 502
    type = "upstream_unavailable"
    outcome = Outcome.UPSTREAM_ERROR


class UpstreamTimeout(ProxyError, TimeoutError):
    status = 504
    type = "upstream_timeout"
    outcome = Outcome.TIMEOUT


class UpstreamConnectError(UpstreamUnavailable):
    """No connection could be made (refused, DNS, TLS): nothing was sent, the next upstream may be tried."""


class UpstreamConnectTimeout(UpstreamTimeout):
    """Connecting took longer than ``timeouts.connect``: nothing was sent either."""


class UpstreamError(ProxyError, ConnectionError):
    """The upstream failed after its response started: reset, idle timeout, bad framing or encoding."""

    status = 502
    type = "upstream_error"
    outcome = Outcome.UPSTREAM_ERROR


class ShuttingDown(ProxyError):
    """The proxy is stopping and its grace period is over: streams still open are ended."""

    status = 503
    type = "shutdown"
    outcome = Outcome.SHUTDOWN


class UpstreamIdle(UpstreamError, TimeoutError):
    """The upstream fell silent for longer than ``timeouts.idle`` mid-stream."""

    outcome = Outcome.TIMEOUT


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (file and key path) and what."""

    file: str
    loc: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.loc}" if self.loc else self.file
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """A config that cannot be used; carries one ``Problem`` per mistake so all are reported at once."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class StreamGone(ProxyError, LookupError):
    """A resume (``Last-Event-ID``) of a stream that is unknown, expired, past a dropped position,
    or started with another inbound token: all answered alike, so none can be told apart."""

    status = 410
    type = "stream_gone"


class ResumeUnavailable(ProxyError, ConnectionError):
    """A resume while the route's store (Redis) cannot be reached."""

    status = 503
    type = "resume_unavailable"


class Detached(ProxyError):
    """A resumable stream that had no client for longer than ``resume.detach``: the upstream is cancelled."""

    status = 499
    type = "detached"
    outcome = Outcome.CLIENT_CLOSED
