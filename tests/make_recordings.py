"""Regenerates the shipped recordings (sseproxy/recordings/*.json) by recording through the real proxy.

    cd tests && ../.venv/bin/python make_recordings.py

An upstream shaped like the real APIs (OpenAI chat completions with a usage chunk, Anthropic messages,
and an OpenAI stream cut mid-answer) paces its tokens 30-80 ms apart, as the real ones do. ``sseproxy
serve --record`` sits in front of it as a process, and the openai and anthropic SDKs are the clients,
so the requests are what those SDKs send and the files are what the recorder writes. The SDKs'
``x-stainless-*`` headers (this machine's OS, architecture and Python) and ``Host`` are then dropped,
and each file gets a name that says what it holds. The pacing comes from a seeded generator; the
recorded times are the times the proxy saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import anthropic
import openai
from aiohttp import web
from helpers import running_app
from procs import sseproxy_process

from sseproxy.recording import Recording, dumps, load_dir

OUT = Path(__file__).resolve().parent.parent / "sseproxy" / "recordings"
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
CREATED = 1764441012

OPENAI_PROMPT = "In two sentences: why do chat UIs stream tokens?"
OPENAI_ANSWER = ("Chat UIs stream tokens so the first words appear within a few hundred milliseconds, instead of "
                 "after the whole answer is written. Reading can start at once, and a stop button can cancel a "
                 "long answer before it costs more tokens.")
ANTHROPIC_PROMPT = "What is Server-Sent Events, in one short paragraph?"
ANTHROPIC_ANSWER = ("Server-Sent Events is a simple HTTP standard for pushing updates from a server to a browser: "
                    "the response stays open with the text/event-stream type, and the server writes one event at "
                    "a time, each a few data: lines ended by a blank line. Browsers read it with EventSource, "
                    "which also reconnects on its own.")
ERROR_PROMPT = "Write a haiku about a stream that stops."
ERROR_ANSWER = "Tokens drift like leaves, a quiet river of words, then"  # the upstream is cut here

NAMES = {OPENAI_PROMPT: "openai-chat-completions-stream.json",
         ANTHROPIC_PROMPT: "anthropic-messages-stream.json",
         ERROR_PROMPT: "openai-chat-completions-cut-mid-stream.json"}


def words(text: str) -> list[str]:
    """Token-like pieces: words with their leading space, punctuation apart."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        if piece[-1] in ".,:;!?" and len(piece.strip()) > 1:
            out += [piece[:-1], piece[-1]]
        else:
            out.append(piece)
    return out


def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


def openai_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None,
                 choices: bool = True) -> dict[str, Any]:
    return {"id": "chatcmpl-CHh8xQ2vJm4T0yVJd1kQzq7w3fNpA", "object": "chat.completion.chunk", "created": CREATED,
            "model": OPENAI_MODEL, "service_tier": "default", "system_fingerprint": "fp_560af6e559",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            "usage": usage}


