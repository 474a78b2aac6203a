"""Retry before the first byte, sans io: the policy that decides, and a request body that can be resent.

A retry is safe only while nothing has reached the client: the upstream answered one of the
route's ``retry.on`` statuses, and the proxy has not started its own response. The policy takes
numbers (the attempt, the status, the ``Retry-After`` value and the wall-clock time it is read
against) and returns a delay or ``None``; the caller owns the clock and the sleeping.

Each attempt goes to the next upstream of the route first (round robin), so an overloaded
provider is failed over from where there is another. After the last attempt, the last upstream
response is relayed as it came.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .config_sections import Retry


@dataclass(frozen=True)
class RetryPolicy:
    statuses: frozenset[int] = frozenset()
    attempts: int = 1          # tries in all; 1 is no retry
    backoff: float = 0.25      # seconds before the second attempt, doubled for each one after
    max_backoff: float = 5.0   # the longest wait, and the longest Retry-After honoured
    max_body: int = 0          # request bodies up to this many bytes are kept to resend

    @classmethod
    def from_config(cls, retry: Retry | None) -> RetryPolicy:
        if retry is None:
            return NO_RETRY
        return cls(frozenset(retry.on), retry.attempts, retry.backoff, retry.max_backoff, retry.max_body)

    @property
    def enabled(self) -> bool:
        return self.attempts > 1 and bool(self.statuses)

    def next_delay(self, attempt: int, status: int, retry_after: str | None = None,
                   now: float = 0.0) -> float | None:
        """Seconds to wait before trying again after ``attempt`` (1 for the first) answered ``status``,
        or ``None`` to relay this answer as it is.

        The wait is ``backoff`` doubled for each attempt made, up to ``max_backoff``. The upstream's
        ``Retry-After`` (seconds, or an HTTP date read against ``now``, the wall-clock time) replaces
        it when it is within ``max_backoff``; a longer one is not waited for, as the OpenAI SDK and
        Envoy do, since the next attempt usually goes to another upstream anyway.
        """
        if attempt >= self.attempts or status not in self.statuses:
            return None
        asked = parse_retry_after(retry_after, now)
        if asked is not None and asked <= self.max_backoff:
            return asked
        return min(self.backoff * 2.0 ** min(attempt - 1, 64), self.max_backoff)  # 2**64: no float overflow


NO_RETRY = RetryPolicy()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds from now: delay-seconds or an HTTP date; ``None`` when absent or
    unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form, or "-0000": HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


class NotReplayable(RuntimeError):
    """The body cannot be sent again: it outgrew ``max_body``, or the last attempt is still reading it."""


class ReplayableBody:
    """A request body streamed to the first upstream as it arrives, kept on the way (up to
    ``max_body``) so that a retry can send it again, and never buffered before the first attempt.

    An upstream may answer before it has read the whole body; a replay then sends the kept chunks
    and goes on reading the rest from the client, keeping it too. Once the body outgrows
    ``max_body`` (or its declared ``length`` says it will) nothing more is kept, what was kept is
    dropped, and ``replayable`` is false: that attempt still gets the whole body, a later one none.

    The caller must end an attempt's request (cancel its body writer) before it replays: two
    readers of one client body would interleave it. ``replay`` refuses while a read is in flight,
    and a superseded attempt's iterator stops at its next step.
    """

    def __init__(self, source: AsyncIterator[bytes], max_body: int, length: int | None = None):
        self._source = source
        self.max_body = max_body  # bounds the memory a kept body may take
        self.replayable = length is None or length <= max_body
        self._kept: list[bytes] = []
        self._size = 0
        self._done = False     # the client's body has been read to its end
        self._reading = False  # a read from the client is in flight
        self._generation = 0   # the attempt whose iterator may read; earlier ones stop
        self._started = False

    @property
    def complete(self) -> bool:
        """The client's whole body has been read (and, while ``replayable``, kept)."""
        return self._done

    @property
    def kept(self) -> int:
        """Bytes kept to resend."""
        return self._size

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The first attempt's body."""
        if self._started:
            raise NotReplayable("the body is already being sent; use replay() for a later attempt")
        self._started = True
        return self._attempt(self._generation)

    def replay(self) -> AsyncIterator[bytes]:
        """The body again, for a later attempt."""
        if not self.replayable:
            raise NotReplayable(f"the request body is over retry.max_body ({self.max_body} bytes)")
        if self._reading:
            raise NotReplayable("the previous attempt is still reading the request body")
        self._started = True
        self._generation += 1
        return self._attempt(self._generation)

    async def _attempt(self, generation: int) -> AsyncIterator[bytes]:
        sent = 0  # kept chunks this attempt has sent
        while generation == self._generation:
            if sent < len(self._kept):
                sent += 1
                yield self._kept[sent - 1]
                continue
            if self._done:
                return
            self._reading = True
            try:
                chunk = await anext(self._source, None)
            finally:
                self._reading = False
            if chunk is None:
                self._done = True
                return
            if self.replayable and self._size + len(chunk) <= self.max_body:
                self._kept.append(chunk)
                self._size += len(chunk)
                sent += 1
            elif self.replayable:  # outgrown: stop keeping and free what was kept
                self.replayable = False
                self._kept.clear()
                self._size = sent = 0
            yield chunk
