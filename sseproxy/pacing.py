"""Fairness between the streams opening and the streams already open.

Events are relayed in the loop's I/O callbacks, between the loop's turns; a request is answered in
its handler's task. When 200 clients arrive in one read of the loop, their handlers all stepped in
the same turn (routing, hooks, the connect upstream: about 100 µs each), and the events of the
streams already open waited up to 20 ms for the loop to poll again (the 200-stream p99 was 18 ms
against nginx's 0.12). A ``Pacer`` lets at most ``per_turn`` requests begin in a turn; the others
wait for a later one, in order, and the loop polls for events in between (that p99: 0.25-1.2 ms,
with nginx's 0.09-1.0 in the same runs). nginx's ``multi_accept off`` serves the same end.

A stream's first event waits for its response's set-up, which waits for the turn it arrived in to
end: the fewer requests a turn begins, the sooner. Four rather than eight, over three interleaved
runs each: the 200-stream p99 0.67-1.47 ms against 0.31-2.98 (medians 0.75 and 1.44), the
1,000-stream p99 1.24-1.73 against 1.41-1.72, with time to first event and CPU the same within the
runs' spread. Fewer still would cap how fast requests begin when turns are long.
"""

from __future__ import annotations

import asyncio
from collections import deque

PER_TURN = 4  # requests begun in one turn of the loop (each about 100 µs to its connect upstream)


class Pacer:
    """Counts the requests begun in this turn of the loop and holds the ones past ``per_turn``."""

    def __init__(self, per_turn: int = PER_TURN):
        self.per_turn = per_turn
        self._left = per_turn
        self._held: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    @property
    def waiting(self) -> int:
        """Requests held for a later turn (those whose client left included, until their turn)."""
        return len(self._held)

    def turn(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """``None``: go on now. Otherwise a future to await, done in a later turn, in order."""
        if self._left > 0 and not self._held:
            self._left -= 1
            self._schedule(loop)
            return None
        held = loop.create_future()
        self._held.append(held)
        self._schedule(loop)
        return held

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._next_turn, loop)  # after the loop next polls for I/O

    def _next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        self._left = self.per_turn
        while self._held and self._left > 0:
            held = self._held.popleft()
            if held.done():  # its request was cancelled while it waited (the client left)
                continue
            self._left -= 1
            held.set_result(None)  # its task steps in the next turn, after the loop polls again
        if self.per_turn and (self._held or self._left < self.per_turn):  # 0: all held (the tests hold one so)
            self._schedule(loop)
