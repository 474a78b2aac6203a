"""``sseproxy doctor``: measure a URL's stream and print why it is batched, as text, JSON or an
SVG plot; the exit status says the verdict."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys

from .cli_run import EXIT_USAGE


def cmd_doctor(args: argparse.Namespace) -> int:
    """Examine ``args.url``; the verdict's exit status, 2 for a bad target, body file or plot file."""
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
