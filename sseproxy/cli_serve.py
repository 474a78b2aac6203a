"""``sseproxy serve``: load the config, set up logging, the open-file limit and the descriptor table, then
run the proxy in this process or supervise ``--workers`` processes running the same command."""

from __future__ import annotations

import argparse
import os

from . import workers
from .cli_run import announce, fail, run_server
from .descriptors import raise_open_file_limit, size_table
from .errors import ConfigError, Problem
from .loader import Overrides, load
from .logs import Redactor, setup
from .service import ServeOptions, Service, TapOptions


def serve_overrides(args: argparse.Namespace) -> Overrides:
    """What ``serve``'s flags say over the config file: ``--listen``, ``--route`` and ``--record``."""
    extra = {"record": args.record} if args.record else {}
    return Overrides(listen=args.listen, routes=tuple(args.route), extra=extra)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy until it is stopped; 2 for a config that does not load or has no routes."""
    overrides = serve_overrides(args)
    try:
        config = load(args.config, overrides)
    except ConfigError as e:
        return fail(e.problems)
    if not config.routes:
        return fail([Problem(args.config or "command line", "routes",
                             "no routes: give --route PREFIX=URL or a config file with routes")])
    redactor = Redactor()
    formatter = setup(args.log_format or "text", args.log_level, redactor,
                      access=args.log_format or config.access_log)
    raise_open_file_limit()

    if args.workers > 1:
        return _supervise(args, config.listen)

    size_table()  # in this process, which serves: a supervisor of --workers holds no streams

    async def main() -> None:
        tap = TapOptions(width=args.tap_width, routes=tuple(args.tap_route), field=args.tap_field) if _tapping(args) \
            else None
        options = ServeOptions(args.config, overrides, watch=args.watch, tap=tap, reuse_port=args.reuse_port,
                               metrics_dir=os.environ.get(workers.MULTIPROC_ENV), log_format=args.log_format)
        await Service(options, config, redactor, formatter).run(announce)

    return run_server(main(), config.listen)


def _tapping(args: argparse.Namespace) -> bool:
    """``--tap``, or any ``--tap-*`` option, which says it too."""
    return bool(args.tap or args.tap_width or args.tap_route or args.tap_field)


def _tap_args(args: argparse.Namespace) -> list[str]:
    if not _tapping(args):
        return []
    return ["--tap", *(["--tap-width", str(args.tap_width)] if args.tap_width else []),
            *(a for name in args.tap_route for a in ("--tap-route", name)),
            *(["--tap-field", args.tap_field] if args.tap_field else [])]


def _supervise(args: argparse.Namespace, listen: str) -> int:
    """``--workers N``: the same command for each worker, without --workers and --listen."""
    worker_args = [*(["--config", args.config] if args.config else []),
                   *(a for prefix, url in args.route for a in ("--route", f"{prefix}={url}")),
                   *(["--log-format", args.log_format] if args.log_format else []),
                   "--log-level", args.log_level, *(["--watch"] if args.watch else []),
                   *_tap_args(args), *(["--record", args.record] if args.record else [])]
    status = 0

    async def main() -> None:
        nonlocal status
        status = await workers.supervise(worker_args, listen, args.workers, announce)

    return run_server(main(), listen) or status
