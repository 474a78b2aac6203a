"""The streams in flight, so that shutdown can wait for them, then end the rest, and so that
features (the inspector) can list them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger("sseproxy")

STOP_WAIT = 5.0  # how long stopped streams get to write their shutdown event and close


class Stoppable(Protocol):
    def stop(self) -> None:
        """End this stream for shutdown: it writes its ``shutdown`` event and closes."""


class Registry:
    def __init__(self) -> None:
        self._items: set[Stoppable] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Stoppable]:
        return iter(list(self._items))

    def add(self, item: Stoppable) -> None:
        self._items.add(item)
        self._idle.clear()

    def discard(self, item: Stoppable) -> None:
        self._items.discard(item)
        if not self._items:
            self._idle.set()

    async def drain(self, grace: float, stop_wait: float = STOP_WAIT) -> int:
        """Wait up to ``grace`` for streams to end; stop the rest and give them ``stop_wait`` to
        close. Returns how many were stopped. Never raises: shutdown must go on to close the
        server and the pools whatever a stream does."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return 0
        except TimeoutError:
            pass
        stopped = list(self._items)
        for item in stopped:
            item.stop()
        try:
            await asyncio.wait_for(self._idle.wait(), stop_wait)
        except TimeoutError:
            log.warning("%d stream(s) did not close within %gs of being stopped", len(self._items), stop_wait)
        return len(stopped)
