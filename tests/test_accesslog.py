"""The access log's direct path: with logging as ``logs.setup`` leaves it, a request's line is made
and queued without a ``LogRecord``; it must be the very line ``logging`` would have written."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

import pytest

from sseproxy.accesslog import AccessLog, RequestRecord
from sseproxy.errors import Outcome
from sseproxy.logs import CoalescingHandler, LineFormatter, Redactor, direct_handler

SECRET = "sk-live-0123456789"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@contextlib.contextmanager
def stderr_like() -> Iterator[tuple[io.StringIO, CoalescingHandler]]:
    """The root logger as ``logs.setup`` leaves it, writing to a buffer; restored afterwards (entered
    in the test itself: pytest adds its capture handlers to the root once the fixtures are set up)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    handler = CoalescingHandler(out)
    handler.setFormatter(LineFormatter("text", "text", Redactor([SECRET])))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out, handler
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def record() -> RequestRecord:
    return RequestRecord(method="POST", path="/v1/chat", started=0.0, client="127.0.0.1", route="llm", status=200,
                         ttfb=0.0123, ttfe=0.0456, total=1.5, bytes=1234, events=12, heartbeats=1,
                         outcome=Outcome.CLIENT_CLOSED, tokens_in=5, tokens_out=7, request_id="abc",
                         error=f"token {SECRET} refused")


def test_the_direct_line_is_the_line_logging_writes() -> None:
    with stderr_like() as (out, handler):
        direct, through_logging = both_paths(out, handler)
    assert STAMP.match(direct) and STAMP.match(through_logging), (direct, through_logging)
    assert STAMP.sub("", direct) == STAMP.sub("", through_logging)
    assert direct.endswith("\n") and direct.count("\n") == 1
    assert SECRET not in direct and "<redacted>" in direct  # redacted on this path too
    assert ' "POST /v1/chat" route=llm status=200 ttfb=12.3ms ttfe=45.6ms total=1500.0ms bytes=1234 events=12 ' \
           'heartbeats=1 outcome=client_closed tokens_in=5 tokens_out=7 request_id=abc' in direct


def both_paths(out: io.StringIO, handler: CoalescingHandler) -> tuple[str, str]:
    """The line written on the direct path, then the same record's through ``logging``."""
    log = AccessLog()
    assert direct_handler(log.logger) is not None  # as set up: the direct path is taken
    log.write(record())
    handler.flush()
    direct = out.getvalue()
    out.truncate(0)
    out.seek(0)
    logging.getLogger("sseproxy.access").addFilter(lambda r: True)  # a filter: the line goes through logging
    try:
        assert direct_handler(log.logger) is None
        log.write(record())
    finally:
        logging.getLogger("sseproxy.access").filters.clear()
    handler.flush()
    return direct, out.getvalue()


def test_a_capture_or_another_handler_sees_every_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sseproxy.access")
    log = AccessLog()
    assert direct_handler(log.logger) is None  # caplog's handler: logging carries the line
    log.write(record())
    assert [r.name for r in caplog.records] == ["sseproxy.access"]
    assert caplog.records[0].access.route == "llm"  # type: ignore[attr-defined]  # the JSON form's fields


def test_json_lines_and_a_disabled_log_keep_their_path() -> None:
    with stderr_like() as (out, handler):
        formatter = handler.formatter
        assert isinstance(formatter, LineFormatter)
        formatter.access = "json"
        AccessLog().write(record())
        AccessLog(enabled=False).write(record())
        handler.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("{") and '"route": "llm"' in lines[0]
    assert SECRET not in lines[0]
