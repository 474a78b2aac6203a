"""``--tap``: every relayed event printed as it passes, like a browser's EventStream panel.

It is a hook like any feature: it sees the frames the relay wrote. Every line is bounded in length,
shows no control characters (an upstream's terminal escapes or NULs are made visible, never
obeyed) and goes through the same redaction as the logs, so an injected key echoed back by an
upstream is never printed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Collection
from typing import Any, TextIO

from multidict import CIMultiDict

from .accesslog import RequestRecord
from .framing import NO_DATA, StreamKind, parse_event, split_frames
from .hooks import ExchangeInfo

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NAME = 40     # characters of an event name shown
SCAN = 8192   # bytes of an event's data looked at for its preview: bounds the work per event
FIELD_SCAN = 256 * 1024  # bytes of an event's data parsed as JSON for --tap-field: bounds the work too
PIPE_WIDTH = 200         # line width when stdout is not a terminal


def default_width(out: TextIO) -> int:
    """The terminal's width when ``out`` is one, else ``PIPE_WIDTH``."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return shutil.get_terminal_size((PIPE_WIDTH, 24)).columns if tty else PIPE_WIDTH


def parse_field_path(path: str) -> tuple[str | int, ...]:
    """``choices.0.delta.content`` as keys and list indexes."""
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def pick(data: bytes, path: tuple[str | int, ...]) -> str | None:
    """The JSON value at ``path`` in ``data`` (a string as JSON, so spaces and newlines show), or None."""
    if len(data) > FIELD_SCAN:
        return None
    try:
        value: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    for part in path:
        if isinstance(part, int) and isinstance(value, list) and -len(value) <= part < len(value):
            value = value[part]
        elif isinstance(value, dict) and str(part) in value:
            value = value[str(part)]
        else:
            return None
    return json.dumps(value, ensure_ascii=False)


def _visible(text: str, limit: int) -> str:
    """``text`` with control characters shown as escapes, then cut at ``limit`` characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TapHook:
    def __init__(self, tap: Tap, info: ExchangeInfo):
        self._tap = tap
        self._info = info
        self._sse: bool | None = None  # None: not a framed stream, nothing to print

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self._sse = {StreamKind.SSE: True, StreamKind.LINES: False}.get(kind)

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        if self._sse is not None:
            self._tap.frames(self._info.route, self._info.id, chunk, sse=self._sse, request_id=self._info.request_id)

    def end(self, record: RequestRecord) -> None:
        pass


class Tap:
    """The hook factory: one ``TapHook`` per exchange, all printing to ``out``. ``width`` bounds each
    line (``--tap-width``), ``routes`` picks the routes shown (``--tap-route``, all when empty), and
    ``field`` shows one JSON field of each event's data instead of its start (``--tap-field``)."""

    def __init__(self, out: TextIO | None = None, color: bool | None = None,
                 redact: Callable[[str], str] = str, width: int | None = None,
                 routes: Collection[str] = (), field: str | None = None):
        self.out = out or sys.stdout
        self.color = self.out.isatty() if color is None else color
        self.redact = redact
        self.width = width if width is not None else default_width(self.out)
        self.routes = frozenset(routes)
        self.field = parse_field_path(field) if field else None

    def open(self, info: ExchangeInfo) -> TapHook | None:
        if self.routes and info.route not in self.routes:
            return None
        return TapHook(self, info)

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def frames(self, route: str, stream_id: int, data: bytes, sse: bool, request_id: str = "") -> None:
        """Print one line per whole event (SSE) or line (NDJSON) in ``data``."""
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        pieces = split_frames(data, sse)
        rid = f"{_visible(request_id, NAME)} " if request_id else ""
        lines = []
        for piece in pieces:
            if not piece.strip():
                continue
            name, payload = parse_event(piece) if sse else ("line", piece)
            if name in NO_DATA:
                continue  # a comment or a block without data dispatches nothing
            if self.field is not None:
                text = pick(payload, self.field)
                shown = self.redact(text) if text is not None else "-"
            else:
                # redacted before it is cut, so no secret is left half shown at the cut
                shown = self.redact(payload[:SCAN].decode("utf-8", "replace"))
            label, where = _visible(self.redact(name), NAME), _visible(route, NAME)
            head = len(f"{stamp} {rid}{where} #{stream_id} {label} {len(piece)}B ")
            preview = _visible(shown, max(1, self.width - head))  # the head may leave room for 1 character
            lines.append(f"{self._paint('2', stamp)} {rid}{self._paint('36', where)} #{stream_id} "
                         f"{self._paint('1', label)} {len(piece)}B {preview}")
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
