"""``sseproxy replay DIR``: recordings served back as an upstream, with their timing.

A real server, like ``serve``: the same ready line, ``--listen``, an access-log line per request,
``--tap``, ``/_sseproxy/health``, and a graceful stop on SIGTERM or SIGINT. Each request is matched
to a recording (``replay_match``); the recorded status and headers are sent ``ttfb_ms / speed``
after the request arrived, and each frame, as its own write, ``t / speed`` ms after it (``speed``
0: all at once). A recording that ended in an error ends the same way: a truncated close, without
the final chunk. A client hang-up cancels the handler and so stops that replay.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict
from pydantic import TypeAdapter, ValidationError

from .accesslog import AccessLog, RequestRecord
from .config_fields import UpstreamUrl
from .errors import BodyTooLarge, Outcome, ProxyError
from .framing import StreamKind, stream_kind
from .headers import without_hop_by_hop
from .recorder import Recorder
from .recording import Recording, load_dir
from .replay_fallback import Fallback, set_outcome
from .replay_match import Index
from .service import ready_line
from .tap import Tap

log = logging.getLogger("sseproxy")

MAX_BODY = 32 * 1024 * 1024  # bounds the request body held to match it (the proxy's max_body default)
SHUTDOWN_GRACE = 5.0         # seconds replays in flight get to finish after SIGTERM
HEALTH = "/_sseproxy/health"


@dataclass(frozen=True)
class ReplayOptions:
    directory: Path
    speed: float = 1.0
    ignore_fields: tuple[str, ...] = ()
    fallback: str | None = None          # a base URL that misses go to
    record: Path | None = None           # with ``fallback``: where those exchanges are recorded
    tap: bool = False
    access_log: bool = True
    grace: float = SHUTDOWN_GRACE


def error_response(status: int, error: dict[str, object]) -> web.Response:
    return web.Response(status=status, content_type="application/json", text=json.dumps({"error": error}))


async def read_body(request: web.BaseRequest, limit: int = MAX_BODY) -> bytes:
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"request body is over {limit} bytes")
    return bytes(body)


@dataclass
class ReplayState:
    draining: bool = False
    stream_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class ReplayHandler:
    def __init__(self, index: Index, options: ReplayOptions, fallback: Fallback | None, access_log: AccessLog,
                 tap: Tap | None = None):
        self.index = index
        self.options = options
        self.fallback = fallback
        self.access_log = access_log
        self.tap = tap
        self.state = ReplayState()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        path, _, query = request.raw_path.partition("?")
        record = RequestRecord(method=request.method, path=path, started=loop.time(), client=request.remote)
        try:
            if path == HEALTH:
                record.route = "admin"
                draining = self.state.draining
                response = web.json_response({"status": "draining" if draining else "ok"},
                                             status=503 if draining else 200)
                record.status = response.status
                return response
            body = await read_body(request)
            key = self.index.key(request.method, path, query, body)
            match = self.index.next(key)
            if match is not None:
                record.route = match[0]
                return await self._play(request, match[0], match[1], record)
            if self.fallback is not None:
                record.route = "fallback"
                return await self.fallback.forward(request, body, record)
            miss = self.index.miss(key, request.method, path, query, body)
            set_outcome(record, Outcome.REFUSED)
            record.status, record.error, record.error_type = 404, miss.message, "no_recording"
            return error_response(404, {"type": "no_recording", "message": miss.message, "nearest": miss.nearest})
        except ProxyError as error:
            set_outcome(record, error.outcome)
            record.status, record.error, record.error_type = error.status, error.message, error.type
            return error_response(error.status, {"type": error.type, "message": error.message})
        except asyncio.CancelledError:
            set_outcome(record, Outcome.CLIENT_CLOSED)
            raise
        finally:
            record.total = loop.time() - record.started
            self.access_log.write(record)

    async def _until(self, ms: float, started: float) -> None:
        """Sleep until ``ms / speed`` after ``started``; at once with speed 0 or a time gone by."""
        if self.options.speed <= 0:
            return
        delay = started + ms / 1000 / self.options.speed - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _play(self, request: web.BaseRequest, name: str, recording: Recording,
                    record: RequestRecord) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        resp = recording.response
        headers = without_hop_by_hop(CIMultiDict(resp.headers))
        headers.popall("Content-Length", None)  # aiohttp sets it for a whole body; a stream has none
        headers.popall("Date", None)  # today's, not the recording's: a stale Date misleads caches
        await self._until(resp.ttfb_ms, record.started)
        record.status, record.ttfb = resp.status, loop.time() - record.started
        if resp.frames is None and resp.end == "ok":
            return web.Response(status=resp.status, headers=headers, body=resp.body)
        if resp.frames is not None and "Content-Type" not in headers:
            headers["Content-Type"] = "text/event-stream"  # a hand-written stream that did not say
        response = web.StreamResponse(status=resp.status, headers=headers)
        await response.prepare(request)
        frames = resp.frames if resp.frames is not None else ()
        tap = self._tapper(name, headers.get("Content-Type"))
        try:
            if resp.body:
                await response.write(resp.body)
            for frame in frames:
                await self._until(frame.t, record.started)
                if not frame.data:
                    continue
                await response.write(frame.data)
                record.bytes += len(frame.data)
                record.events += 1
                if record.ttfe is None:
                    record.ttfe = loop.time() - record.started
                if tap is not None:
                    tap(frame.data)
        except ConnectionError:
            set_outcome(record, Outcome.CLIENT_CLOSED)
            return response
        if resp.end == "error":
            set_outcome(record, Outcome.UPSTREAM_ERROR)
            record.error, record.error_type = "the recording ended in an error: replayed as a truncated close", \
                "upstream_error"
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _tapper(self, name: str, content_type: str | None) -> Callable[[bytes], None] | None:
        tap = self.tap
        kind = stream_kind(content_type, "auto")
        if tap is None or kind not in (StreamKind.SSE, StreamKind.LINES):
            return None
        stream_id = next(self.state.stream_ids)
        return lambda data: tap.frames(name, stream_id, data, sse=kind is StreamKind.SSE)


class ReplayServer:
    """The replay server on one address: ``start``, then ``stop`` gracefully within ``grace``."""

    def __init__(self, options: ReplayOptions, index: Index | None = None, *, access_log: AccessLog | None = None,
                 tap: Tap | None = None):
        self.options = options
        self.index = index if index is not None else load_index(options)
        fallback = None
        if options.fallback is not None:
            recorder = None
            if options.record is not None:
                same_dir = _same_dir(options.record, options.directory)
                recorder = Recorder(options.record, on_saved=self._recorded if same_dir else None)
            fallback = Fallback(options.fallback, recorder)
        self.fallback = fallback
        self.handler = ReplayHandler(self.index, options, fallback, access_log or AccessLog(enabled=options.access_log),
                                     tap)
        self.server = web.Server(self.handler, handler_cancellation=True, access_log=None)
        self.runner = web.ServerRunner(self.server, handle_signals=False, shutdown_timeout=options.grace)

    def _recorded(self, path: Path, recording: Recording) -> None:
        """``--record`` into the replayed directory: the next identical request replays it."""
        self.index.add(path.name, recording)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        address = self.runner.addresses[-1]
        return str(address[0]), int(address[1])

    async def stop(self) -> None:
        """Stop accepting, let replays in flight finish for up to ``grace``, then end them."""
        self.handler.state.draining = True
        await self.runner.cleanup()
        if self.fallback is not None:
            await self.fallback.close()


def check_fallback(url: str) -> str | None:
    """What is wrong with a ``--fallback`` URL, or ``None``: an http(s) base URL, as a route's upstream."""
    try:
        TypeAdapter(UpstreamUrl).validate_python(url)
    except ValidationError as e:
        return str(e.errors()[0]["msg"]).removeprefix("Value error, ")
    return None


