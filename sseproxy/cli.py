"""The command line: ``serve``, ``check``, ``demo``, ``replay`` and ``doctor``, dispatched to the
``cli_*`` module of each; those are the only modules that print or exit.

The grammar is in ``cli_parser``, what the subcommands share in ``cli_run``. Every name this module
had is importable from here as before (``sseproxy.cli:main`` is the console script).
"""

from __future__ import annotations

from collections.abc import Sequence

from .cli_check import cmd_check, route_table
from .cli_demo import cmd_demo
from .cli_doctor import cmd_doctor
from .cli_parser import parser
from .cli_replay import cmd_replay
from .cli_run import EXIT_USAGE
from .cli_serve import cmd_serve, serve_overrides
from .descriptors import raise_open_file_limit

__all__ = [
    "EXIT_USAGE", "cmd_check", "cmd_demo", "cmd_doctor", "cmd_replay", "cmd_serve", "main", "parser",
    "raise_open_file_limit", "route_table", "serve_overrides",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (the process's arguments by default) and run its subcommand; the exit status."""
    args = parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check": cmd_check, "demo": cmd_demo, "replay": cmd_replay, "doctor": cmd_doctor}
    return commands[args.command](args)
