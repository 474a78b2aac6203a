"""The stream plan: whether and how a response streams, decided once from its head.

A pure function of the upstream's status and headers and the route: the kind of stream, the decoder
and the response headers the client gets. Nothing further down decides any of these again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multidict import CIMultiDict

from . import cors
from .decoding import Decoder, decoder_for
from .framing import Framer, StreamKind, framer_for, stream_kind
from .headers import Headers, apply_rules, stream_response_headers, without_hop_by_hop
from .requestid import HEADER as REQUEST_ID
from .runtime import RouteRuntime

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # no header value may carry these (tab may)


@dataclass(slots=True, eq=False)  # one per response: not frozen (a frozen init is four times slower)
class StreamPlan:
    kind: StreamKind
    decoder: Decoder | None        # the upstream's coding, decoded to identity as it arrives
    headers: CIMultiDict[str]      # what the client gets

    @property
    def streams(self) -> bool:
        return self.kind is not StreamKind.NONE

    @property
    def sse(self) -> bool:
        return self.kind is StreamKind.SSE

    def framer(self) -> Framer | None:
        return framer_for(self.kind)


def plan_response(upstream_headers: Headers, route: RouteRuntime, origin: str | None, request_id: str) -> StreamPlan:
    kind = stream_kind(upstream_headers.get("Content-Type"), route.stream)
    decoder = None
    if kind is not StreamKind.NONE:
        coding = upstream_headers.get("Content-Encoding", "identity").strip().lower()
        if coding != "identity":
            decoder = decoder_for(coding)
            if decoder is None:
                kind = StreamKind.RAW  # a coding the proxy cannot decode: relayed as it comes, never reframed
    headers = without_hop_by_hop(upstream_headers)
    if _CONTROL.search("\t".join(headers.values())):  # one search for all (tab is allowed): then which one
        name = next(name for name, value in headers.items() if _CONTROL.search(value))
        raise ValueError(f"header {name} has a control character")
    if "Location" in headers or "Content-Location" in headers:
        for name in ("Location", "Content-Location"):
            if name in headers:
                headers[name] = route.rewrite_location(headers[name])
    if kind is not StreamKind.NONE:
        stream_response_headers(headers, decoded=decoder is not None)
    headers[REQUEST_ID] = request_id  # the client can quote it; response_headers rules may still remove it
    apply_rules(headers, route.response_rules)
    if route.cors is not None:
        cors.decorate(route.cors, origin, headers)
    return StreamPlan(kind, decoder, headers)
