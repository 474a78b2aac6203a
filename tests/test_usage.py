"""The usage meter, sans io, on streams shaped as the providers send them (written down by hand from
their documented and observed output), split every way the framer could hand them over."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from sseproxy.accesslog import AccessLog, RequestRecord
from sseproxy.framing import SseFramer, StreamKind
from sseproxy.hooks import ExchangeInfo, Hook, HookFactory, open_hooks
from sseproxy.logs import LineFormatter, Redactor
from sseproxy.usage import UsageHook, UsageHooks, UsageMeter


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    """An LF event stream: each event an optional name and a JSON payload (or a raw data string)."""
    out = []
    for name, payload in events:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


def openai_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None,
                 choices: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-AzT1hW3xDm2cQb8k7JqYv", "object": "chat.completion.chunk", "created": 1739200000,
        "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_72ed7ab54c",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
    }
    chunk["usage"] = usage  # null in every chunk but the last when the request set include_usage
    return chunk


OPENAI_CHAT = sse(
    (None, openai_chunk({"role": "assistant", "content": "", "refusal": None})),
    (None, openai_chunk({"content": "The"})),
    (None, openai_chunk({"content": " max_tokens"})),  # "_tokens" in the text: parsed, and nothing found
    (None, openai_chunk({"content": " setting caps the answer."})),
    (None, openai_chunk({}, finish="stop")),
    (None, openai_chunk({}, choices=False, usage={
        "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0}})),
    (None, "[DONE]"),
)

_RESPONSE = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", "object": "response", "created_at": 1741476542,
    "status": "in_progress", "error": None, "incomplete_details": None, "instructions": None,
    "max_output_tokens": None, "model": "gpt-4.1-2025-04-14", "output": [], "parallel_tool_calls": True,
    "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": True,
    "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
    "truncation": "disabled", "usage": None, "user": None, "metadata": {},
}
_ITEM = "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b"
OPENAI_RESPONSES = sse(
    ("response.created", {"type": "response.created", "sequence_number": 0, "response": _RESPONSE}),
    ("response.in_progress", {"type": "response.in_progress", "sequence_number": 1, "response": _RESPONSE}),
    ("response.output_item.added", {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                                    "item": {"id": _ITEM, "type": "message", "status": "in_progress",
                                             "role": "assistant", "content": []}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 3, "item_id": _ITEM,
                                    "output_index": 0, "content_index": 0, "delta": "Hi there"}),
    ("response.output_text.done", {"type": "response.output_text.done", "sequence_number": 4, "item_id": _ITEM,
                                   "output_index": 0, "content_index": 0, "text": "Hi there"}),
    ("response.completed", {"type": "response.completed", "sequence_number": 5, "response": {
        **_RESPONSE, "status": "completed",
        "usage": {"input_tokens": 37, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 11,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 48}}}),
)

ANTHROPIC = sse(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
        "model": "claude-sonnet-4-20250514", "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 2, "service_tier": "standard"}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Hello"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "! How can I help?"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 89}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": 154}}),  # cumulative: the last one is the total
    ("message_stop", {"type": "message_stop"}),
)


def _vllm(i: int, text: str, finish: str | None = None) -> dict[str, Any]:
    """vLLM with stream_options.continuous_usage_stats: running totals in every chunk."""
    return {"id": "chatcmpl-8f1c0f4e2d6b4c1f", "object": "chat.completion.chunk", "created": 1739200001,
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 31, "total_tokens": 31 + i, "completion_tokens": i}}


VLLM = sse(*[(None, _vllm(i, t, "stop" if i == 4 else None)) for i, t in enumerate(["", "A", "B", "C", ""])],
           (None, "[DONE]"))

LLAMA_CPP = sse(
    (None, {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Hi"}}], "created": 1739200002,
            "id": "chatcmpl-QnYc3t", "model": "gpt-3.5-turbo", "system_fingerprint": "b4600-9d4cc2a",
            "object": "chat.completion.chunk"}),
    (None, {"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], "created": 1739200002,
            "id": "chatcmpl-QnYc3t", "model": "gpt-3.5-turbo", "system_fingerprint": "b4600-9d4cc2a",
            "object": "chat.completion.chunk",
            "usage": {"completion_tokens": 12, "prompt_tokens": 20, "total_tokens": 32},
            "timings": {"prompt_n": 20, "prompt_ms": 41.2, "predicted_n": 12, "predicted_ms": 180.5}}),
    (None, "[DONE]"),
)

OLLAMA = sse(
    (None, {"id": "chatcmpl-512", "object": "chat.completion.chunk", "created": 1739200003, "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]}),
    (None, {"id": "chatcmpl-512", "object": "chat.completion.chunk", "created": 1739200003, "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}),
    (None, {"id": "chatcmpl-512", "object": "chat.completion.chunk", "created": 1739200003, "model": "llama3.2",
            "system_fingerprint": "fp_ollama", "choices": [],
            "usage": {"prompt_tokens": 26, "completion_tokens": 10, "total_tokens": 36}}),
    (None, "[DONE]"),
)

# DashScope's own API (incremental_output): no space after the colons, a comment line per event,
# and running totals as input_tokens/output_tokens at the top.
DASHSCOPE = b"".join(
    b'id:%d\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"choices":[{"message":{"content":"%s","role":'
    b'"assistant"},"finish_reason":"%s"}]},"usage":{"total_tokens":%d,"output_tokens":%d,"input_tokens":22},'
    b'"request_id":"e764bfe3-c0b7-97a0-ae57-cd99e1580960"}\n\n' % (i, t, f, 22 + i, i)
    for i, t, f in ((1, b"I", b"null"), (2, b" am", b"null"), (3, b"", b"stop"))
)

STREAMS = {
    "openai-chat": (OPENAI_CHAT, 19, 10),
    "openai-responses": (OPENAI_RESPONSES, 37, 11),
    "anthropic": (ANTHROPIC, 472, 154),
    "vllm": (VLLM, 31, 4),
    "llama.cpp": (LLAMA_CPP, 20, 12),
    "ollama": (OLLAMA, 26, 10),
    "dashscope": (DASHSCOPE, 22, 3),
}
ENDINGS = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}


def events_of(stream: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in stream.split(b"\n\n") if e]


def with_ending(stream: bytes, ending: bytes) -> bytes:
    return stream.replace(b"\n", ending)


def metered(*pieces: bytes) -> tuple[int | None, int | None]:
    meter = UsageMeter()
    for piece in pieces:
        meter.feed(piece)
    return meter.tokens_in, meter.tokens_out


@pytest.mark.parametrize("name", list(STREAMS))
def test_each_stream_shape_gives_its_totals(name: str) -> None:
    stream, tokens_in, tokens_out = STREAMS[name]
    assert metered(stream) == (tokens_in, tokens_out)
    assert metered(*events_of(stream)) == (tokens_in, tokens_out)


@pytest.mark.parametrize("name", list(STREAMS))
@settings(max_examples=50, deadline=None)
@given(ending=st.sampled_from(list(ENDINGS)), data=st.data())
def test_any_grouping_of_whole_events_into_frames_gives_the_same_totals(name: str, ending: str,
                                                                        data: st.DataObject) -> None:
    stream, tokens_in, tokens_out = STREAMS[name]
    events = [with_ending(e, ENDINGS[ending]) for e in events_of(stream)]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(events) - 1), max_size=len(events)))))
    bounds = [0, *cuts, len(events)]
    frames = [b"".join(events[a:b]) for a, b in itertools.pairwise(bounds)]
    assert metered(*frames) == (tokens_in, tokens_out)


@pytest.mark.parametrize("name", list(STREAMS))
@settings(max_examples=50, deadline=None)
@given(ending=st.sampled_from(list(ENDINGS)), data=st.data())
def test_what_the_framer_makes_of_any_split_of_the_bytes_gives_the_same_totals(name: str, ending: str,
                                                                               data: st.DataObject) -> None:
    """The real path: upstream reads split anywhere, the framer hands over whole events."""
    stream = with_ending(STREAMS[name][0], ENDINGS[ending])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    framer, meter = SseFramer(), UsageMeter()
    for a, b in itertools.pairwise(bounds):
        if frames := framer.feed(stream[a:b]):
            meter.feed(frames)
    meter.feed(framer.flush())
    assert (meter.tokens_in, meter.tokens_out) == STREAMS[name][1:]


def test_an_unterminated_last_event_is_still_read() -> None:
    """An upstream that ends right after its usage line: the framer's flush hands over the tail."""
    assert metered(b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n') == (3, 4)
    assert metered(b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}') == (3, 4)


def test_multi_line_data_is_joined_as_sse_says() -> None:
    assert metered(b'event: x\ndata: {"usage":\ndata: {"input_tokens": 5, "output_tokens": 6}}\n\n') == (5, 6)


def test_nothing_until_a_stream_reports_usage_and_a_half_report_keeps_the_other_half() -> None:
    assert metered(b"data: hello\n\n", b"data: [DONE]\n\n") == (None, None)
    stream = ANTHROPIC.split(b"event: message_delta")[0]  # hung up before the first message_delta
    assert metered(stream) == (472, 2)
    assert metered(b'data: {"usage": {"completion_tokens": 7}}\n\n') == (None, 7)


@pytest.mark.parametrize("frame", [
    b'data: {"usage": {"prompt_tokens": -1, "completion_tokens": true}}\n\n',   # not counts
    b'data: {"usage": {"prompt_tokens": "12", "completion_tokens": 1.5}}\n\n',
    b'data: {"usage": [1, 2], "x_tokens": 1}\n\n',
    b'data: {"message": {"usage": null}, "max_tokens": 5}\n\n',
    b'data: {"choices": [{"delta": {"content": "\\"usage\\": {\\"prompt_tokens\\": 9}"}}]}\n\n',  # in a string
    b"data: not json at all, prompt_tokens\n\n",
    b'data: {"usage": {"prompt_tokens": 1\n\n',                                    # cut short
    b"data: " + b"[" * 100_000 + b'"_tokens"' + b"]" * 100_000 + b"\n\n",        # deeper than json goes
    b'data: \xff\xfe{"usage": _tokens}\n\n',
    b'event: message_start\nid: {"usage": {"input_tokens": 5}}\n\n',              # not a data field
])
def test_what_is_not_a_usage_report_is_ignored_never_raised(frame: bytes) -> None:
    assert metered(frame) == (None, None)


def test_frames_without_the_marker_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's cost: one substring search per frame on all but the usage events."""
    def no_parse(_: bytes) -> None:
        raise AssertionError("parsed a frame that cannot carry usage")

    monkeypatch.setattr("sseproxy.usage.json.loads", no_parse)
    stream = OPENAI_CHAT.replace(b" max_tokens", b" maximum")
    for event in events_of(stream)[:-2]:  # every event before the usage chunk, "usage": null included
        UsageMeter().feed(event)
    with pytest.raises(AssertionError):
        UsageMeter().feed(events_of(stream)[-2])


def _info() -> ExchangeInfo:
    return ExchangeInfo(id=1, route="openai", method="POST", path="/v1/chat/completions", query="", client=None,
                        headers=CIMultiDictProxy(CIMultiDict()), started=0.0)


@pytest.mark.parametrize("kind,counted", [(StreamKind.SSE, True), (StreamKind.LINES, False),
                                          (StreamKind.RAW, False), (StreamKind.NONE, False)])
def test_the_hook_meters_event_streams_into_the_record(kind: StreamKind, counted: bool) -> None:
    factory: HookFactory = UsageHooks()
    info = _info()
    hooks = open_hooks([factory], info)
    assert len(hooks) == 1 and isinstance(hooks[0], UsageHook)
    hook: Hook = hooks[0]
    hook.request_body(b'{"stream": true}')
    assert info.writers == [hook]
    hook.response(200, CIMultiDict({"Content-Type": "text/event-stream"}), kind)
    assert info.writers == ([hook] if counted else [])  # a stream it cannot read: not told of the writes
    for event in events_of(ANTHROPIC):
        hook.data(event, 1.0, 1)
    record = RequestRecord(method="POST", path="/v1/messages", started=0.0)
    hook.end(record)
    assert (record.tokens_in, record.tokens_out) == ((472, 154) if counted else (None, None))


def test_the_access_log_carries_the_tokens_in_text_and_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sseproxy.access")
    log = AccessLog()
    log.write(RequestRecord(method="POST", path="/v1/messages", started=0.0, status=200, tokens_in=472,
                            tokens_out=154))
    log.write(RequestRecord(method="GET", path="/", started=0.0, status=200))
    with_usage, without = caplog.records
    assert "tokens_in=472 tokens_out=154" in with_usage.getMessage()
    assert "tokens_in" not in without.getMessage()
    fields = json.loads(LineFormatter("json", "json", Redactor()).format(with_usage))
    assert (fields["tokens_in"], fields["tokens_out"]) == (472, 154)
    assert json.loads(LineFormatter("json", "json", Redactor()).format(without))["tokens_in"] is None
