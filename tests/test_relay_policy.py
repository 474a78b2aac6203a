"""The relay's policy, sans-io: heartbeat, idle and how a stream ends, with explicit times.

No sockets and no clock: every time here is a number the test chooses, so each rule is checked at
its exact boundary. The real-socket tests (test_streaming.py, test_failures.py) sit on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sseproxy.errors import Outcome, ProxyError, ShuttingDown, UpstreamError, UpstreamIdle
from sseproxy.relay_policy import HEARTBEAT, RelayPolicy, Tick, ending, error_frame


def policy(heartbeat: float = 0.0, idle: float = 0.0, start: float = 100.0) -> RelayPolicy:
    return RelayPolicy(heartbeat=heartbeat, idle=idle, last_read=start, last_write=start)


# -- heartbeat ---------------------------------------------------------------------------------

def test_heartbeat_is_due_after_heartbeat_seconds_of_silence_toward_the_client() -> None:
    p = policy(heartbeat=15)
    assert p.tick(114.999, between_frames=True) is Tick.NOTHING
    assert p.tick(115.0, between_frames=True) is Tick.HEARTBEAT
    assert HEARTBEAT == b": keep-alive\n\n"  # a comment and a blank line: one whole SSE frame


def test_a_write_to_the_client_postpones_the_heartbeat() -> None:
    p = policy(heartbeat=15)
    p.wrote(110.0)
    assert p.deadline() == 125.0
    assert p.tick(124.0, between_frames=True) is Tick.NOTHING
    assert p.tick(125.0, between_frames=True) is Tick.HEARTBEAT


def test_a_read_that_wrote_nothing_does_not_postpone_the_heartbeat() -> None:
    """Upstream bytes that are only part of an event reach no client: the client is still silent."""
    p = policy(heartbeat=15)
    p.read(110.0)
    assert p.tick(115.0, between_frames=True) is Tick.HEARTBEAT


def test_the_heartbeat_written_counts_as_a_write() -> None:
    p = policy(heartbeat=15)
    assert p.tick(115.0, between_frames=True) is Tick.HEARTBEAT
    p.wrote(115.0)  # the relay writes HEARTBEAT through the same path as data
    assert p.tick(129.0, between_frames=True) is Tick.NOTHING
    assert p.deadline() == 130.0


def test_mid_frame_the_heartbeat_is_postponed_never_cut_into_the_frame() -> None:
    p = policy(heartbeat=15)
    assert p.tick(115.0, between_frames=False) is Tick.NOTHING
    assert p.deadline() == 130.0  # asked again a whole heartbeat later, not in a busy loop
    assert p.tick(120.0, between_frames=True) is Tick.NOTHING  # the frame ended: not due yet
    assert p.tick(130.0, between_frames=True) is Tick.HEARTBEAT


def test_heartbeat_off_never_beats() -> None:
    p = policy(heartbeat=0)
    assert p.deadline() is None
    assert p.tick(1e9, between_frames=True) is Tick.NOTHING


# -- idle --------------------------------------------------------------------------------------

def test_idle_fires_after_idle_seconds_of_upstream_silence() -> None:
    p = policy(idle=30)
    assert p.tick(129.999, between_frames=True) is Tick.NOTHING
    assert p.tick(130.0, between_frames=True) is Tick.IDLE


def test_writes_toward_the_client_do_not_hold_off_idle() -> None:
    """Heartbeats keep the client's connection alive; they are no sign of life from the upstream."""
    p = policy(heartbeat=1, idle=10)
    for now in range(101, 110):
        assert p.tick(float(now), between_frames=True) is Tick.HEARTBEAT
        p.wrote(float(now))
    assert p.tick(110.0, between_frames=True) is Tick.IDLE


def test_a_read_postpones_idle() -> None:
    p = policy(idle=10)
    p.read(105.0)
    assert p.tick(114.0, between_frames=True) is Tick.NOTHING
    assert p.tick(115.0, between_frames=True) is Tick.IDLE


def test_idle_fires_mid_frame_too() -> None:
    p = policy(heartbeat=5, idle=10)
    assert p.tick(110.0, between_frames=False) is Tick.IDLE


def test_idle_wins_when_both_are_due() -> None:
    p = policy(heartbeat=10, idle=10)
    assert p.tick(110.0, between_frames=True) is Tick.IDLE


# -- deadline ----------------------------------------------------------------------------------

@pytest.mark.parametrize("heartbeat,idle,read,wrote,expected", [
    (15, 30, 100, 100, 115),    # heartbeat first
    (15, 30, 100, 120, 130),    # writes pushed the heartbeat past idle: idle first
    (15, 0, 100, 110, 125),     # idle off
    (0, 30, 110, 100, 140),     # heartbeat off
    (0, 0, 110, 100, None),     # both off: never wake
])
def test_deadline_is_the_earliest_of_heartbeat_and_idle(heartbeat: float, idle: float, read: float, wrote: float,
                                                        expected: float | None) -> None:
    p = policy(heartbeat=heartbeat, idle=idle)
    p.read(read)
    p.wrote(wrote)
    assert p.deadline() == expected


# -- the same, for any sequence of events ------------------------------------------------------

EIGHTHS = st.integers(0, 400).map(lambda n: n / 8)  # binary fractions: every sum below is exact


