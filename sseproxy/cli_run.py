"""How a subcommand runs and ends: a server run until it stops, on uvloop where it is installed;
problems printed, one a line, with the exit status for a usage error; ready lines printed at once.

Shared by the ``cli_*`` modules, which are the only ones that print or exit.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from .errors import Problem

EXIT_USAGE = 2


def fail(problems: list[Problem]) -> int:
    """Print each problem on stderr; the exit status for a usage error."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_USAGE


def run_server(coro: Coroutine[Any, Any, None], listen: str) -> int:
    """Run a server until it stops, on uvloop where it is installed; 1 if it cannot listen."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(coro)
    except OSError as e:
        print(f"sseproxy: cannot listen on {listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def announce(line: str) -> None:
    """Print a line at once (a parent process may be waiting for the ready line)."""
    print(line, flush=True)
