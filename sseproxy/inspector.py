"""The inspector's model: every stream in flight, the last ones that ended, and a live feed of their
starts, events and ends for the inspector page (``inspector_http.py`` serves it).

It is a hook factory like ``--tap``, always in ``Runtime.hooks``. With no inspector page open, a
relayed write costs it nothing: a stream's counts (bytes, events, when the first and last left) are
read from the tally the relay keeps (``tally.py``) when the page asks. While a page is open, every
stream's view is one of its exchange's writers, and each event becomes a preview (name, size, data
cut at 200 characters, redacted, control characters escaped), serialised once and offered to every
subscriber's bounded queue: a full queue drops the item and counts it, so a slow tab never slows a
relayed stream and never holds more than its queue's worth of memory. The page is told how many it
missed, and gets a fresh snapshot to carry on from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from .accesslog import RequestRecord
from .framing import StreamKind, parse_event, split_frames
from .hooks import ExchangeInfo
from .logs import Redactor

log = logging.getLogger("sseproxy")

ENDED = 100          # streams that ended, kept for the page: bounds the memory of the history
QUEUE = 1000         # feed items queued per subscriber (each under ~2 KB): bounds a slow tab's memory
SUBSCRIBERS = 16     # open feeds at once; one more gets 503: bounds the feed's memory to SUBSCRIBERS x QUEUE
PREVIEW = 200        # characters of an event's data shown
NAME = 64            # characters of an event name shown
SCAN = 8192          # bytes of an event's data looked at for its preview: bounds the work per event

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, control characters shown as escapes, never obeyed."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Subscriber:
    """One open feed: a bounded queue of serialised items, and the count of those it missed."""

    def __init__(self, cap: int = QUEUE):
        self.cap = cap
        self.items: deque[bytes] = deque()
        self.dropped = 0          # items lost since the subscriber last took
        self.dropped_total = 0
        self.closed = False
        self._wake = asyncio.Event()

    def put(self, item: bytes) -> None:
        if len(self.items) >= self.cap:
            self.dropped += 1
            self.dropped_total += 1
        else:
            self.items.append(item)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        """True when there is something to take (or the feed closed); False after ``timeout``."""
        if not self.items and not self.dropped and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return False
        return True

    def take(self) -> tuple[list[bytes], int]:
        items, dropped = list(self.items), self.dropped
        self.items.clear()
        self.dropped = 0
        return items, dropped


@dataclass(eq=False, slots=True)
class StreamView:
    """One exchange as the inspector sees it; it is the exchange's hook too."""

    inspector: Inspector
    info: ExchangeInfo
    wall: float                            # time.time() minus loop.time() when it opened
    kind: StreamKind | None = None
    status: int | None = None
    ended_at: float | None = None
    outcome: str | None = None
    error_type: str | None = None

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self.status, self.kind = status, kind
        self.inspector.headed(self)

    @property
    def sees_writes(self) -> bool:
        """A writer only while a page is open (``Inspector.subscribe`` makes the views of streams
        already running writers too)."""
        return bool(self.inspector.subscribers)

    @property
    def events(self) -> int:
        return self.info.tally.events

    @property
    def nbytes(self) -> int:
        return self.info.tally.bytes

    @property
    def first_event_at(self) -> float | None:  # loop time
        return self.info.tally.first_event_at

    @property
    def last_event_at(self) -> float | None:
        return self.info.tally.last_event_at

    def watch(self, on: bool) -> None:
        """Join (or leave) the exchange's writers, as pages open and close."""
        writers = self.info.writers
        if on and self not in writers:
            writers.append(self)
        elif not on and self in writers:
            writers.remove(self)

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        if frames and self.inspector.subscribers:  # the tally counted them already
            self.inspector.frames(self, chunk, at, self.events - frames)

    def end(self, record: RequestRecord) -> None:
        self.inspector.ended_stream(self, record)

    def fields(self, now: float) -> dict[str, Any]:
        """The stream as the JSON listing and the feed give it (SPEC "Inspector"); times in ms since
        the epoch where they are instants."""
        info, redact = self.info, self.inspector.redactor
        started = self.info.started

        def wall_ms(t: float | None) -> float | None:
            return None if t is None else round((t + self.wall) * 1000, 1)

        return {
            "id": info.id, "route": info.route, "method": info.method, "path": visible(redact(info.path), 2048),
            "client": info.client, "started": wall_ms(started),
            "age_s": round((self.ended_at if self.ended_at is not None else now) - started, 3),
            "events": self.events, "bytes": self.nbytes,
            "ttfe_ms": None if self.first_event_at is None else round((self.first_event_at - started) * 1000, 1),
            "last_event_at": wall_ms(self.last_event_at),
            "since_last_event_s": None if self.last_event_at is None or self.ended_at is not None
            else round(now - self.last_event_at, 3),
            "status": self.status, "kind": self.kind.value if self.kind is not None else None,
            "outcome": self.outcome, "error_type": self.error_type, "ended": wall_ms(self.ended_at),
        }


