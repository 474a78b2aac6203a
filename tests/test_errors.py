"""Every error before the response starts: the status, the JSON body, and that nothing else was
lost: a stream in flight carries on and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from helpers import WAIT, Gate, free_port, raw_request, raw_server, read_head, running_app, running_proxy
from upstreams import echo_app, gated_stream_app


def error_of(body: bytes) -> dict[str, str]:
    return json.loads(body)["error"]


async def test_each_error_row_answers_its_status_and_leaves_other_streams_flowing() -> None:
    gate = Gate()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(WAIT)

    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"this is not a TLS server\r\n\r\n")
        await writer.drain()

    closed_port = free_port()
    async with (running_app(gated_stream_app(gate, "text/event-stream")) as stream_up,
                running_app(echo_app()) as echo_up, raw_server(silent) as silent_up,
                raw_server(not_tls) as plain_up):
        routes = [
            {"name": "stream", "path": "/stream", "upstream": stream_up},
            {"name": "echo", "path": "/echo", "upstream": echo_up},
            {"name": "post-only", "path": "/post", "methods": ["POST"], "upstream": echo_up},
            {"name": "refused", "path": "/refused", "upstream": f"http://127.0.0.1:{closed_port}"},
            {"name": "dns", "path": "/dns", "upstream": "http://no-such-host.invalid:80"},
            {"name": "tls", "path": "/tls", "upstream": plain_up.replace("http://", "https://")},
            {"name": "slow", "path": "/slow", "upstream": silent_up, "timeouts": {"idle": "300ms"}},
        ]
        async with running_proxy({"routes": routes, "max_body": 1000}) as (proxy, _):
            stream = await raw_request(proxy, "GET", "/stream", {})
            gate.release(b"data: before\n\n")
            assert await stream.next_chunk() == b"data: before\n\n"

            cases = [
                ("GET", "/nowhere", {}, b"", 404, "no_route", None),
                ("GET", "/post", {}, b"", 405, "method_not_allowed", "post-only"),
                ("POST", "/echo", {}, b"x" * 1001, 413, "body_too_large", "echo"),
                ("GET", "/refused", {}, b"", 502, "upstream_unavailable", "refused"),
                ("GET", "/dns", {}, b"", 502, "upstream_unavailable", "dns"),
                ("GET", "/tls", {}, b"", 502, "upstream_unavailable", "tls"),
                ("GET", "/slow", {}, b"", 504, "upstream_timeout", "slow"),
                ("GET", "/echo/../stream", {}, b"", 400, "bad_request", None),
            ]
            for method, target, headers, body, status, kind, route in cases:
                resp = await raw_request(proxy, method, target, headers, body)
                assert resp.status == status, target
                assert resp.headers["content-type"].startswith("application/json")
                error = error_of(await resp.body())
                assert error["type"] == kind, target
                assert error["route"] == route, target
                assert error["message"]
                if status == 405:
                    assert resp.headers["allow"] == "POST"
                resp.close()

            gate.release(b"data: after\n\n")  # the stream in flight was not disturbed
            assert await stream.next_chunk() == b"data: after\n\n"
            ok = await raw_request(proxy, "GET", "/echo/still-serving", {})
            assert ok.status == 200
            assert json.loads(await ok.body())["path"] == "/still-serving"
            gate.release(None)
            assert await stream.next_chunk() is None


async def test_body_over_max_body_while_streaming_chunked_is_413() -> None:
    async with running_app(echo_app()) as up, running_proxy(
            {"routes": [{"upstream": up}], "max_body": "1KiB"}) as (proxy, _):
        body = b"".join(b"%x\r\n%s\r\n" % (200, b"y" * 200) for _ in range(10)) + b"0\r\n\r\n"
        resp = await raw_request(proxy, "POST", "/", {"Transfer-Encoding": "chunked"}, body)
        assert resp.status == 413
        assert error_of(await resp.body())["type"] == "body_too_large"
        small = await raw_request(proxy, "POST", "/", {}, b"z" * 1024)
        assert small.status == 200
        assert json.loads(await small.body())["body_size"] == 1024


async def test_tls_certificate_failure_is_502() -> None:
    """A real TLS server with a certificate nobody trusts: the handshake fails, 502."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        key, cert = Path(tmp, "k.pem"), Path(tmp, "c.pem")
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                               "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                              capture_output=True, timeout=60)
        if made.returncode != 0:
            pytest.skip("openssl could not make a certificate")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(WAIT)

        server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            async with running_proxy({"routes": [{"upstream": f"https://127.0.0.1:{port}"}]}) as (proxy, _):
                resp = await raw_request(proxy, "GET", "/", {})
                assert resp.status == 502
                error = error_of(await resp.body())
                assert error["type"] == "upstream_unavailable"
                assert "TLS" in error["message"]
        finally:
            server.close()
            await server.wait_closed()


async def test_round_robin_tries_the_next_upstream_on_connect_failure() -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up:
        dead = f"http://127.0.0.1:{free_port()}"
        async with running_proxy({"routes": [{"upstream": [dead, up, up]}]}) as (proxy, _):
            for i in range(6):
                resp = await raw_request(proxy, "POST", f"/{i}", {}, b"body")
                assert resp.status == 200  # the dead upstream is skipped, the body still arrives whole
                assert json.loads(await resp.body())["body_size"] == 4
    assert [s["path"] for s in seen] == [f"/{i}" for i in range(6)]


async def test_no_retry_after_the_upstream_accepted_the_request() -> None:
    attempts: list[int] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        attempts.append(1)
        writer.transport.abort()

    async with raw_server(hang_up) as broken, running_app(echo_app()) as up, running_proxy(
            {"routes": [{"upstream": [broken, up]}]}) as (proxy, _):
        resp = await raw_request(proxy, "POST", "/", {}, b"not idempotent")
        assert resp.status == 502
        assert error_of(await resp.body())["type"] == "upstream_unavailable"
    assert len(attempts) == 1
