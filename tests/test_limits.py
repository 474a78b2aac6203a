"""Concurrent-stream limits, sans io: slots per key, leases released once, counts that outlive a
reload; and the ``limits`` config keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_text
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from sseproxy.config import Config, Limits
from sseproxy.errors import Outcome, ProxyError, TooManyStreams
from sseproxy.limits import RETRY_AFTER, ConcurrencyLimits, Lease, StreamCounts, token_key


def test_a_key_gets_max_slots_and_a_released_one_is_taken_again() -> None:
    limits = ConcurrencyLimits(2, "client")
    a, b = limits.acquire("10.0.0.1"), limits.acquire("10.0.0.1")
    assert a is not None and b is not None
    assert limits.acquire("10.0.0.1") is None  # full
    assert limits.acquire("10.0.0.2") is not None  # another client has its own slots
    a.release()
    assert limits.active("10.0.0.1") == 1
    assert limits.acquire("10.0.0.1") is not None


def test_release_is_idempotent_so_every_ending_path_may_call_it() -> None:
    limits = ConcurrencyLimits(1, "route")
    lease = limits.acquire("")
    assert lease is not None
    for _ in range(3):  # e.g. the relay's finally, the hang-up handler and the shutdown path
        lease.release()
    assert lease.released and limits.active("") == 0
    other = limits.acquire("")
    assert other is not None
    lease.release()  # a stale lease must not free the slot another stream now holds
    assert limits.acquire("") is None
    with other:
        pass
    assert limits.active("") == 0


def test_idle_keys_are_forgotten_so_memory_follows_the_streams_in_flight() -> None:
    counts = StreamCounts()
    limits = ConcurrencyLimits(5, "client", counts=counts)
    leases = [limits.acquire(f"10.0.{i // 256}.{i % 256}") for i in range(1000)]
    assert len(counts) == 1000
    for lease in leases:
        assert lease is not None
        lease.release()
    assert len(counts) == 0


def test_routes_sharing_counts_are_kept_apart_and_a_reload_keeps_counting() -> None:
    counts = StreamCounts()  # owned by the app: outlives config snapshots
    openai = ConcurrencyLimits(1, "route", scope="openai", counts=counts)
    anthropic = ConcurrencyLimits(1, "route", scope="anthropic", counts=counts)
    held = openai.acquire("")
    assert held is not None and anthropic.acquire("") is not None
    reloaded = ConcurrencyLimits(1, "route", scope="openai", counts=counts)  # compiled from a new config
    assert reloaded.acquire("") is None  # the stream from before the reload still counts
    held.release()
    assert reloaded.acquire("") is not None


def test_zero_means_no_limit() -> None:
    limits = ConcurrencyLimits(0, "route")
    leases = [limits.acquire("") for _ in range(1000)]
    assert all(isinstance(lease, Lease) for lease in leases)
    with pytest.raises(ValueError):
        ConcurrencyLimits(-1, "route")


def test_keys_per_token_client_and_route_and_no_token_is_ever_held() -> None:
    by_token = ConcurrencyLimits(1, "token")
    key = by_token.key_for(token="sk-secret-token", client="10.0.0.1")
    assert key == token_key("sk-secret-token") and "secret" not in key
    assert by_token.key_for(token="another", client="10.0.0.1") != key
    assert by_token.key_for(token=None, client="10.0.0.1") == "-"
    assert ConcurrencyLimits(1, "client").key_for(token="t", client="10.0.0.1") == "10.0.0.1"
    assert ConcurrencyLimits(1, "client").key_for(token="t", client=None) == "-"
    assert ConcurrencyLimits(1, "route").key_for(token="t", client="10.0.0.1") == ""
    lease = by_token.acquire(key)
    assert lease is not None and "sk-secret-token" not in repr(lease.key)


def test_the_refusal_is_a_429_with_retry_after() -> None:
    error = ConcurrencyLimits(20, "token").refusal(route="openai")
    assert isinstance(error, TooManyStreams) and isinstance(error, ProxyError)
    assert (error.status, error.type, error.outcome) == (429, "too_many_streams", Outcome.REFUSED)
    assert error.headers == {"Retry-After": str(RETRY_AFTER)} and RETRY_AFTER == 1
    assert error.body() == {"error": {"type": "too_many_streams", "route": "openai",
                                      "message": "at most 20 concurrent streams per inbound token; try again shortly"}}


class LeaseMachine(RuleBasedStateMachine):
    """Any interleaving of acquires and (repeated) releases: the count is the live leases, never over max."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.limits = ConcurrencyLimits(3, "client")
        self.live: dict[str, int] = {}

    @rule(target=leases, key=st.sampled_from(["a", "b"]))
    def acquire(self, key: str) -> Lease | None:
        lease = self.limits.acquire(key)
        assert (lease is None) == (self.live.get(key, 0) >= 3)
        if lease is not None:
            self.live[key] = self.live.get(key, 0) + 1
        return lease

    @rule(lease=consumes(leases))
    def release(self, lease: Lease | None) -> None:
        if lease is not None:
            self.live[lease.key[1]] -= 1
            lease.release()
            lease.release()

    @invariant()
    def counts_match(self) -> None:
        for key in ("a", "b"):
            assert self.limits.active(key) == self.live.get(key, 0) <= 3


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


