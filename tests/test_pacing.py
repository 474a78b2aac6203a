"""The pacer (sseproxy/pacing.py): at most ``per_turn`` requests begin in one turn of the loop, the
rest in later turns, in the order they came; none is lost or starved. On the real event loop: a
turn is one pass over the loop's ready callbacks, which ``asyncio.sleep(0)`` lets run."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from helpers import WAIT, running_app, running_listener
from upstreams import echo_app

from sseproxy.pacing import Pacer


async def wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    for _ in range(100):  # bounded: until the requests have ended and been logged
        lines = [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    return lines


async def test_past_per_turn_requests_wait_for_later_turns_in_the_order_they_came() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(per_turn=2)
    answers = [pacer.turn(loop) for _ in range(5)]
    assert answers[:2] == [None, None]  # this turn's share goes on at once
    held = [a for a in answers[2:] if a is not None]
    assert len(held) == 3 and not any(h.done() for h in held)
    await asyncio.sleep(0)  # one turn: two more
    assert [h.done() for h in held] == [True, True, False]
    assert pacer.turn(loop) is not None  # that turn's share is taken: a newcomer waits behind the last
    await asyncio.sleep(0)
    assert held[2].done()


async def test_a_held_request_whose_client_left_takes_no_turn() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(per_turn=1)
    assert pacer.turn(loop) is None
    first, second = pacer.turn(loop), pacer.turn(loop)
    assert first is not None and second is not None
    first.cancel()  # its task was cancelled while it waited (a hang-up)
    await asyncio.sleep(0)
    assert second.done() and not second.cancelled()


async def test_a_burst_of_requests_is_answered_whole_a_few_per_turn() -> None:
    async with running_app(echo_app()) as up, running_listener({"routes": [{"upstream": up}]}) as (base, listener):
        listener.handler.pacer = Pacer(per_turn=2)  # 40 at once: most are held, turn after turn
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:

            async def get(i: int) -> tuple[int, str]:
                async with http.get(f"{base}/n/{i}") as resp:
                    return resp.status, (await resp.json())["path"]

            answers = await asyncio.wait_for(asyncio.gather(*(get(i) for i in range(40))), WAIT)
            assert answers == [(200, f"/n/{i}") for i in range(40)]
            async with http.get(f"{base}/after") as resp:  # and the proxy goes on serving
                assert resp.status == 200


async def test_a_client_that_leaves_while_its_request_waits_is_logged_and_lets_go_of_its_snapshot(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_app(echo_app()) as up, running_listener({"routes": [{"upstream": up}]}) as (base, listener):
        listener.handler.pacer = Pacer(per_turn=0)  # nothing begins: the request waits until its client leaves
        host, port = base.removeprefix("http://").rsplit(":", 1)
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /held HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            for _ in range(100):  # bounded: until the proxy holds it
                if listener.handler.pacer.waiting:
                    break
                await asyncio.sleep(0.02)
            assert listener.handler.pacer.waiting == 1
            assert listener.runtime.snapshot.in_flight.count == 1
            writer.close()
            lines = await wait_for_lines(caplog, 1)
        assert [(line["path"], line["outcome"]) for line in lines] == [("/held", "client_closed")]
        assert listener.runtime.snapshot.in_flight.count == 0  # a reload could retire its snapshot
        listener.handler.pacer = Pacer()
        async with aiohttp.ClientSession() as http, http.get(f"{base}/after") as resp:
            assert resp.status == 200  # and the proxy goes on serving
