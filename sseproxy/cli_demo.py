"""``sseproxy demo``: the proxy in front of a mock LLM upstream, the shipped recordings, or (with
``--resume``) a mock and a relay that drops the page's stream; or the mock alone (``--mock-only``)."""

from __future__ import annotations

import argparse

from .addresses import parse_listen
from .cli_run import announce, fail, run_server
from .errors import ConfigError
from .loader import Overrides, load
from .logs import Redactor, setup
from .service import ServeOptions, Service


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until it is stopped; 2 for a ``--listen`` that is not an address."""
    from . import demo

    redactor = Redactor()
    setup("text", "warning", redactor)

    async def mock_only() -> None:
        host, port = parse_listen(args.listen)
        await demo.serve_mock_until_stopped(host, port, announce)

    async def main() -> None:
        if args.resume:
            return await resume()
        if args.recordings:
            replay, port = await demo.start_replay()
            stop_upstream, upstream = replay.stop, f"replay of {demo.RECORDINGS} on http://127.0.0.1:{port}"

            def instructions(proxy_url: str) -> str:
                return demo.recording_instructions(proxy_url, replay.index.recordings)
        else:
            mock, port = await demo.start_mock()
            stop_upstream, upstream = mock.cleanup, f"mock LLM upstream on http://127.0.0.1:{port}"
            instructions = demo.instructions
        try:
            overrides = Overrides(listen=args.listen, routes=(("/", f"http://127.0.0.1:{port}"),))
            config = load(None, overrides)
            service = Service(ServeOptions(None, overrides), config, redactor)

            def on_ready(line: str) -> None:
                announce(upstream)
                announce(line)
                announce(instructions(line.split(" ")[3]))

            await service.run(on_ready)
        finally:
            await stop_upstream()

    async def resume() -> None:
        from . import demo_resume

        mock, port = await demo.start_mock(app=demo_resume.mock_app())
        relay = demo_resume.CuttingRelay(demo_resume.CUT_AFTER, lambda n: announce(
            f"relay: dropped the page's stream after event {n}; EventSource reconnects by itself"))
        host, _ = parse_listen(args.listen)
        try:
            relay_port = await relay.start(host)
            overrides = demo_resume.overrides(args.listen, port)
            service = Service(ServeOptions(None, overrides), load(None, overrides), redactor)

            def on_ready(line: str) -> None:
                proxy_url = line.split(" ")[3]
                relay.target = (host, int(proxy_url.rpartition(":")[2]))
                announce(f"mock LLM upstream on http://127.0.0.1:{port}")
                announce(line)
                announce(demo_resume.instructions(proxy_url, f"{proxy_url.rpartition(':')[0]}:{relay_port}"))

            await service.run(on_ready)
        finally:
            await relay.stop()
            await mock.cleanup()

    try:
        load(None, Overrides(listen=args.listen))
    except ConfigError as e:
        return fail(e.problems)
    return run_server(mock_only() if args.mock_only else main(), args.listen)