class Inspector:
    """The hook factory and the feed's hub. ``redactor`` gets every snapshot's secrets (the runtime
    adds them), so no secret reaches the page, whichever config a stream started on."""

    def __init__(self, redactor: Redactor | None = None, *, ended: int = ENDED, queue: int = QUEUE,
                 max_subscribers: int = SUBSCRIBERS):
        self.redactor = redactor if redactor is not None else Redactor()
        self.active: dict[int, StreamView] = {}
        self.ended: deque[StreamView] = deque(maxlen=ended)
        self.subscribers: list[Subscriber] = []
        self.queue = queue
        self.max_subscribers = max_subscribers
        self.closed = False
        self.pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None

    # the hook factory -------------------------------------------------------------------------
    def open(self, info: ExchangeInfo) -> StreamView:
        now = info.started  # the exchange began a moment ago, on the loop's clock
        view = StreamView(self, info, wall=time.time() - now)
        self.active[info.id] = view
        if self.subscribers:
            self._publish("start", view.fields(now))
        return view

    def headed(self, view: StreamView) -> None:
        """The response head went out: a stream goes on being shown, anything else leaves the list."""
        if view.kind is StreamKind.NONE:
            self.active.pop(view.info.id, None)
            if self.subscribers:
                self._publish("drop", {"id": view.info.id})
        elif self.subscribers:
            self._publish("head", view.fields(self._now()))

    def frames(self, view: StreamView, chunk: bytes, at: float, before: int) -> None:
        """A preview per whole event in ``chunk``, for the subscribers (only called when there are)."""
        try:
            sse = view.kind is StreamKind.SSE
            pieces = split_frames(chunk, sse)
            n = before
            for piece in pieces:
                if not piece.strip(b"\r\n"):
                    continue
                name, payload = parse_event(piece) if sse else ("line", piece)
                n += 1
                # redacted before it is cut, so no secret is left half shown at the cut
                preview = self.redactor(payload[:SCAN].decode("utf-8", "replace"))
                self._publish("frame", {
                    "id": view.info.id, "n": min(n, view.events), "t": round((at + view.wall) * 1000, 1),
                    "name": visible(self.redactor(name), NAME), "size": len(piece),
                    "data": visible(preview, PREVIEW), "events": view.events, "bytes": view.nbytes,
                    "ttfe_ms": None if view.first_event_at is None
                    else round((view.first_event_at - view.info.started) * 1000, 1)})
        except Exception:  # the inspector must never take a relayed stream down with it
            log.exception("the inspector failed to preview an event")

    def ended_stream(self, view: StreamView, record: RequestRecord) -> None:
        if self.active.pop(view.info.id, None) is None:
            return  # not a stream (dropped at its head)
        view.ended_at = self._now()
        view.outcome, view.error_type = record.outcome.value, record.error_type
        if view.status is None and record.status:
            view.status = record.status
        self.ended.appendleft(view)
        if self.subscribers:
            self._publish("end", view.fields(view.ended_at))

    # the feed ---------------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        """``{"active": [...], "ended": [...]}``, newest first, with the server's clock and pid."""
        now = self._now()
        return {"now": round(time.time() * 1000, 1), "pid": self.pid,
                "active": [v.fields(now) for v in sorted(self.active.values(), key=lambda v: -v.info.id)],
                "ended": [v.fields(now) for v in self.ended]}

    def subscribe(self) -> Subscriber | None:
        """A new feed, or ``None`` when ``max_subscribers`` are open (or the proxy is stopping)."""
        if self.closed or len(self.subscribers) >= self.max_subscribers:
            return None
        subscriber = Subscriber(self.queue)
        self.subscribers.append(subscriber)
        if len(self.subscribers) == 1:
            self._watch(True)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
            if not self.subscribers:
                self._watch(False)

    def close(self) -> None:
        """Shutdown: every feed ends cleanly, and no new one opens."""
        self.closed = True
        for subscriber in self.subscribers:
            subscriber.close()

    def _watch(self, on: bool) -> None:
        """The first page opened (or the last closed): the streams in flight start (or stop) showing
        the inspector their writes."""
        for view in self.active.values():
            view.watch(on)

    def _publish(self, kind: str, payload: dict[str, Any]) -> None:
        item = feed_item(kind, payload)  # serialised once, whatever the number of subscribers
        for subscriber in self.subscribers:
            subscriber.put(item)

    def _now(self) -> float:
        loop = self._loop
        if loop is None:  # asked once: each get_running_loop() is a getpid() syscall
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()


def feed_item(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
