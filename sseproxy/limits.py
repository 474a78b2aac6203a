"""Concurrent-stream limits, sans io: a count per key, a lease per stream.

A route with ``limits: {concurrent_streams: N, per: token|client|route}`` lets N streams run at once
for each inbound token, client address, or for the route as a whole. A stream takes a ``Lease``
before it goes upstream and gives it back when it ends, however it ends (normal end, upstream
error, client hang-up, shutdown, the detached time of a resumed stream): ``release`` is idempotent,
so every ending path may call it. The answer over the limit is 429 ``too_many_streams`` with
``Retry-After: 1``: a stream slot frees whenever any stream ends, which is not predictable, so the
client is told to try again soon rather than given a made-up figure.

Counts live in this process. ``StreamCounts`` is meant to be owned by the app, not by a config
snapshot, so that a reload (which compiles new ``ConcurrencyLimits``) keeps counting the streams
that started before it. Each replica (and each ``--workers`` process) counts alone.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from .config_sections import Limits
from .errors import TooManyStreams

Per = Literal["token", "client", "route"]
RETRY_AFTER = 1  # seconds suggested to a client over the limit (see the module docstring)


class StreamCounts:
    """Streams running now, by key. Keys with no stream are dropped, so memory follows the
    streams in flight, not every client or token ever seen."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def get(self, key: tuple[str, str]) -> int:
        return self._counts.get(key, 0)

    def _take(self, key: tuple[str, str], limit: int) -> bool:
        count = self._counts.get(key, 0)
        if limit and count >= limit:
            return False
        self._counts[key] = count + 1
        return True

    def _give_back(self, key: tuple[str, str]) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


class Lease:
    """One stream's slot. ``release`` gives it back once; later calls do nothing."""

    __slots__ = ("_counts", "_released", "key")

    def __init__(self, counts: StreamCounts, key: tuple[str, str]):
        self._counts = counts
        self.key = key
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._counts._give_back(self.key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def token_key(token: str) -> str:
    """A key for an inbound token that is not the token itself, so no structure holds the secret."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class ConcurrencyLimits:
    """One route's limit: ``max`` streams at once per key (0: no limit), keyed as ``per`` says.

    ``scope`` (the route's label) keeps routes apart when they share one ``StreamCounts``.
    """

    def __init__(self, max: int, per: Per, *, scope: str = "", counts: StreamCounts | None = None):
        if max < 0:
            raise ValueError(f"max must be 0 (no limit) or more, not {max}")
        self.max = max
        self.per: Per = per
        self.scope = scope
        self.counts = counts if counts is not None else StreamCounts()

    @classmethod
    def from_config(cls, limits: Limits | None, *, scope: str = "",
                    counts: StreamCounts | None = None) -> ConcurrencyLimits | None:
        """The route's compiled limit, or ``None`` where nothing limits it (no setting, or 0)."""
        if limits is None or limits.concurrent_streams == 0:
            return None
        return cls(limits.concurrent_streams, limits.per, scope=scope, counts=counts)

    def key_for(self, *, token: str | None, client: str | None) -> str:
        """What a request counts under: its inbound token (hashed), its address, or the route.

        A request without one (no token, no known address) counts with every other such request.
        """
        if self.per == "token":
            return token_key(token) if token is not None else "-"
        if self.per == "client":
            return client or "-"
        return ""

    def acquire(self, key: str) -> Lease | None:
        """A lease on one of ``key``'s slots, or ``None`` when all of them are taken."""
        full_key = (self.scope, key)
        return Lease(self.counts, full_key) if self.counts._take(full_key, self.max) else None

    def active(self, key: str) -> int:
        return self.counts.get((self.scope, key))

    def refusal(self, route: str | None = None) -> TooManyStreams:
        """The 429 to answer when ``acquire`` said no."""
        whom = {"token": "per inbound token", "client": "per client", "route": "on this route"}[self.per]
        return TooManyStreams(f"at most {self.max} concurrent streams {whom}; try again shortly",
                              route=route, headers={"Retry-After": str(RETRY_AFTER)})
