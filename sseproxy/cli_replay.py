"""``sseproxy replay``: check the flags and the recordings, then serve the recordings back as an
upstream until stopped."""

from __future__ import annotations

import argparse
from pathlib import Path

from .addresses import parse_listen
from .cli_run import announce, fail, run_server
from .errors import ConfigError, Problem
from .logs import Redactor, setup


def cmd_replay(args: argparse.Namespace) -> int:
    """Serve the recordings in ``args.directory``; 2 with every problem in the flags or recordings."""
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
