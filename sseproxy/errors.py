"""The error tree: every failure the proxy answers for, with its status and type.

Errors are also builtins where one fits (``UpstreamTimeout`` is a ``TimeoutError``), so callers can
catch either. Before a response has started, each becomes a JSON error body; after, a stream can only
be ended with an error frame or aborted.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProxyError(Exception):
    """A request the proxy refuses or cannot complete, answered with ``status`` and ``type``."""

    status = 500
    type = "internal_error"

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


class UpstreamUnavailable(ProxyError, ConnectionError):
    status = 502
    type = "upstream_unavailable"


class UpstreamTimeout(ProxyError, TimeoutError):
    status = 504
    type = "upstream_timeout"


class UpstreamConnectError(UpstreamUnavailable):
    """No connection could be made (refused, DNS, TLS): nothing was sent, the next upstream may be tried."""


class UpstreamConnectTimeout(UpstreamTimeout):
    """Connecting took longer than ``timeouts.connect``: nothing was sent either."""


class UpstreamError(ProxyError, ConnectionError):
    """The upstream failed after its response started: reset, idle timeout, bad framing or encoding."""

    status = 502
    type = "upstream_error"


class ShuttingDown(ProxyError):
    """The proxy is stopping and its grace period is over: streams still open are ended."""

    status = 503
    type = "shutdown"


class UpstreamIdle(UpstreamError, TimeoutError):
    """The upstream fell silent for longer than ``timeouts.idle`` mid-stream."""


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
