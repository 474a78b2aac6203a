"""The retry policy and the replayable body, sans io (times are plain numbers, no clock is mocked);
and the ``retry`` config keys."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import load_text
from hypothesis import given, settings
from hypothesis import strategies as st

from sseproxy.config import Config, Retry
from sseproxy.retry import NO_RETRY, NotReplayable, ReplayableBody, RetryPolicy, parse_retry_after

NOW = 1_700_000_000.0  # a wall-clock time, as the caller would pass time.time()
POLICY = RetryPolicy(frozenset({429, 502, 503, 529}), attempts=4, backoff=0.25, max_backoff=5.0, max_body=1024)


def test_backoff_doubles_each_time_until_the_attempts_are_spent() -> None:
    assert [POLICY.next_delay(n, 503) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, None]


def test_backoff_is_capped_by_max_backoff() -> None:
    policy = RetryPolicy(frozenset({529}), attempts=10, backoff=1.0, max_backoff=3.0)
    assert [policy.next_delay(n, 529) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]
    huge = RetryPolicy(frozenset({529}), attempts=10_000, backoff=1.0, max_backoff=3.0)
    assert huge.next_delay(5000, 529) == 3.0  # no float overflow however many attempts


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 404, 500, 504])
def test_other_statuses_are_relayed_as_they_came(status: int) -> None:
    assert POLICY.next_delay(1, status) is None


def test_no_retry_without_a_setting() -> None:
    assert RetryPolicy.from_config(None) is NO_RETRY
    assert not NO_RETRY.enabled and NO_RETRY.next_delay(1, 429) is None
    one = RetryPolicy.from_config(Retry(attempts=1))
    assert not one.enabled and one.next_delay(1, 429) is None


def test_retry_after_in_seconds_is_honoured_up_to_max_backoff() -> None:
    assert POLICY.next_delay(1, 429, "1") == 1.0
    assert POLICY.next_delay(1, 429, "0") == 0.0
    assert POLICY.next_delay(2, 429, "5") == 5.0
    assert POLICY.next_delay(2, 429, "60") == 0.5  # longer than max_backoff: the own backoff instead
    assert POLICY.next_delay(1, 429, "soon") == 0.25  # unreadable: ignored
    assert POLICY.next_delay(4, 429, "1") is None  # the last attempt: relayed, Retry-After and all


def test_retry_after_as_an_http_date_is_read_against_now() -> None:
    in_3s = email.utils.formatdate(NOW + 3, usegmt=True)
    assert POLICY.next_delay(1, 503, in_3s, now=NOW) == pytest.approx(3.0)
    gone = email.utils.formatdate(NOW - 30, usegmt=True)
    assert POLICY.next_delay(1, 503, gone, now=NOW) == 0.0
    far = email.utils.formatdate(NOW + 3600, usegmt=True)
    assert POLICY.next_delay(1, 503, far, now=NOW) == 0.25


@pytest.mark.parametrize("value,seconds", [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0),
    ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),        # IMF-fixdate
    ("Tuesday, 14-Nov-23 22:13:30 GMT", 10.0),      # RFC 850
    ("Tue Nov 14 22:13:30 2023", 10.0),             # asctime: no zone, and HTTP dates are GMT
    ("Tue, 14 Nov 2023 23:13:30 +0100", 10.0),
    (None, None), ("", None), ("-1", None), ("1.5", None), ("soon", None), ("١٢", None),
    ("Tue, 99 Nov 2023 22:13:30 GMT", None), ("Tue, 14 Nov 99999 22:13:30 GMT", None),
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """``NOW`` is 22:13:20 GMT on 14 Nov 2023: each date above is ten seconds after it."""
    assert parse_retry_after(value, NOW) == (None if seconds is None else pytest.approx(seconds))


@settings(max_examples=100)
@given(attempt=st.integers(1, 20), status=st.integers(100, 599), retry_after=st.none() | st.text(max_size=40),
       attempts=st.integers(1, 10), backoff=st.floats(0, 10), extra=st.floats(0, 10))
def test_a_delay_is_never_negative_nor_over_max_backoff(attempt: int, status: int, retry_after: str | None,
                                                        attempts: int, backoff: float, extra: float) -> None:
    policy = RetryPolicy(frozenset({429, 503}), attempts, backoff, backoff + extra)
    delay = policy.next_delay(attempt, status, retry_after, now=NOW)
    if attempt >= attempts or status not in (429, 503):
        assert delay is None
    else:
        assert delay is not None and 0 <= delay <= backoff + extra


# --- the replayable body ---

async def chunks(*parts: bytes, gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if gate is not None and i == 1:
            await gate.wait()
        yield part


async def read(body: AsyncIterator[bytes]) -> list[bytes]:
    return [c async for c in body]


async def test_the_first_attempt_streams_as_it_comes_and_a_retry_gets_the_same_bytes() -> None:
    body = ReplayableBody(chunks(b"{", b'"model": "x"', b"}"), max_body=1024)
    assert await read(aiter(body)) == [b"{", b'"model": "x"', b"}"]
    assert body.replayable and body.kept == 14
    assert await read(body.replay()) == [b"{", b'"model": "x"', b"}"]
    assert await read(body.replay()) == [b"{", b'"model": "x"', b"}"]  # a third attempt too


async def test_the_first_attempt_is_not_held_back_to_keep_the_body() -> None:
    gate = asyncio.Event()
    body = aiter(ReplayableBody(chunks(b"first", b"second", gate=gate), max_body=1024))
    assert await asyncio.wait_for(anext(body), 1) == b"first"  # before the client sent the rest
    gate.set()
    assert await read(body) == [b"second"]


async def test_an_upstream_that_answered_before_reading_it_all_gets_it_whole_on_the_retry() -> None:
    body = ReplayableBody(chunks(b"a", b"b", b"c"), max_body=1024)
    first = aiter(body)
    assert await anext(first) == b"a"  # the upstream answered 429 here; the attempt is abandoned
    assert await read(body.replay()) == [b"a", b"b", b"c"]  # kept chunks, then the rest from the client
    assert await read(body.replay()) == [b"a", b"b", b"c"]
    assert await read(first) == []  # the abandoned attempt's iterator stops: it never reads again


async def test_a_body_over_max_body_still_goes_out_whole_once_but_is_not_replayable() -> None:
    body = ReplayableBody(chunks(b"x" * 600, b"y" * 600, b"z"), max_body=1024)
    assert await read(aiter(body)) == [b"x" * 600, b"y" * 600, b"z"]
    assert not body.replayable and body.kept == 0  # what was kept is dropped at once
    with pytest.raises(NotReplayable, match="max_body"):
        body.replay()


async def test_a_declared_length_over_max_body_keeps_nothing_from_the_start() -> None:
    body = ReplayableBody(chunks(b"small"), max_body=4, length=5)
    assert not body.replayable
    assert await read(aiter(body)) == [b"small"] and body.kept == 0
    assert ReplayableBody(chunks(b"ok"), max_body=4, length=2).replayable


async def test_a_body_that_outgrows_max_body_during_a_replay_finishes_that_attempt() -> None:
    body = ReplayableBody(chunks(b"a" * 10, b"b" * 10, b"c" * 10), max_body=25)
    first = aiter(body)
    assert await anext(first) == b"a" * 10
    assert await read(body.replay()) == [b"a" * 10, b"b" * 10, b"c" * 10]
    assert not body.replayable


async def test_no_replay_while_the_last_attempt_is_reading_nor_a_second_first_attempt() -> None:
    gate = asyncio.Event()
    body = ReplayableBody(chunks(b"a", b"b", gate=gate), max_body=1024)
    first = aiter(body)
    assert await anext(first) == b"a"
    reading = asyncio.ensure_future(anext(first))
    await asyncio.sleep(0)
    with pytest.raises(NotReplayable, match="still reading"):
        body.replay()
    gate.set()
    assert await reading == b"b"
    with pytest.raises(NotReplayable):
        aiter(body)
    assert await read(body.replay()) == [b"a", b"b"]


async def test_an_empty_body_replays_as_empty() -> None:
    body = ReplayableBody(chunks(), max_body=0)
    assert await read(aiter(body)) == [] and await read(body.replay()) == []


@settings(max_examples=50, deadline=None)
@given(parts=st.lists(st.binary(min_size=1, max_size=50), max_size=12), max_body=st.integers(0, 400),
       stop_after=st.integers(0, 12))
async def test_any_body_any_abandon_point(parts: list[bytes], max_body: int, stop_after: int) -> None:
    body = ReplayableBody(chunks(*parts), max_body=max_body)
    first = aiter(body)
    sent: list[bytes] = []
    for _ in range(min(stop_after, len(parts))):
        sent.append(await anext(first))
    assert sent == parts[:len(sent)]
    if body.replayable:
        assert await read(body.replay()) == parts
        assert body.replayable == (sum(map(len, parts)) <= max_body)
    else:
        assert sum(map(len, parts[:len(sent)])) > max_body


# --- the retry config keys ---

def test_retry_config_as_the_spec_writes_it_in_yaml_and_toml(tmp_path: Path) -> None:
    yaml = load_text(tmp_path, "retry: {on: [429, 503], attempts: 2}\nroutes:\n  - upstream: 'http://127.0.0.1:1'\n"
                     "    retry:\n      on: [429, 502, 503, 529]\n      attempts: 3\n      backoff: 250ms\n"
                     "      max_backoff: 5s\n      max_body: 1MiB\n  - {path: /b, upstream: 'http://127.0.0.1:1'}\n"
                     "  - {path: /c, upstream: 'http://127.0.0.1:1', retry: false}\n")
    toml = load_text(tmp_path, 'retry = {on = [429, 503], attempts = 2}\n[[routes]]\nupstream = "http://127.0.0.1:1"\n'
                     'retry = {on = [429, 502, 503, 529], attempts = 3, backoff = "250ms", max_backoff = "5s", '
                     'max_body = "1MiB"}\n[[routes]]\npath = "/b"\nupstream = "http://127.0.0.1:1"\n'
                     '[[routes]]\npath = "/c"\nupstream = "http://127.0.0.1:1"\nretry = false\n', ".toml")
    assert isinstance(yaml, Config) and yaml == toml
    a, b, c = (RetryPolicy.from_config(yaml.retry_for(r)) for r in yaml.routes)
    assert a == RetryPolicy(frozenset({429, 502, 503, 529}), 3, 0.25, 5.0, 1024 * 1024)
    assert b.statuses == {429, 503} and b.attempts == 2  # the top-level default
    assert not c.enabled  # false turns the default off for the route


def test_retry_defaults_are_the_spec_example() -> None:
    assert RetryPolicy.from_config(Retry()) == RetryPolicy(frozenset({429, 502, 503, 529}), 3, 0.25, 5.0, 1024**2)


def test_retry_config_errors_name_the_key(tmp_path: Path) -> None:
    found = load_text(tmp_path, "routes:\n  - upstream: 'http://127.0.0.1:1'\n"
                      "    retry: {on: [99, 600, 429], attempts: 0, max_body: lots, jitter: 1}\n")
    assert isinstance(found, list)
    for key in ("retry.on[0]", "retry.on[1]", "retry.attempts", "retry.max_body", "retry.jitter"):
        assert any(p.startswith(f"routes[0].{key}: ") for p in found), (key, found)
    assert not any("on[2]" in p for p in found)
    found = load_text(tmp_path, "retry: {backoff: 10s, max_backoff: 1s}\n")
    assert isinstance(found, list) and "max_backoff" in found[0]
    found = load_text(tmp_path, "retry: true\n")
    assert isinstance(found, list) and found[0].startswith("retry: ")
    found = load_text(tmp_path, "retry: {attempts: true}\n")
    assert isinstance(found, list) and found[0].startswith("retry.attempts: ")
