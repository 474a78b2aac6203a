"""Logging set-up: text or JSON lines on stderr, with every secret redacted from the final line.

Redaction works on the line as written, after formatting: whatever a message, an extra field, an
exception's text or a traceback carries, no secret leaves the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO


class Redactor:
    """Replaces every known secret in a line: the last line of defence, not the first."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Redact these too (old ones stay: lines about old requests may still be written). Longest
        first, so a secret that contains another is never left half shown."""
        self.secrets = tuple(sorted({*self.secrets, *(s for s in secrets if s)}, key=len, reverse=True))

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "<redacted>")
        return line


def _json_line(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    out: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "pid": os.getpid(),  # not record.process: logProcesses is off, text lines have no pid
    }
    access = getattr(record, "access", None)  # an access-log line: its record's fields, made only here
    if access is not None:
        out.update(access.fields())
    else:
        out["message"] = record.getMessage()
    if record.exc_info:
        out["exception"] = formatter.formatException(record.exc_info)
    return json.dumps(out)


class LineFormatter(logging.Formatter):
    """Text or JSON per line: ``general`` (``--log-format``) for the proxy's own lines, ``access``
    (the ``access_log`` key, which a reload may change) for the access log; redacted last."""

    def __init__(self, general: str, access: str, redactor: Redactor):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.general = general
        self.access = access
        self.redactor = redactor
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As the base class's, with the part down to the second made once a second, not once a line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"  # the default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        style = self.access if record.name == "sseproxy.access" else self.general
        line = _json_line(record, self) if style == "json" else super().format(record)
        return self.redactor(line)

    def text_line(self, created: float, levelname: str, name: str, message: str) -> str:
        """The line ``format`` makes of a text record with these fields and no exception, made
        without one: the access log writes a line per request, and a ``LogRecord`` (with the
        logger's walk to its handlers) costs more than the line."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
        return self.redactor(f"{self._stamp},{int((created - second) * 1000):03d} {levelname} {name}: {message}")


class CoalescingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines written in one turn of the event loop leave in one write: when hundreds of streams end
    at once, their access-log lines cost one system call, not hundreds. Outside a running loop (start,
    exit, another thread) a line is written at once; ``flush`` writes what waits, so nothing is lost
    at exit."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)  # under the handler's lock (Handler.handle holds it)

    def write_line(self, line: str) -> None:
        """A formatted line (with its terminator), written with the others of this turn of the loop."""
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock or _NO_LOCK:
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr gone (a closed pipe): logging must never raise
                pass


def direct_handler(logger: logging.Logger) -> tuple[CoalescingHandler, LineFormatter] | None:
    """The handler and formatter ``logger``'s text lines end in, when nothing else can see them on
    the way: no filter, no other handler, up to the root (as ``setup`` leaves it). Then a caller may
    format its line and hand it over itself (``write_line``); else (a test's capture, a reconfigured
    logging) it goes through ``logging`` as usual."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or node.disabled or not node.propagate:
            return None
        node = node.parent
    root = logging.root
    handlers = root.handlers
    if len(handlers) != 1 or root.filters:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not CoalescingHandler or handler.filters or type(formatter) is not LineFormatter:
        return None
    return handler, formatter


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_LOCK = _NoLock()


def setup(fmt: str, level: str, redactor: Redactor, access: str = "text") -> LineFormatter:
    # What no line here uses, not computed per line (the logging docs' "Optimization"): the caller's
    # file and line (a walk up the stack), the thread and the multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False  # a getpid() syscall per record; JSON lines ask for it themselves
    handler = CoalescingHandler(sys.stderr)
    formatter = LineFormatter(fmt, access if access != "off" else "text", redactor)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return formatter
