"""What one client was written, counted by the relay that writes it.

The metrics and the inspector read a stream's ``Tally`` when they need it (a scrape, a sweep once a
second, the page's listing, the end) instead of being told of each write: on the path every event
takes, a hook's call costs about as much as the relay's own work, and these two only count.
Features that must see the bytes (tap, recording, usage, the inspector's live previews) are the
exchange's ``writers`` (``hooks.py``).
"""

from __future__ import annotations

from bisect import bisect_left

# the buckets of the gaps between writes (``sseproxy_event_gap_seconds``), counted per stream here
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Tally:
    """Body bytes written to the client (heartbeats and the proxy's error event are not), the whole
    frames they held, when the first and last of those left, and the gaps between writes, bucketed
    as ``GAP_BUCKETS`` (not cumulative; the metrics take them, ``take_gaps``). The buckets are made
    at the second write: an idle stream, or a one-piece answer, holds none (memory per idle stream)."""

    __slots__ = ("bytes", "events", "first_event_at", "gap_total", "gaps", "last_event_at", "last_write_at")

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self.first_event_at: float | None = None  # loop time
        self.last_event_at: float | None = None
        self.last_write_at: float | None = None
        self.gaps: list[int] | None = None
        self.gap_total = 0.0

    def wrote(self, size: int, at: float, frames: int) -> None:
        """``size`` body bytes holding ``frames`` whole frames left for the client at ``at``."""
        self.bytes += size
        if frames:
            self.events += frames
            self.last_event_at = at
            if self.first_event_at is None:
                self.first_event_at = at
        last, self.last_write_at = self.last_write_at, at
        if last is not None:
            gaps = self.gaps
            if gaps is None:
                gaps = self.gaps = [0] * (len(GAP_BUCKETS) + 1)
            gap = at - last
            gaps[bisect_left(GAP_BUCKETS, gap)] += 1  # a histogram's buckets: gap <= bound
            self.gap_total += gap

    def take_gaps(self) -> tuple[list[int], float] | None:
        """The gaps counted since the last take (``None`` if none), counted afresh from here."""
        gaps, total = self.gaps, self.gap_total
        self.gaps, self.gap_total = None, 0.0
        return None if gaps is None else (gaps, total)