@dataclass
class Step:
    kind: str       # "read", "wrote" or "tick"
    after: float    # seconds after the previous step
    between: bool   # for a tick: whether the client is between frames


STEPS = st.lists(st.builds(Step, st.sampled_from(["read", "wrote", "tick"]), EIGHTHS, st.booleans()), max_size=60)


@settings(max_examples=400, deadline=None)
@given(heartbeat=st.sampled_from([0.0, 0.5, 1.0, 15.0]), idle=st.sampled_from([0.0, 1.0, 2.5, 30.0]), steps=STEPS)
def test_any_sequence_keeps_the_rules(heartbeat: float, idle: float, steps: list[Step]) -> None:
    now = 100.0
    p = policy(heartbeat=heartbeat, idle=idle, start=now)
    last_read = last_write = now  # what actually happened, as the relay saw it
    for step in steps:
        now += step.after
        if step.kind == "read":
            p.read(now)
            last_read = now
        elif step.kind == "wrote":
            p.wrote(now)
            last_write = now
        else:
            deadline = p.deadline()
            tick = p.tick(now, between_frames=step.between)
            if tick is Tick.HEARTBEAT:
                assert step.between, "a heartbeat cut into a frame"
                assert heartbeat > 0 and now - last_write >= heartbeat
                p.wrote(now)
                last_write = now
            if tick is Tick.IDLE:
                assert idle > 0 and now - last_read >= idle
            else:
                assert idle == 0 or now - last_read < idle, "idle was due and not reported"
            if step.between and deadline is not None and now >= deadline:
                assert tick is not Tick.NOTHING, "woken at its own deadline with nothing to do"
            if tick is Tick.NOTHING:
                later = p.deadline()
                assert later is None or later > now, "a deadline in the past: the watcher would spin"


# -- how a stream ends -------------------------------------------------------------------------

def test_a_clean_end_releases_the_upstream_connection() -> None:
    end = ending(None, client_left=False, sse=True, between_frames=True)
    assert (end.outcome, end.error_frame, end.truncate, end.release) == (Outcome.OK, None, False, True)


@pytest.mark.parametrize("failure", [None, UpstreamError("reset"), ShuttingDown("stopping")])
@pytest.mark.parametrize("sse", [True, False])
def test_client_left_closes_the_upstream_and_writes_nothing(failure: ProxyError | None, sse: bool) -> None:
    end = ending(failure, client_left=True, sse=sse, between_frames=True)
    assert end.outcome is Outcome.CLIENT_CLOSED
    assert end.error_frame is None  # nobody to write to
    assert end.truncate is False    # already gone
    assert end.release is False     # the upstream request is cancelled, never pooled half-read


@pytest.mark.parametrize("failure,outcome,error_type", [
    (UpstreamError("upstream connection reset"), Outcome.UPSTREAM_ERROR, "upstream_error"),
    (UpstreamIdle("upstream sent nothing for 2s"), Outcome.TIMEOUT, "upstream_error"),
    (ShuttingDown("sseproxy is shutting down"), Outcome.SHUTDOWN, "shutdown"),
])
def test_a_failure_between_events_sends_an_error_event_then_truncates(failure: ProxyError, outcome: Outcome,
                                                                      error_type: str) -> None:
    end = ending(failure, client_left=False, sse=True, between_frames=True)
    assert end.outcome is outcome
    assert end.truncate is True and end.release is False
    assert end.error_frame is not None
    event, data = end.error_frame.decode().removesuffix("\n\n").split("\n")
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {"error": {"type": error_type, "message": failure.message}}


@pytest.mark.parametrize("failure", [UpstreamError("reset"), UpstreamIdle("idle"), ShuttingDown("stopping")])
@pytest.mark.parametrize("sse,between_frames", [(True, False), (False, True), (False, False)])
def test_no_error_event_mid_frame_or_on_a_non_event_stream(failure: ProxyError, sse: bool,
                                                           between_frames: bool) -> None:
    end = ending(failure, client_left=False, sse=sse, between_frames=between_frames)
    assert end.outcome is failure.outcome
    assert end.error_frame is None
    assert end.truncate is True and end.release is False  # still never a clean end


FAILURES = st.sampled_from([None, UpstreamError("reset"), UpstreamIdle("idle"), ShuttingDown("stopping")])


@given(failure=FAILURES, client_left=st.booleans(), sse=st.booleans(), between_frames=st.booleans())
def test_only_a_clean_end_is_ever_released_or_left_untruncated(failure: ProxyError | None, client_left: bool,
                                                               sse: bool, between_frames: bool) -> None:
    end = ending(failure, client_left=client_left, sse=sse, between_frames=between_frames)
    clean = failure is None and not client_left
    assert end.release is clean
    assert (end.outcome is Outcome.OK) is clean
    assert end.truncate is (failure is not None and not client_left)
    assert (end.error_frame is not None) is (failure is not None and not client_left and sse and between_frames)


@given(st.text(max_size=200))
def test_an_error_frame_is_one_whole_event_whatever_the_message(message: str) -> None:
    frame = error_frame("upstream_error", message)
    assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1 and b"\r" not in frame
    assert json.loads(frame.split(b"data: ", 1)[1])["error"]["message"] == message