def upstream(rng: random.Random) -> web.Application:
    async def pause(low: float = 0.03, high: float = 0.08) -> None:
        await asyncio.sleep(rng.uniform(low, high))

    async def start(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        await pause(0.25, 0.45)  # the model's time to first token
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "Server": "cloudflare", **headers})
        await response.prepare(request)
        return response

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        cut = prompt == ERROR_PROMPT
        response = await start(request, {"openai-version": "2020-10-01", "openai-processing-ms": "312",
                                         "x-request-id": "req_5f0c3b1e7d2a4c9e8b6a1f3d2e4c6b8a"})
        await response.write(sse(openai_chunk({"role": "assistant", "content": "", "refusal": None})))
        pieces = words(ERROR_ANSWER if cut else OPENAI_ANSWER)
        for piece in pieces:
            await pause()
            await response.write(sse(openai_chunk({"content": piece})))
        if cut:
            await pause()
            assert request.transport is not None
            request.transport.abort()  # the connection drops mid-answer
            return response
        await pause()
        await response.write(sse(openai_chunk({}, "stop")))
        usage = {"prompt_tokens": 19, "completion_tokens": len(pieces), "total_tokens": 19 + len(pieces),
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        await pause(0.005, 0.02)
        await response.write(sse(openai_chunk({}, usage=usage, choices=False)))
        await response.write(sse("[DONE]"))
        await response.write_eof()
        return response

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = await start(request, {"request-id": "req_011CVdQ7mZ3yR8pK2wTfX4nB",
                                         "anthropic-organization-id": "00000000-0000-0000-0000-000000000000"})
        message = {"id": "msg_01XkLr9Gq5a3Vb7c2TnM8pWd", "type": "message", "role": "assistant",
                   "model": ANTHROPIC_MODEL, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 21, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                             "output_tokens": 2, "service_tier": "standard"}}
        await response.write(sse({"type": "message_start", "message": message}, "message_start"))
        await response.write(sse({"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}, "content_block_start"))
        await response.write(sse('{"type": "ping"}', "ping"))
        pieces = words(ANTHROPIC_ANSWER)
        for i in range(0, len(pieces), 3):  # Anthropic's deltas carry a few words each
            await pause()
            delta = {"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": "".join(pieces[i:i + 3])}}
            await response.write(sse(delta, "content_block_delta"))
        await pause()
        await response.write(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        await response.write(sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": len(pieces)}}, "message_delta"))
        await response.write(sse({"type": "message_stop"}, "message_stop"))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    return app


async def clients(proxy: str) -> None:
    oai = openai.AsyncOpenAI(base_url=f"{proxy}/v1", api_key="sk-proj-not-a-real-key-0123456789", max_retries=0)
    stream = await oai.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                               messages=[{"role": "user", "content": OPENAI_PROMPT}])
    async for _ in stream:
        pass
    ant = anthropic.AsyncAnthropic(base_url=proxy, api_key="sk-ant-not-a-real-key-0123456789", max_retries=0)
    async with ant.messages.stream(model="claude-3-5-haiku-latest", max_tokens=256,
                                   messages=[{"role": "user", "content": ANTHROPIC_PROMPT}]) as answer:
        await answer.get_final_message()
    cut = await oai.chat.completions.create(model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": ERROR_PROMPT}])
    try:
        async for _ in cut:
            pass
    except openai.APIError:
        pass
    else:
        raise AssertionError("the cut stream ended cleanly")
    await oai.close()
    await ant.close()


def tidy(recording: Recording) -> Recording:
    """Without the SDKs' x-stainless-* headers, which describe the machine that recorded, and Host,
    whose port changes from run to run."""
    request = recording.request
    headers = tuple(h for h in request.headers if not h[0].lower().startswith("x-stainless-") and
                    h[0].lower() != "host")
    return Recording(type(request)(request.method, request.path, request.query, headers, request.body),
                     recording.response)


async def main(out: Path) -> None:
    for name in [n for n in os.environ if n.startswith(("OPENAI_", "ANTHROPIC_"))]:
        del os.environ[name]  # the SDKs' settings from the environment: only the ones given here apply
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        async with running_app(upstream(random.Random(13))) as up, sseproxy_process(
                "serve", "--listen", "127.0.0.1:0", "--route", f"/={up}", "--record", str(directory)) as (_, proxy):
            await clients(proxy)
            await asyncio.sleep(0.5)  # the cut exchange's file is written when the proxy ends it
        found = load_dir(directory)
        if len(found) != len(NAMES):
            raise SystemExit(f"expected {len(NAMES)} recordings, got {[name for name, _ in found]}")
        out.mkdir(parents=True, exist_ok=True)
        for _, recording in found:
            prompt = json.loads(recording.request.body)["messages"][-1]["content"]
            (out / NAMES[prompt]).write_text(dumps(tidy(recording)), encoding="utf-8")
            print(f"{out / NAMES[prompt]}: {len(recording.response.frames or ())} frames, "
                  f"end {recording.response.end}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
