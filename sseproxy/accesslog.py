"""One access-log line per request, written when it ends (streams too), text or JSON, no secrets."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import Outcome
from .logs import direct_handler


@dataclass(slots=True)  # one per request in flight: no instance dict
class RequestRecord:
    """What one request did; filled in along its path through the proxy."""

    method: str
    path: str
    started: float
    client: str | None = None
    route: str | None = None
    status: int = 0
    ttfb: float | None = None          # seconds to the upstream's response headers
    ttfe: float | None = None          # seconds to the first whole event or line
    total: float | None = None
    bytes: int = 0
    events: int = 0
    heartbeats: int = 0
    outcome: Outcome = Outcome.OK
    error: str | None = None
    error_type: str | None = None      # the ProxyError type, e.g. upstream_unavailable
    tokens_in: int | None = None       # LLM usage read from the stream (usage.py), when it reports it
    tokens_out: int | None = None
    llm: bool = False                  # an LLM-style stream (a POST naming a model, answered with events)
    attempts: int = 1                  # tries upstream; more than 1 after retries before the first byte
    retried: list[int] = field(default_factory=list)  # the status each retried attempt answered
    request_id: str | None = None      # X-Request-Id, as sent upstream and returned to the client
    stream_id: str | None = None       # a resumable stream's key (resume_store.stream_key): safe to show
    resumed_from: int | None = None    # a resume's Last-Event-ID position
    admin: bool = False                # an admin endpoint (health, metrics): logged, not counted in metrics

    def fields(self) -> dict[str, Any]:
        """The record as JSON-ready fields (the access log's JSON form)."""
        out = {name: getattr(self, name) for name in _LOGGED}  # not asdict: it deep-copies, once per request
        out["retried"] = list(self.retried)
        out["outcome"] = self.outcome.value
        for key in ("ttfb", "ttfe", "total"):
            if out[key] is not None:
                out[key] = round(out[key], 6)
        return out


_LOGGED = tuple(f.name for f in fields(RequestRecord) if f.name not in ("started", "admin"))


_LINE = '%s "%s %s" route=%s status=%d ttfb=%s ttfe=%s total=%s bytes=%d events=%d heartbeats=%d outcome=%s%s%s%s'


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _tokens(record: RequestRecord) -> str:
    """`` tokens_in=N tokens_out=N`` where the stream reported usage, `` attempts=N retried=[..]``
    after retries; nothing on other lines."""
    out = ""
    if record.tokens_in is not None or record.tokens_out is not None:
        out = f" tokens_in={_or_dash(record.tokens_in)} tokens_out={_or_dash(record.tokens_out)}"
    if record.attempts > 1:
        out += f" attempts={record.attempts} retried={','.join(map(str, record.retried))}"
    return out


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


class AccessLog:
    """Writes records to the ``sseproxy.access`` logger; the record rides along as ``access``, and the
    log formatter makes its JSON form (``fields()``) when ``access_log: json``. ``enabled`` follows
    ``access_log`` across reloads."""

    def __init__(self, enabled: bool = True, logger: logging.Logger | None = None):
        self.enabled = enabled
        self.logger = logger or logging.getLogger("sseproxy.access")

    def write(self, record: RequestRecord) -> None:
        logger = self.logger
        if not self.enabled or not logger.isEnabledFor(logging.INFO):
            return
        args = (record.client or "-", record.method, record.path, record.route or "-", record.status,
                _ms(record.ttfb), _ms(record.ttfe), _ms(record.total), record.bytes, record.events,
                record.heartbeats, record.outcome.value, _tokens(record),
                f" request_id={record.request_id}" if record.request_id else "",
                f" error={json.dumps(record.error)}" if record.error else "")
        direct = direct_handler(logger)
        if direct is not None and direct[1].access == "text":  # the usual case: one line, no LogRecord
            handler, formatter = direct
            handler.write_line(formatter.text_line(time.time(), "INFO", logger.name, _LINE % args) + handler.terminator)
            return
        logger.info(_LINE, *args, extra={"access": record})  # the JSON form calls record.fields(), only when used
