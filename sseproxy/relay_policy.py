"""What the relay does when time passes or the stream ends: a sans-io state machine.

The relay that owns the sockets tells it when bytes were read and written and asks it, at the
deadline it names, what to do (a heartbeat, an idle timeout, nothing); at the end it asks how to
end (error frame, truncated close, release or close the upstream connection). Tested with explicit
times and no sockets.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from .errors import Outcome, ProxyError

HEARTBEAT = b": keep-alive\n\n"


class Tick(enum.Enum):
    NOTHING = "nothing"
    HEARTBEAT = "heartbeat"     # write ``HEARTBEAT``: the client has been between events, silent, for `heartbeat`
    IDLE = "idle"               # the upstream has been silent for `idle`: fail the stream


@dataclass(slots=True)
class RelayPolicy:
    heartbeat: float        # seconds of silence toward the client before a heartbeat; 0: never
    idle: float             # seconds of upstream silence before the stream fails; 0: never
    last_read: float
    last_write: float

    def read(self, now: float) -> None:
        self.last_read = now

    def wrote(self, now: float) -> None:
        self.last_write = now

    def deadline(self) -> float | None:
        """When ``tick`` next has something to do; ``None``: never."""
        times = []
        if self.heartbeat > 0:
            times.append(self.last_write + self.heartbeat)
        if self.idle > 0:
            times.append(self.last_read + self.idle)
        return min(times) if times else None

    def tick(self, now: float, between_frames: bool) -> Tick:
        if self.idle > 0 and now >= self.last_read + self.idle:
            return Tick.IDLE
        if self.heartbeat > 0 and now >= self.last_write + self.heartbeat:
            if between_frames:
                return Tick.HEARTBEAT
            self.last_write = now  # mid-frame (an oversized event passing): never cut it, ask again later
        return Tick.NOTHING


def error_frame(error_type: str, message: str) -> bytes:
    data = json.dumps({"error": {"type": error_type, "message": message}})
    return f"event: error\ndata: {data}\n\n".encode()


@dataclass(slots=True)  # one per stream: not frozen (a frozen init is four times slower); never changed
class Ending:
    outcome: Outcome
    error_frame: bytes | None   # written first (event streams, between events only)
    truncate: bool              # close the client connection without the final chunk
    release: bool               # the upstream connection may go back to the pool (else it is closed)


def ending(failure: ProxyError | None, *, client_left: bool, sse: bool, between_frames: bool,
           body_sent: bool = True) -> Ending:
    """How a relay ends: cleanly; because the client left; or because of ``failure`` (the upstream
    broke, went idle, or shutdown ended it), which an event stream is told of before a truncated
    close, so that no client mistakes a cut-off answer for a complete one. A connection is only
    released when its response ended after the request body was sent in full: one that answered
    first carries a body it never read, which must not reach it as the next request."""
    if client_left:
        return Ending(Outcome.CLIENT_CLOSED, None, truncate=False, release=False)
    if failure is None:
        return Ending(Outcome.OK, None, truncate=False, release=body_sent)
    frame = error_frame(failure.type, failure.message) if sse and between_frames else None
    return Ending(failure.outcome, frame, truncate=True, release=False)
