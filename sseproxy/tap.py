"""``--tap``: every relayed event printed as it passes, like a browser's EventStream panel.

It is a hook like any feature: it sees the frames the relay wrote. Every line is bounded in length,
shows no control characters (an upstream's terminal escapes or NULs are made visible, never
obeyed) and goes through the same redaction as the logs, so an injected key echoed back by an
upstream is never printed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

from multidict import CIMultiDict

from .accesslog import RequestRecord
from .framing import StreamKind
from .hooks import ExchangeInfo

_BOUNDARY = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_LINE = re.compile(rb"\r\n|\n|\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
PREVIEW = 72  # characters of data shown per event
NAME = 40     # characters of an event name shown
SCAN = 8192   # bytes of an event's data looked at for its preview: bounds the work per event


def _visible(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, control characters shown as escapes."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TapHook:
    def __init__(self, tap: Tap, info: ExchangeInfo):
        self._tap = tap
        self._info = info
        self._sse: bool | None = None  # None: not a framed stream, nothing to print

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self._sse = {StreamKind.SSE: True, StreamKind.LINES: False}.get(kind)

    def data(self, chunk: bytes, at: float) -> None:
        if self._sse is not None:
            self._tap.frames(self._info.route, self._info.id, chunk, sse=self._sse)

    def end(self, record: RequestRecord) -> None:
        pass


class Tap:
    """The hook factory: one ``TapHook`` per exchange, all printing to ``out``."""

    def __init__(self, out: TextIO | None = None, color: bool | None = None,
                 redact: Callable[[str], str] = str):
        self.out = out or sys.stdout
        self.color = self.out.isatty() if color is None else color
        self.redact = redact

    def open(self, info: ExchangeInfo) -> TapHook:
        return TapHook(self, info)

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def frames(self, route: str, stream_id: int, data: bytes, sse: bool) -> None:
        """Print one line per whole event (SSE) or line (NDJSON) in ``data``."""
        stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        pieces = _BOUNDARY.split(data) if sse else _LINE.split(data)
        lines = []
        for piece in pieces:
            if not piece.strip():
                continue
            name, payload = ("line", piece) if not sse else self._parse(piece)
            if name is None:
                continue
            # redacted before it is cut, so no secret is left half shown at the cut
            preview = self.redact(payload[:SCAN].decode("utf-8", "replace"))
            lines.append(f"{self._paint('2', stamp)} {self._paint('36', _visible(route, NAME))} #{stream_id} "
                         f"{self._paint('1', _visible(self.redact(name), NAME))} {len(piece)}B "
                         f"{_visible(preview, PREVIEW)}")
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    @staticmethod
    def _parse(event: bytes) -> tuple[str | None, bytes]:
        name, data = "message", []
        for line in _LINE.split(event):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value[:1024].decode("utf-8", "replace")  # never more of a name than is shown
            elif field == b"data":
                data.append(value)
        if not data:
            return None, b""  # a comment or a block without data dispatches nothing
        return name, b"\\n".join(data)
