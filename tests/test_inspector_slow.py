"""A slow inspector tab: a feed client that reads nothing while 100 gated streams relay. Every
relayed stream still gets each event as its gate opens, the feed's queue stays at its cap (the
proxy's memory for it is bounded), and once the tab reads again it is told how many items it
missed and gets a fresh snapshot to carry on from."""

from __future__ import annotations

import asyncio
import socket

from helpers import OPEN_CONNECTIONS, WAIT, Gate, RawResponse, read_head, running_app, running_proxy
from inspector_helpers import Feed, gated_paths_app, stream_client

STREAMS = 100
ROUNDS = 20
ITEM = 300  # bytes of a feed item for one of these events, at least (the preview cuts the data at 200)


def events_per_release() -> int:
    """Enough events that the feed overflows the kernel's send buffer on its socket (loopback
    autotunes it up to tcp_wmem's maximum, ~4 MB) and then the queue."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            kernel = int(f.read().split()[2])
    except OSError:
        kernel = 4 * 1024 * 1024
    return -(-(kernel * 2 + 1000 * ITEM) // (STREAMS * ROUNDS * ITEM))


PER_RELEASE = events_per_release()
EVENT = b"data: " + b"y" * 1000 + b"\n\n"
RELEASE = EVENT * PER_RELEASE  # one upstream write of PER_RELEASE events


async def stalled_feed(proxy: str) -> RawResponse:
    """A feed request from a client with a tiny receive buffer that then reads nothing."""
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    OPEN_CONNECTIONS.append(writer)
    writer.write(f"GET /_sseproxy/streams/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 200"), head
    return RawResponse(200, {"transfer-encoding": "chunked"}, reader, writer)


async def test_a_feed_that_reads_nothing_never_slows_a_stream() -> None:
    gates = {f"/s/{i}": Gate() for i in range(STREAMS)}
    async with running_app(gated_paths_app(gates)) as up, \
            running_proxy({"routes": [{"upstream": up}]}) as (proxy, runtime):
        inspector = runtime.inspector
        slow = Feed(await stalled_feed(proxy))
        [subscriber] = inspector.subscribers
        clients = [await stream_client(proxy, path) for path in gates]
        peak = 0
        for k in range(ROUNDS):
            for gate in gates.values():
                gate.release(RELEASE)
            for i, client in enumerate(clients):
                # each stream's event arrives while the feed client reads nothing
                assert await client.next_chunk(WAIT) == RELEASE, (k, i)
            peak = max(peak, len(subscriber.items))
            assert len(subscriber.items) <= subscriber.cap  # the bound on this tab's memory
        assert peak == subscriber.cap and subscriber.dropped_total > 0
        assert subscriber.dropped_total + len(subscriber.items) < STREAMS * (ROUNDS * PER_RELEASE + 2)  # some went

        # the tab reads again: what was queued, then how much it missed, then a snapshot
        missed, told = subscriber.dropped_total, 0
        while told < missed:  # (the handler may be stuck writing an earlier gap's notice: several notices)
            _, dropped = await slow.until("dropped", timeout=WAIT)
            told += dropped["count"]
            event, snapshot = await slow.next()
            assert event == "snapshot"
        assert told == missed
        assert event == "snapshot" and len(snapshot["active"]) == STREAMS
        assert all(s["events"] == ROUNDS * PER_RELEASE for s in snapshot["active"])
        for gate in gates.values():
            gate.release(None)
        for client in clients:
            assert await client.next_chunk(WAIT) is None
        assert len(inspector.ended) == inspector.ended.maxlen == 100 and not inspector.active
