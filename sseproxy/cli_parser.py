"""The command line's grammar: the subcommands, their flags and help, and the checks on a flag's
value that argparse reports as usage errors."""

from __future__ import annotations

import argparse

from .units import parse_duration


def _route_flag(value: str) -> tuple[str, str]:
    prefix, sep, url = value.partition("=")
    if not sep or not prefix or not url:
        raise argparse.ArgumentTypeError(f"{value!r} is not PREFIX=URL (e.g. /api=http://127.0.0.1:3000)")
    return prefix, url


def parser() -> argparse.ArgumentParser:
    """``sseproxy`` with its subcommands: serve, check, demo, replay and doctor."""
    p = argparse.ArgumentParser(prog="sseproxy", description="A reverse proxy that never breaks a stream.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", metavar="FILE", help="YAML or TOML config file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8080)")
    serve.add_argument("--route", metavar="PREFIX=URL", action="append", type=_route_flag, default=[],
                       help="add a route; flags come before the file's routes, so they win")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--watch", action="store_true", help="reload when the config file changes")
    serve.add_argument("--tap", action="store_true", help="print every relayed event as it passes")
    serve.add_argument("--tap-width", type=_width, metavar="N",
                       help="--tap lines at most N characters (default: the terminal's width, or 200 in a pipe)")
    serve.add_argument("--tap-route", action="append", default=[], metavar="NAME",
                       help="--tap only this route (by name, or path when it has none); repeatable")
    serve.add_argument("--tap-field", metavar="PATH",
                       help="--tap shows this JSON field of each event's data, e.g. choices.0.delta.content")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N processes serving the same port (SO_REUSEPORT)")
    serve.add_argument("--record", metavar="DIR",
                       help="record every exchange into DIR, one JSON file each (the top-level `record` key)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for each worker
    check = sub.add_parser("check", help="validate a config and print the resolved route table")
    check.add_argument("file")
    check.add_argument("--allow-missing-env", action="store_true",
                       help="validate without the secrets (e.g. in CI): unset variables and unreadable secret "
                            "files get placeholders, and are listed")
    demo = sub.add_parser("demo", help="a mock LLM upstream (or the shipped recordings) with the proxy in front")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080")
    demo_upstream = demo.add_mutually_exclusive_group()
    demo_upstream.add_argument("--mock-only", action="store_true",
                               help="serve only the mock LLM upstream on --listen (e.g. as a compose service)")
    demo_upstream.add_argument("--recordings", action="store_true",
                               help="put the proxy in front of the shipped recordings (OpenAI, Anthropic, a stream "
                                    "cut mid-answer), replayed with their recorded timing")
    demo_upstream.add_argument("--resume", action="store_true",
                               help="resumable streams: hang up mid-answer and pick up with Last-Event-ID (curl), "
                                    "or watch a page reconnect after a relay drops its stream")
    replay = sub.add_parser("replay", help="serve recorded exchanges back as an upstream, with their timing")
    replay.add_argument("directory", metavar="DIR", help="a directory of recordings (serve --record DIR)")
    replay.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080",
                        help="address to listen on (default 127.0.0.1:8080)")
    replay.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                        help="play X times as fast (default 1; 0 sends every frame at once)")
    replay.add_argument("--ignore-field", action="append", default=[], metavar="NAME",
                        help="leave the JSON body key NAME out of matching, at any depth (repeatable)")
    replay.add_argument("--fallback", metavar="URL", help="send requests no recording matches to URL")
    replay.add_argument("--record", metavar="DIR2", help="with --fallback: record those exchanges into DIR2")
    replay.add_argument("--tap", action="store_true", help="print every replayed event as it is sent")
    replay.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")
    replay.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _doctor_parser(sub.add_parser("doctor", help="why is my stream batched? measure a URL's stream, name the causes"))
    return p


def _width(value: str) -> int:
    if not value.isdigit() or int(value) < 20:
        raise argparse.ArgumentTypeError(f"{value!r} is not a width (a whole number of characters, at least 20)")
    return int(value)


def _speed(value: str) -> float:
    try:
        speed = float(value.removesuffix("x"))
    except ValueError:
        speed = -1.0
    if not speed >= 0 or speed == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a speed (a number >= 0, e.g. 1, 2.5 or 0)")
    return speed


def _doctor_parser(doctor: argparse.ArgumentParser) -> None:
    def header(value: str) -> tuple[str, str]:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip() or any(c in name.strip() for c in " \t"):
            raise argparse.ArgumentTypeError(f"{value!r} is not 'Name: value'")
        return name.strip(), rest.strip()

    def duration(value: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    doctor.add_argument("url", help="the stream's URL, http:// or https://")
    doctor.add_argument("-X", "--request", dest="method", metavar="METHOD", help="GET, or POST with -d")
    doctor.add_argument("-d", "--data", metavar="BODY", help="request body (@FILE reads it from FILE)")
    doctor.add_argument("-H", "--header", action="append", type=header, default=[], metavar="'Name: value'",
                        help="a request header; 'Name:' removes a default one")
    doctor.add_argument("--timeout", type=duration, default=30.0, help="how long to follow each request (30s)")
    doctor.add_argument("-k", "--insecure", action="store_true", help="do not verify the TLS certificate")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument("--plot", metavar="FILE.svg", help="write an SVG of events against time")
