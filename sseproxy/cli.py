"""The command line: ``serve``, ``check``, ``demo``, ``replay`` and ``doctor``. The only module that prints or exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .addresses import parse_listen
from .cli_check import cmd_check
from .cli_check import route_table as route_table  # importable from here, as before
from .cli_parser import parser
from .cli_run import EXIT_USAGE, announce, fail, run_server
from .cli_serve import cmd_serve
from .cli_serve import raise_open_file_limit as raise_open_file_limit  # importable from here, as before
from .cli_serve import serve_overrides as serve_overrides  # importable from here, as before
from .errors import ConfigError, Problem
from .loader import Overrides, load
from .logs import Redactor, setup
from .service import ServeOptions, Service


def cmd_demo(args: argparse.Namespace) -> int:
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


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay

    if args.record and not args.fallback:
        return fail([Problem("command line", "--record", "records what --fallback answers: give --fallback URL")])
    problems = []
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        problems.append(Problem("command line", "--listen", str(e)))
    if args.fallback and (problem := replay.check_fallback(args.fallback)):
        problems.append(Problem("command line", "--fallback", problem))
    if problems:
        return fail(problems)
    options = replay.ReplayOptions(
        Path(args.directory), speed=args.speed, ignore_fields=tuple(args.ignore_field), fallback=args.fallback,
        record=Path(args.record) if args.record else None, tap=args.tap)
    try:
        index = replay.load_index(options)
    except ConfigError as e:
        return fail(e.problems)
    setup(args.log_format, args.log_level, Redactor())

    async def main() -> None:
        await replay.run(options, host, port, announce, index)

    return run_server(main(), args.listen)
def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .doctor import plot, report

    method = (args.method or ("POST" if args.data is not None else "GET")).upper()
    try:
        doctor.parse_target(args.url)
        if args.data is not None and args.data.startswith("@"):  # -d @FILE, as curl reads it
            with open(args.data[1:], "rb") as f:
                body = f.read()
        else:
            body = (args.data or "").encode()
    except (ValueError, OSError) as e:
        print(f"sseproxy doctor: {e}", file=sys.stderr)
        return EXIT_USAGE
    request = doctor.Request(args.url, method, tuple(args.header), body, args.timeout, args.insecure)
    progress = (lambda line: print(f"... {line}", file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    try:
        result = asyncio.run(doctor.examine(request, progress))
    except KeyboardInterrupt:
        return 130
    if result.browser.failure is not None:  # no response to report on: one line says why
        print(f"sseproxy doctor: {result.causes[0].message}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(result, method, args.url), indent=2))
    elif result.browser.failure is None:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(report.text(result, method, args.url, colour, shutil.get_terminal_size().columns))
    if args.plot:
        try:
            with open(args.plot, "w", encoding="utf-8") as f:
                f.write(plot.svg(result, args.url))
        except OSError as e:
            print(f"sseproxy doctor: cannot write {args.plot}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
    return doctor.EXIT_CODES[result.verdict]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check": cmd_check, "demo": cmd_demo, "replay": cmd_replay, "doctor": cmd_doctor}
    return commands[args.command](args)
