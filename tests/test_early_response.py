"""A response begun where the upstream's head arrives (proxy.ProxyHandler._start_early): in the upstream
connection's callback, not in the handler's task, so a stream's first event does not wait for that
task's turn. Seen from a hook: ``response()`` runs outside any task when the response began there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import pytest
from helpers import WAIT, Gate, Truncated, raw_request, raw_server, read_head, running_proxy
from upstreams import SSE_HEAD, chunk

from sseproxy.hooks import ExchangeInfo


class Watch:
    """A feature that notes, at each response head, whether a task (the handler's) was running."""

    def __init__(self, cancel_handler: bool = False) -> None:
        self.in_task: list[bool] = []
        self.cancel_handler = cancel_handler

    def open(self, info: ExchangeInfo) -> Watch:
        return self

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: object, kind: object) -> None:
        self.in_task.append(asyncio.current_task() is not None)
        if self.cancel_handler:  # what a client's hang-up at this moment does (LeanProtocol.connection_lost)
            for task in asyncio.all_tasks():
                if task.get_coro().__qualname__ == "LeanProtocol._answer":  # type: ignore[union-attr]
                    task.cancel()

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        pass

    def end(self, record: object) -> None:
        pass


Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def gated_upstream(gate: Gate, closed: asyncio.Event) -> Upstream:
    """Sends the head and a first event in one write, then what the gate releases; sets ``closed``
    when the proxy closes the connection."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: first\n\n"))
        with contextlib.suppress(ConnectionError):
            while (event := await gate.next()) is not None:
                writer.write(chunk(event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            while await reader.read(65536):  # bounded by the proxy: it closes or reuses the connection
                pass
        closed.set()

    return upstream


async def test_a_stream_begins_where_its_head_arrives_and_is_relayed_whole() -> None:
    gate, closed = Gate(), asyncio.Event()
    async with raw_server(gated_upstream(gate, closed)) as origin, \
            running_proxy({"routes": [{"upstream": origin}]}) as (proxy, runtime):
        watch = Watch()
        runtime.hooks = (*runtime.hooks, watch)
        resp = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})
        assert resp.status == 200
        assert await resp.next_event() == b"data: first\n\n"
        assert watch.in_task == [False]  # begun in the upstream's callback, not the handler's task
        gate.release(b"data: second\n\n")
        assert await resp.next_event() == b"data: second\n\n"
        gate.release(None)
        assert await resp.next_chunk() is None
        resp.close()


async def test_a_request_with_a_body_is_answered_from_the_handler() -> None:
    """While a request body may still be going upstream (and may turn out over max_body: 413), the
    handler decides the answer, as before."""
    gate, closed = Gate(), asyncio.Event()
    async with raw_server(gated_upstream(gate, closed)) as origin, \
            running_proxy({"routes": [{"upstream": origin}]}) as (proxy, runtime):
        watch = Watch()
        runtime.hooks = (*runtime.hooks, watch)
        resp = await raw_request(proxy, "POST", "/", {"Content-Length": "2"}, body=b"{}")
        assert resp.status == 200
        assert await resp.next_event() == b"data: first\n\n"
        assert watch.in_task == [True]
        gate.release(None)
        assert await resp.next_chunk() is None
        resp.close()


async def test_a_client_gone_before_the_handler_runs_its_begun_stream_closes_the_upstream(
        caplog: pytest.LogCaptureFixture) -> None:
    """The handler is cancelled (the client hung up) between the stream's start in the upstream's
    callback and the handler's next turn: the upstream is closed at once, the log says the client
    left, with the event it was sent, and the proxy goes on serving."""
    closed: list[asyncio.Event] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: first\n\n"))
        closed.append(asyncio.Event())
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), WAIT):  # until the proxy closes it
                pass
        closed[-1].set()

    async with raw_server(upstream) as origin, running_proxy({"routes": [{"upstream": origin}]}) as (proxy, runtime):
        watch = Watch(cancel_handler=True)
        runtime.hooks = (*runtime.hooks, watch)
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            resp = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})
            assert await resp.next_event() == b"data: first\n\n"  # it had begun: the first event went out
            with pytest.raises(Truncated):
                await resp.next_chunk()
            await asyncio.wait_for(closed[0].wait(), WAIT)  # no tokens generated for nobody
            for _ in range(100):  # bounded: until the request has ended and been logged
                if lines := [r.getMessage() for r in caplog.records if r.name == "sseproxy.access"]:
                    break
                await asyncio.sleep(0.02)
        assert watch.in_task == [False]
        assert lines and "outcome=client_closed" in lines[0] and "events=1 " in lines[0], lines
        watch.cancel_handler = False
        again = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})
        assert again.status == 200 and await again.next_event() == b"data: first\n\n"  # the proxy serves on
        again.close()
        await asyncio.wait_for(closed[1].wait(), WAIT)


class FailingOnFirstBody(Watch):
    def data(self, chunk: bytes, at: float, frames: int) -> None:
        raise RuntimeError("a defect in a feature")


async def test_a_hook_failing_on_the_body_that_came_with_the_head_ends_that_stream_only(
        caplog: pytest.LogCaptureFixture) -> None:
    """The first event, in the read that brought the head, is relayed as the stream begins: a hook
    that raises on it ends this stream with an error event (logged as the proxy's failure)."""
    closed = asyncio.Event()
    served = 0

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: first\n\n") + (b"0\r\n\r\n" if served > 1 else b""))
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), WAIT):  # until the proxy closes or reuses it
                pass
        closed.set()

    async with raw_server(upstream) as origin, running_proxy({"routes": [{"upstream": origin}]}) as (proxy, runtime):
        failing = FailingOnFirstBody()
        runtime.hooks = (*runtime.hooks, failing)
        with caplog.at_level(logging.ERROR, logger="sseproxy"):
            resp = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})
            assert resp.status == 200
            assert await resp.next_event() == b"data: first\n\n"  # written before the hooks are told of it
            event = await resp.next_event()
            assert event.startswith(b"event: error") and b"upstream_error" in event
            with pytest.raises(Truncated):
                await resp.next_chunk()
        assert failing.in_task == [False]
        assert any("internal error while relaying" in r.getMessage() for r in caplog.records)
        await asyncio.wait_for(closed.wait(), WAIT)  # the upstream is closed
        runtime.hooks = tuple(h for h in runtime.hooks if h is not failing)
        again = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})  # the next is whole
        assert await again.next_event() == b"data: first\n\n"
        assert await again.next_chunk() is None
        again.close()