def load_index(options: ReplayOptions) -> Index:
    """The recordings of ``options.directory``; raises ``ConfigError`` naming each bad file. A
    directory that does not exist yet is empty when ``--record`` fills it (the first run)."""
    recording_into_it = options.record is not None and _same_dir(options.record, options.directory)
    if recording_into_it and not options.directory.exists():
        return Index((), options.ignore_fields)
    return Index(load_dir(options.directory), options.ignore_fields)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


async def run(options: ReplayOptions, host: str, port: int, announce: Callable[[str], None],
              index: Index | None = None) -> None:
    """Serve until SIGTERM or SIGINT. Raises ``ConfigError`` for a directory that cannot be replayed
    (before listening), ``OSError`` when the address cannot be bound."""
    server = ReplayServer(options, index, tap=Tap() if options.tap else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    bound = await server.start(host, port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    index = server.index
    announce(f"replaying {len(index)} recording{'s' if len(index) != 1 else ''} of {index.requests} "
             f"request{'s' if index.requests != 1 else ''} from {options.directory} at speed {options.speed:g}"
             + (f", misses go to {options.fallback}" if options.fallback else ""))
    announce(ready_line(bound[0], bound[1], 1))
    try:
        await stop.wait()
        log.info("stopping: letting replays in flight finish for up to %gs", options.grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
