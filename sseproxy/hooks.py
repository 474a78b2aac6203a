"""Exchange hooks: what features (tap, recording, the inspector, resume, usage) see of a request.

A feature never adds a branch to the relay loop. It gives a ``HookFactory``; for each exchange the
factory may open a ``Hook`` (or return ``None`` to stay out of it), and the relay calls the hooks it
holds as the exchange goes: the request body as it streams upstream, the response head as sent to
the client, every piece of body written to the client with the time it left, and the end.

Only the exchange's ``writers`` are told of each write: the hooks that must see the bytes. A hook
that only counts (``sees_writes = False``: the metrics, the inspector with no page open) reads the
exchange's ``Tally`` instead, which the relay keeps as it writes. A request with no writers pays
one empty-list check per write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from .framing import StreamKind
from .tally import Tally

if TYPE_CHECKING:
    from .accesslog import RequestRecord


@dataclass(eq=False, slots=True)  # not frozen: a frozen init sets each field through object.__setattr__
class ExchangeInfo:
    """What a hook may know of the request when it is opened (after the route matched); read-only
    by convention."""

    id: int                                  # unique within this process, in arrival order
    route: str                               # the route's label
    method: str
    path: str                                # raw path, exactly as forwarded to the route
    query: str                               # raw query, without "?"
    client: str | None                       # the client's address
    headers: CIMultiDictProxy[str]           # the request headers as the client sent them
    started: float                           # loop.time() when the request arrived
    request_id: str = ""                     # X-Request-Id: the client's, or one the proxy made
    tally: Tally = field(default_factory=Tally)  # what the client was written, counted as it goes
    # the hooks told of each write; a hook may join or leave while the exchange runs (the inspector's
    # views do as pages open and close)
    writers: list[Hook] = field(default_factory=list)


class Hook(Protocol):
    """One feature's view of one exchange. Calls never raise into the relay and never block."""

    def request_body(self, chunk: bytes) -> None:
        """A piece of the request body, as it is sent upstream."""

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        """The response head as it goes to the client (after header rules and CORS)."""

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        """Body bytes just written to the client at ``at`` (loop time): whole frames for an event
        or line stream, pieces as they arrived otherwise; ``frames`` says how many whole frames
        (events or lines) ``chunk`` holds, as the writer counted them, so no hook counts again.
        Heartbeats and the proxy's own error event are not data."""

    def end(self, record: RequestRecord) -> None:
        """The exchange ended; ``record.outcome`` says how."""


class HookFactory(Protocol):
    def open(self, info: ExchangeInfo) -> Hook | None:
        """A hook for this exchange, or ``None`` when the feature does not apply to it."""


def split_upstream(writers: list[Hook]) -> tuple[Hook, ...]:
    """Take the writers that meter what the upstream sent (usage: a class with ``meters_upstream =
    True``) out of ``writers``, which keeps those that see what a client was written. On a resumable
    stream the two differ: several clients may follow it, and a resume replays what was sent before;
    the meters are fed each event of the upstream once, by the stream's producer, whichever clients
    follow."""
    meters = tuple([hook for hook in writers if getattr(hook, "meters_upstream", False) is True])
    writers[:] = [hook for hook in writers if hook not in meters]
    return meters


def open_hooks(factories: Sequence[HookFactory], info: ExchangeInfo) -> tuple[Hook, ...]:
    """The exchange's hooks; those that see writes (all but the ones that say ``sees_writes = False``)
    become ``info.writers`` too."""
    hooks = tuple([h for f in factories if (h := f.open(info)) is not None])  # a list first: no generator
    info.writers[:] = [h for h in hooks if getattr(h, "sees_writes", True)]
    return hooks
