"""Token usage read from an LLM event stream as it passes, never changing a byte of it.

Recognised shapes (the last value seen wins: every one of them reports running totals):

- OpenAI chat completions, and the OpenAI-compatible servers (vLLM, llama.cpp, Ollama's ``/v1``,
  DashScope's compatible mode): a chunk's ``usage`` with ``prompt_tokens`` and ``completion_tokens``
  (sent once at the end with ``stream_options.include_usage``, or in every chunk by some servers).
- OpenAI responses: ``response.completed`` (also ``.incomplete``, ``.failed``) with
  ``response.usage.input_tokens`` and ``output_tokens``.
- Anthropic messages: ``message_start`` with ``message.usage.input_tokens``, then ``message_delta``
  with ``usage.output_tokens``, cumulative, so the last one is the total. Cache reads and writes
  (``cache_*_input_tokens``) are not added in: ``tokens_in`` is Anthropic's ``input_tokens`` as is.
- Any other chunk whose top-level ``usage`` carries those names (DashScope's own API).

Cost on the relay's path: an event is parsed only when its bytes contain ``_tokens``, which every
usage object above has and ``"usage": null`` (in every chunk of an OpenAI stream that asked for
usage) has not. Every other event costs one substring search.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from .framing import StreamKind

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from .accesslog import RequestRecord
    from .hooks import ExchangeInfo, Hook

LOOK_AT = 64 * 1024  # request-body bytes searched for a model name (an LLM call names it near the start)
MARKER = b"_tokens"  # in every usage object the meter reads; checked before any parse
# ``MARKER in data`` costs nearly three times this search: ``bytes.__contains__`` raises and clears a
# TypeError (with a formatted message) before it searches for a bytes needle (CPython 3.11)
has_marker = re.compile(re.escape(MARKER)).search
_IN_NAMES = ("prompt_tokens", "input_tokens")
_OUT_NAMES = ("completion_tokens", "output_tokens")


def _count(usage: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _usage_of(payload: object) -> dict[str, Any] | None:
    """The usage object of one event's JSON: at the top (OpenAI chunks, Anthropic ``message_delta``),
    under ``message`` (Anthropic ``message_start``) or under ``response`` (OpenAI responses)."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return usage
    for key in ("message", "response"):
        inner = payload.get(key)
        if isinstance(inner, dict) and isinstance(usage := inner.get("usage"), dict):
            return usage
    return None


class UsageMeter:
    """Fed whole SSE frames (several events per call, any line endings), keeps the token counts.

    ``tokens_in`` and ``tokens_out`` stay ``None`` until a stream reports them. Nothing is kept
    between calls: an event is whole within one call (the framer's promise), and an unterminated
    last event is read at the end of the call that brings it.
    """

    __slots__ = ("tokens_in", "tokens_out")  # one per stream in flight: no instance dict

    def __init__(self) -> None:
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None

    def feed(self, frames: bytes) -> None:
        if not has_marker(frames):  # the per-event cost on all but a stream's one or two usage events
            return
        data: list[bytes] = []
        for line in frames.splitlines():  # bytes split on LF, CRLF and CR only, as SSE does
            if not line:
                self._event(data)
                data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line == b"data":  # a field name alone: an empty value
                data.append(b"")
        self._event(data)

    def _event(self, data: list[bytes]) -> None:
        if not data:
            return
        payload = b"\n".join(data)
        if not has_marker(payload):
            return
        try:
            usage = _usage_of(json.loads(payload))
        except (ValueError, RecursionError):  # not JSON ("[DONE]"), or nested deeper than the parser goes
            return
        if usage is None:
            return
        if (tokens_in := _count(usage, _IN_NAMES)) is not None:
            self.tokens_in = tokens_in
        if (tokens_out := _count(usage, _OUT_NAMES)) is not None:
            self.tokens_out = tokens_out


class UsageHook:
    """One exchange's meter: reads event streams only, and puts the counts in the record at the end."""

    __slots__ = ("_looked", "_named_model", "_sse", "_writers", "meter", "reported")  # one per stream: no dict
    meters_upstream = True  # on a resumable stream, fed the upstream's events by its producer (hooks.py)

    def __init__(self, method: str, writers: list[Hook]) -> None:
        self._writers = writers
        self.meter = UsageMeter()
        self.reported: tuple[int, int] | None = None  # what ``end`` put in the record (None: not ended)
        self._sse = False
        self._named_model = False
        self._looked = 0 if method == "POST" else LOOK_AT  # request-body bytes looked at for a model name

    def request_body(self, chunk: bytes) -> None:
        if self._looked < LOOK_AT:
            self._named_model = self._named_model or b'"model"' in chunk[: LOOK_AT - self._looked]
            self._looked += len(chunk)

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self._sse = kind is StreamKind.SSE
        if not self._sse and self in self._writers:
            self._writers.remove(self)  # nothing to read: not told of the writes

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        if self._sse and has_marker(chunk):  # the meter's own first test, without a call per event
            self.meter.feed(chunk)

    def end(self, record: RequestRecord) -> None:
        record.tokens_in = self.meter.tokens_in
        record.tokens_out = self.meter.tokens_out
        record.llm = self._sse and self._named_model
        self.reported = (self.meter.tokens_in or 0, self.meter.tokens_out or 0)


def late_tokens(hook: object) -> tuple[int, int]:
    """Tokens a usage hook read after its exchange ended (input, output), now counted, so that they
    are counted once: a resumable stream runs on after the client that started it hung up, and its
    usage, reported at the end, comes then."""
    if not isinstance(hook, UsageHook) or hook.reported is None:
        return 0, 0  # not ended: its end puts every token in the record
    now = (hook.meter.tokens_in or 0, hook.meter.tokens_out or 0)
    late = (max(0, now[0] - hook.reported[0]), max(0, now[1] - hook.reported[1]))
    hook.reported = now
    return late


class UsageHooks:
    """The ``HookFactory``: a meter for every exchange (one that is not an event stream costs a flag check)."""

    def open(self, info: ExchangeInfo) -> UsageHook:
        return UsageHook(info.method, info.writers)
