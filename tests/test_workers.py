"""``--workers N``: the supervisor's copy of its workers' output never stops reading."""

from __future__ import annotations

import asyncio
import contextlib

from helpers import Gate, raw_request, running_app
from procs import sseproxy_process
from upstreams import gated_stream_app

from sseproxy.workers import MAX_LINE, LineCopier


def copied(*chunks: bytes) -> list[str]:
    lines: list[str] = []
    copier = LineCopier(lines.append)
    for chunk in chunks:
        copier.feed(chunk)
    copier.close()
    return lines


def test_lines_are_split_across_chunks_and_overlong_ones_cut_with_a_marker() -> None:
    assert copied(b"a\nb", b"c\n", b"\n", b"tail") == ["a", "bc", "", "tail"]
    long = b"x" * (MAX_LINE + 10)
    assert copied(long[:100], long[100:] + b"\nnext\n") == ["x" * MAX_LINE + " …[10 bytes cut]", "next"]
    assert copied(b"\xff\xfe ok\r\n") == ["\ufffd\ufffd ok"]  # undecodable bytes are replaced, never fatal
    assert copied(b"y" * (3 * MAX_LINE)) == ["y" * MAX_LINE + f" …[{2 * MAX_LINE} bytes cut]"]  # cut at EOF too


async def test_a_tap_line_over_64KiB_does_not_hang_the_workers() -> None:
    """One event named with 100 KiB: the supervisor used to lose its reader on that line, after which
    the workers blocked writing their tap lines, and health stopped answering."""
    gate = Gate()
    output = bytearray()

    async def collect(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            output.extend(chunk)

    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, sseproxy_process(
            "serve", "--workers", "2", "--tap", "--listen", "127.0.0.1:0", "--route", f"/={up}") as (proc, url):
        assert proc.stdout is not None
        collector = asyncio.create_task(collect(proc.stdout))
        stream = await raw_request(url, "GET", "/", {})
        events = [f"event: {'n' * 100 * 1024}\ndata: huge\n\n".encode()]
        events += [f"event: {'m' * 8 * 1024}\ndata: {i}\n\n".encode() for i in range(256)]  # 2 MiB of tap lines
        events.append(b"event: last\ndata: end\n\n")
        for event in events:
            gate.release(event)
        body = b""
        while not body.endswith(b"event: last\ndata: end\n\n"):  # the worker relaying it kept going
            body += await stream.next_chunk() or b""
        for _ in range(20):  # each on a new connection: both workers answer health
            health = await raw_request(url, "GET", "/_sseproxy/health", {})
            assert health.status == 200
            health.close()
        for _ in range(100):  # bounded: until the supervisor has copied the last tap line
            if b" last " in output:
                break
            await asyncio.sleep(0.05)
        gate.release(None)
        assert await stream.next_chunk() is None
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    lines = output.decode().splitlines()
    assert any(" nnnnnnnn" in line for line in lines)  # the tap itself cuts the name; the supervisor still bounds lines
    assert all(len(line.encode()) <= MAX_LINE + 40 for line in lines)
    assert sum(" m" in line for line in lines) == 256
    assert any(" last " in line and line.endswith(" end") for line in lines)
