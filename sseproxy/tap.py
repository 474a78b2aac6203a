"""``--tap``: every relayed event printed as it passes, like a browser's EventStream panel."""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

_BOUNDARY = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_LINE = re.compile(rb"\r\n|\n|\r")
PREVIEW = 72  # characters of data shown per event


class Tap:
    def __init__(self, out: TextIO | None = None, color: bool | None = None):
        self.out = out or sys.stdout
        self.color = self.out.isatty() if color is None else color

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
            preview = payload.decode("utf-8", "replace")
            preview = preview if len(preview) <= PREVIEW else preview[: PREVIEW - 1] + "…"
            lines.append(f"{self._paint('2', stamp)} {self._paint('36', route)} #{stream_id} "
                         f"{self._paint('1', name)} {len(piece)}B {preview}")
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
                name = value.decode("utf-8", "replace")
            elif field == b"data":
                data.append(value)
        if not data:
            return None, b""  # a comment or a block without data dispatches nothing
        return name, b"\\n".join(data)
