"""The LLM sidecar through a running proxy: retries before the first byte (next upstream first,
the body resent), concurrency limits answering 429, and token usage read from the stream into the
access log and the metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from helpers import Gate, raw_request, running_app, running_proxy
from test_operations import metric

from sseproxy.runtime import Runtime

BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def answering(statuses: list[int], seen: list[dict[str, Any]], name: str) -> web.Application:
    """Answers each request with the next status of ``statuses`` (the last one repeats), noting
    what it got; 200 answers are a short event stream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"upstream": name, "body": body})
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status != 200:
            return web.json_response({"error": f"{name} says {status}"}, status=status, headers={"Retry-After": "0"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: from {name}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def access_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]


async def test_an_overloaded_upstream_is_retried_on_the_next_upstream_with_the_body_resent(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []
    retry = {"on": [429, 529], "attempts": 3, "backoff": "10ms"}
    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with running_app(answering([529], seen, "a")) as a, running_app(answering([200], seen, "b")) as b, \
                running_proxy({"routes": [{"name": "llm", "upstream": [a, b], "retry": retry}]}) as (proxy, runtime):
            resp = await raw_request(proxy, "POST", "/v1/chat", {"Content-Type": "application/json"}, BODY.encode())
            assert resp.status == 200
            assert await resp.body() == b"data: from b\n\n"
            text = runtime.metrics.render().decode()
    assert [s["upstream"] for s in seen] == ["a", "b"]
    assert all(s["body"] == BODY.encode() for s in seen)  # the same body, sent twice
    (line,) = access_fields(caplog)
    assert line["attempts"] == 2 and line["retried"] == [529] and line["outcome"] == "ok"
    assert metric(text, "sseproxy_upstream_retries_total", route="llm", status="529") == 1


async def test_after_the_last_attempt_the_last_answer_is_relayed_as_it_came() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(answering([503], seen, "a")) as a, running_proxy({"routes": [
            {"upstream": a, "retry": {"on": [503], "attempts": 3, "backoff": "1ms"}}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 503
        assert json.loads(await resp.body()) == {"error": "a says 503"}
    assert len(seen) == 3


async def test_a_body_over_retry_max_body_is_not_retried() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(answering([503, 200], seen, "a")) as a, running_proxy({"routes": [
            {"upstream": a, "retry": {"on": [503], "attempts": 3, "backoff": "1ms", "max_body": 16}}]}) as (proxy, _):
        resp = await raw_request(proxy, "POST", "/", {}, b"x" * 100)
        assert resp.status == 503
    assert len(seen) == 1


async def test_statuses_not_listed_are_never_retried() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(answering([500, 200], seen, "a")) as a, running_proxy({"routes": [
            {"upstream": a, "retry": {"on": [503], "attempts": 3}}]}) as (proxy, _):
        assert (await raw_request(proxy, "GET", "/", {})).status == 500
    assert len(seen) == 1


def held_stream(gate: Gate, others: Gate | None = None) -> web.Application:
    """Writes what ``gate`` releases; requests to /other read ``others`` instead."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        mine = others if others is not None and request.path == "/other" else gate
        while (data := await mine.next()) is not None:
            await response.write(data)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("per", ["route", "client", "token"])
async def test_over_concurrent_streams_is_429_with_retry_after_and_the_slot_comes_back(per: str) -> None:
    gate, others = Gate(), Gate()
    config: dict[str, Any] = {"routes": [{"upstream": "", "limits": {"concurrent_streams": 1, "per": per}}]}
    headers = {}
    if per == "token":
        config["inbound_auth"] = {"tokens": ["token-one-0123456789", "token-two-0123456789"]}
        headers = {"Authorization": "Bearer token-one-0123456789"}
    async with running_app(held_stream(gate, others)) as up:
        config["routes"][0]["upstream"] = up
        async with running_proxy(config) as (proxy, _):
            first = await raw_request(proxy, "GET", "/", headers)
            gate.release(b"data: 1\n\n")
            assert await first.next_chunk() == b"data: 1\n\n"
            refused = await raw_request(proxy, "GET", "/", headers)
            assert refused.status == 429 and refused.headers["retry-after"] == "1"
            assert json.loads(await refused.body())["error"]["type"] == "too_many_streams"
            if per == "token":  # another token has its own slot
                other = await raw_request(proxy, "GET", "/other", {"Authorization": "Bearer token-two-0123456789"})
                assert other.status == 200
                others.release(None)
                assert await other.body() == b""
            gate.release(None)
            assert await first.next_chunk() is None
            again = await raw_request(proxy, "GET", "/", headers)
            assert again.status == 200
            gate.release(None)
            await again.body()


OPENAI = (b'data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n'
          b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}\n\n'
          b"data: [DONE]\n\n")
ANTHROPIC = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,'
             b'"output_tokens":1}}}\n\n'
             b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"Hi"}}\n\n'
             b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":21}}\n\n')


@pytest.mark.parametrize("stream,expected", [(OPENAI, (12, 34)), (ANTHROPIC, (7, 21))], ids=["openai", "anthropic"])
async def test_usage_is_read_from_the_stream_into_the_log_and_metrics(
        stream: bytes, expected: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with running_app(held_stream(gate)) as up, running_proxy(
                {"routes": [{"name": "llm", "upstream": up}]}) as (proxy, runtime):
            resp = await raw_request(proxy, "POST", "/", {"Content-Type": "application/json"}, BODY.encode())
            gate.release(stream)
            gate.release(None)
            assert await resp.body() == stream  # read, never changed
            text = await scrape_after_log(runtime, caplog)
    (line,) = access_fields(caplog)
    assert (line["tokens_in"], line["tokens_out"]) == expected
    assert metric(text, "sseproxy_llm_tokens_total", route="llm", kind="input") == expected[0]
    assert metric(text, "sseproxy_llm_tokens_total", route="llm", kind="output") == expected[1]


async def scrape_after_log(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> str:
    for _ in range(100):  # bounded: until the request has ended and been counted
        if access_fields(caplog):
            break
        await asyncio.sleep(0.02)
    return runtime.metrics.render().decode()


async def test_an_llm_stream_the_client_left_is_counted_as_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with running_app(held_stream(gate)) as up, running_proxy(
                {"routes": [{"name": "llm", "upstream": up}]}) as (proxy, runtime):
            resp = await raw_request(proxy, "POST", "/", {"Content-Type": "application/json"}, BODY.encode())
            gate.release(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')
            await resp.next_chunk()
            resp.writer.transport.abort()
            text = await scrape_after_log(runtime, caplog)
            gate.release(None)
    assert metric(text, "sseproxy_llm_streams_cancelled_total", route="llm") == 1


def openai_style(seen: list[bytes], first: int, retry_after: str) -> web.Application:
    """An OpenAI-style chat completions endpoint: answers ``first`` once, then streams with usage."""
    answered = 0

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        seen.append(await request.read())
        answered += 1
        if answered == 1:
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=first,
                                     headers={"Retry-After": retry_after})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(["Hello", ", ", "world"]):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            del i
        usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                 "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def test_the_openai_sdk_gets_the_whole_answer_after_the_proxy_retries_a_429() -> None:
    import openai

    seen: list[bytes] = []
    async with running_app(openai_style(seen, 429, "1")) as up, running_proxy({"routes": [
            {"name": "openai", "path": "/openai", "upstream": f"{up}/v1",
             "request_headers": {"set": {"Authorization": "Bearer sk-proxy-side-0123456789"}},
             "retry": {"on": [429], "attempts": 2}}]}) as (proxy, runtime):
        client = openai.AsyncOpenAI(base_url=f"{proxy}/openai", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        words = [c.choices[0].delta.content async for c in stream if c.choices]
        await client.close()
        text = runtime.metrics.render().decode()
    assert "".join(w or "" for w in words) == "Hello, world"
    assert len(seen) == 2 and seen[0] == seen[1]  # two identical bodies
    assert metric(text, "sseproxy_upstream_retries_total", route="openai", status="429") == 1


def anthropic_style(name: str, seen: list[str]) -> web.Application:
    """An Anthropic-style messages endpoint: "overloaded" upstream answers 529, the other streams."""

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(name)
        if name == "overloaded":
            return web.json_response({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                                     status=529)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hi there"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 15}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        for event, data in events:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def test_the_anthropic_sdk_is_failed_over_from_a_529_and_usage_lands_in_the_metrics() -> None:
    import anthropic

    seen: list[str] = []
    async with running_app(anthropic_style("overloaded", seen)) as busy, running_app(
            anthropic_style("ready", seen)) as ready, running_proxy({"routes": [
            {"name": "anthropic", "path": "/anthropic", "upstream": [busy, ready],
             "retry": {"on": [529], "attempts": 3, "backoff": "10ms"}}]}) as (proxy, runtime):
        client = anthropic.AsyncAnthropic(base_url=f"{proxy}/anthropic", api_key="unused", max_retries=0)
        async with client.messages.stream(model="claude", max_tokens=64,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
        await client.close()
        for _ in range(100):  # bounded: until the stream's end has been counted
            metrics = runtime.metrics.render().decode()
            if metric(metrics, "sseproxy_llm_tokens_total", route="anthropic", kind="output"):
                break
            await asyncio.sleep(0.02)
    assert text == "Hi there"
    assert seen == ["overloaded", "ready"]
    assert metric(metrics, "sseproxy_llm_tokens_total", route="anthropic", kind="input") == 25
    assert metric(metrics, "sseproxy_llm_tokens_total", route="anthropic", kind="output") == 15


@pytest.mark.parametrize("end", ["hang_up", "upstream_error"])
async def test_a_limit_slot_is_freed_however_the_stream_ends(end: str) -> None:
    gate = Gate()
    async with running_app(held_stream(gate)) as up, running_proxy({"routes": [
            {"upstream": up, "timeouts": {"idle": "300ms"}, "heartbeat": 0,
             "limits": {"concurrent_streams": 1}}]}) as (proxy, _):
        first = await raw_request(proxy, "GET", "/", {})
        gate.release(b"data: 1\n\n")
        assert await first.next_chunk() == b"data: 1\n\n"
        assert (await raw_request(proxy, "GET", "/", {})).status == 429
        if end == "hang_up":
            first.writer.transport.abort()
        # else: the upstream falls silent past idle, which ends the stream as an upstream error
        for _ in range(100):  # bounded: until the slot has come back
            again = await raw_request(proxy, "GET", "/", {})
            if again.status == 200:
                break
            await asyncio.sleep(0.05)
        assert again.status == 200
        gate.release(None)
