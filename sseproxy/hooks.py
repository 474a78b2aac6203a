"""Exchange hooks: what features (tap, recording, the inspector, resume, usage) see of a request.

A feature never adds a branch to the relay loop. It gives a ``HookFactory``; for each exchange the
factory may open a ``Hook`` (or return ``None`` to stay out of it), and the relay calls the hooks it
holds as the exchange goes: the request body as it streams upstream, the response head as sent to
the client, every piece of body written to the client with the time it left, and the end. A
request whose factories all return ``None`` pays one empty-tuple check per write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from .framing import StreamKind

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


def split_upstream(hooks: tuple[Hook, ...]) -> tuple[tuple[Hook, ...], tuple[Hook, ...]]:
    """The hooks that meter what the upstream sent (usage: a class with ``meters_upstream = True``)
    and the others, which see what a client was written. On a resumable stream the two differ:
    several clients may follow it, and a resume replays what was sent before; the meters are fed
    each event of the upstream once, by the stream's producer, whichever clients follow."""
    meters: list[Hook] = []
    others: list[Hook] = []
    for hook in hooks:
        (meters if getattr(hook, "meters_upstream", False) is True else others).append(hook)
    return tuple(meters), tuple(others)


def open_hooks(factories: Sequence[HookFactory], info: ExchangeInfo) -> tuple[Hook, ...]:
    return tuple([h for f in factories if (h := f.open(info)) is not None])  # a list first: no generator
