"""The recorder: a ``HookFactory`` that writes one recording file per exchange when it ends.

It rides on the exchange hooks (``hooks.py``), so a route that does not record pays nothing: its
factory is not in the route's list. For one that does, each call is an append to a list; the file
is built and written once, at ``end``.

Writing: a recording of up to ``DIRECT_WRITE`` bytes (nearly every LLM exchange) is formatted and
written on the event loop, which takes well under a millisecond (a temp file, then a rename, no
fsync). A larger one is redacted, formatted and written on the recorder's own thread, so the loop
is not held for the tens of milliseconds that takes, and DNS lookups on the loop's default executor
never queue behind it. ``close()`` waits for writes in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from .errors import Outcome
from .framing import LINE_END, SSE_BOUNDARY, StreamKind
from .hooks import ExchangeInfo
from .recording import Frame, RecordedRequest, RecordedResponse, Recording, Redaction, dumps, file_name, write_atomic

if TYPE_CHECKING:
    from .accesslog import RequestRecord

log = logging.getLogger("sseproxy")

MAX_RECORDING = 64 * 1024 * 1024  # bounds the bytes (request body + response) held per recorded exchange
DIRECT_WRITE = 256 * 1024  # recordings up to this size are written on the loop; larger ones on a thread

_CONTEXT = 3  # a boundary is at most 4 bytes: rescan this much of the held tail when more arrives

Saved = Callable[[Path, Recording], None]


class FrameSplitter:
    """Sans-io: cuts what the client was sent into single frames (one event, or one line). The relay
    hands over whole frames, several at a time when they arrived together; a piece of an oversized
    frame is held until the frame completes."""

    def __init__(self, kind: StreamKind):
        self._boundary = SSE_BOUNDARY if kind is StreamKind.SSE else LINE_END
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        scan_from = max(0, len(self._buf) - _CONTEXT)
        self._buf += data
        out, start = [], 0
        for m in self._boundary.finditer(self._buf, scan_from):
            out.append(bytes(self._buf[start:m.end()]))
            start = m.end()
        del self._buf[:start]
        return out

    def flush(self) -> bytes:
        """An incomplete last frame, as the stream ended it."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


def ended_ok(outcome: object) -> bool:
    """``record.outcome`` is an ``Outcome``; its string value is accepted too."""
    return outcome is Outcome.OK or outcome == Outcome.OK.value


class Recorder:
    """Records every exchange it is asked to open into ``directory``, never writing ``secrets``."""

    def __init__(self, directory: str | Path, secrets: Sequence[str] = (), *, max_bytes: int = MAX_RECORDING,
                 on_saved: Saved | None = None):
        self.directory = Path(directory)
        self.redaction = Redaction(secrets)
        self.max_bytes = max_bytes
        self.on_saved = on_saved   # called on the loop with each file written (replay indexes them)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[asyncio.Future[Path | None]] = set()

    def open(self, info: ExchangeInfo) -> RecordingHook:
        return RecordingHook(self, info)

    def save(self, recording: Recording, wall: float, seq: int, size: int) -> None:
        """Redact and write ``recording``; on the loop when small, else on the recorder's thread."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if size <= DIRECT_WRITE or loop is None:
            self._saved(self.persist(recording, wall, seq), recording)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sseproxy-recorder")
        future = loop.run_in_executor(self._executor, self.persist, recording, wall, seq)
        self._pending.add(future)
        future.add_done_callback(lambda f: self._done(f, recording))

    def _done(self, future: asyncio.Future[Path | None], recording: Recording) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is None:
            self._saved(future.result(), recording)

    def _saved(self, path: Path | None, recording: Recording) -> None:
        if path is not None and self.on_saved is not None:
            self.on_saved(path, recording)

    def persist(self, recording: Recording, wall: float, seq: int) -> Path | None:
        """The file written, or ``None`` (logged) when it could not be."""
        try:
            redacted = self.redaction.recording(recording)
            name = file_name(wall, seq, redacted.request.method, redacted.request.path)
            return write_atomic(self.directory, name, dumps(redacted))
        except Exception as e:
            log.warning("could not write a recording into %s: %s", self.directory, e)
            return None

    async def close(self) -> None:
        """Wait for writes in flight, then stop the writing thread."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class RecordingHook:
    """One exchange being recorded. Holds at most ``max_bytes`` of it; past that, the recording is
    dropped (one warning) and the exchange goes on unrecorded."""

    def __init__(self, recorder: Recorder, info: ExchangeInfo):
        self._recorder = recorder
        self._info = info
        self._wall = time.time()  # the file name's time; the frames' times are loop times
        self._size = 0
        self._dropped = False
        self._request_body = bytearray()
        self._head: tuple[int, tuple[tuple[str, str], ...], StreamKind] | None = None
        self._responded_at: float | None = None
        self._splitter: FrameSplitter | None = None
        self._frames: list[Frame] = []
        self._body = bytearray()
        self._last_at = info.started

    def _take(self, size: int) -> bool:
        if self._dropped:
            return False
        self._size += size
        if self._size <= self._recorder.max_bytes:
            return True
        self._dropped = True
        self._request_body, self._frames, self._body, self._splitter = bytearray(), [], bytearray(), None
        info = self._info
        log.warning("not recording %s %s (route %s): over %d bytes", info.method, info.path, info.route,
                    self._recorder.max_bytes)
        return False

    def _ms(self, at: float) -> float:
        return round(max(0.0, at - self._info.started) * 1000, 1)

    def request_body(self, chunk: bytes) -> None:
        if self._take(len(chunk)):
            self._request_body += chunk

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self._head = (status, tuple(headers.items()), kind)
        if kind in (StreamKind.SSE, StreamKind.LINES):
            self._splitter = FrameSplitter(kind)
        try:
            self._responded_at = asyncio.get_running_loop().time()
        except RuntimeError:
            self._responded_at = None

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        if self._head is None or not self._take(len(chunk)):
            return
        self._last_at = at
        kind = self._head[2]
        if kind is StreamKind.NONE:
            self._body += chunk
        elif self._splitter is None:
            self._frames.append(Frame(self._ms(at), chunk))  # unframed: each piece as it arrived
        else:
            self._frames.extend(Frame(self._ms(at), frame) for frame in self._splitter.feed(chunk))

    def end(self, record: RequestRecord) -> None:
        try:
            self._end(record)
        except Exception:
            log.exception("recording %s %s failed", self._info.method, self._info.path)

    def _end(self, record: RequestRecord) -> None:
        if self._dropped or self._head is None:  # no response head: nothing came from the upstream
            return
        status, headers, kind = self._head
        if self._splitter is not None and (tail := self._splitter.flush()):
            self._frames.append(Frame(self._ms(self._last_at), tail))
        if record.ttfb is not None:
            ttfb_ms = round(record.ttfb * 1000, 1)
        else:
            ttfb_ms = self._ms(self._responded_at) if self._responded_at is not None else 0.0
        info = self._info
        recording = Recording(
            RecordedRequest(info.method, info.path, info.query, tuple(info.headers.items()),
                            bytes(self._request_body)),
            RecordedResponse(status, headers, ttfb_ms,
                             frames=tuple(self._frames) if kind is not StreamKind.NONE else None,
                             body=bytes(self._body) if kind is StreamKind.NONE else None,
                             end="ok" if ended_ok(record.outcome) else "error"),
        )
        self._recorder.save(recording, self._wall, info.id, self._size)