def test_limits_config_top_level_default_route_override_and_off(tmp_path: Path) -> None:
    config = load_text(tmp_path, "limits: {concurrent_streams: 20, per: client}\nroutes:\n"
                       "  - {path: /a, upstream: 'http://127.0.0.1:1'}\n"
                       "  - {path: /b, upstream: 'http://127.0.0.1:1', limits: {concurrent_streams: 2}}\n"
                       "  - {path: /c, upstream: 'http://127.0.0.1:1', limits: false}\n")
    assert isinstance(config, Config)
    a, b, c = (config.limits_for(r) for r in config.routes)
    assert a == Limits(concurrent_streams=20, per="client")
    assert b == Limits(concurrent_streams=2, per="route")  # per defaults to route: it needs nothing else
    assert c == Limits(concurrent_streams=0)
    assert Limits.model_validate({"concurrent_streams": "8"}).concurrent_streams == 8  # from ${VAR}
    compiled = [ConcurrencyLimits.from_config(x, scope="r") for x in (a, b, c, None)]
    assert [(x.max, x.per) if x else None for x in compiled] == [(20, "client"), (2, "route"), None, None]


@given(n=st.integers(-5, -1) | st.text(max_size=3).filter(lambda t: not t.strip().isdigit()) | st.booleans()
       | st.floats(0.1, 5.5).filter(lambda f: not f.is_integer()))
@settings(max_examples=20)
def test_limits_config_rejects_what_is_not_a_count(n: object) -> None:
    with pytest.raises(ValueError):
        Limits.model_validate({"concurrent_streams": n})


def test_limits_config_errors_name_the_key(tmp_path: Path) -> None:
    found = load_text(tmp_path, "routes:\n  - upstream: 'http://127.0.0.1:1'\n"
                      "    limits: {concurrent_streams: -1, per: user, burst: 3}\n")
    assert isinstance(found, list)
    assert any(p.startswith("routes[0].limits.concurrent_streams:") for p in found)
    assert any(p.startswith("routes[0].limits.per:") for p in found)
    assert any(p.startswith("routes[0].limits.burst:") for p in found)
    found = load_text(tmp_path, "routes:\n  - {upstream: 'http://127.0.0.1:1', limits: true}\n")
    assert isinstance(found, list) and found[0].startswith("routes[0].limits: ")


def test_per_token_needs_inbound_auth(tmp_path: Path) -> None:
    route = "routes:\n  - {upstream: 'http://127.0.0.1:1', limits: {concurrent_streams: 2, per: token}}\n"
    found = load_text(tmp_path, route)
    assert isinstance(found, list) and "no inbound_auth" in found[0]
    found = load_text(tmp_path, "limits: {concurrent_streams: 2, per: token}\n" + route)
    assert isinstance(found, list) and "limits.per: token" in found[0]
    assert isinstance(load_text(tmp_path, "inbound_auth: {tokens: [t]}\n" + route), Config)
