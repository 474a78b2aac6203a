"""The command line: ``serve``, ``check``, ``demo``, ``replay`` and ``doctor``. The only module that prints or exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import workers
from .addresses import parse_listen
from .config import dump_for_humans
from .errors import ConfigError, Problem
from .loader import Expansion, Overrides, load
from .logs import Redactor, setup
from .recording import SECRET_HEADERS
from .runtime import Snapshot, compile_config
from .service import ServeOptions, Service, TapOptions
from .units import format_duration, parse_duration

EXIT_USAGE = 2


def _route_flag(value: str) -> tuple[str, str]:
    prefix, sep, url = value.partition("=")
    if not sep or not prefix or not url:
        raise argparse.ArgumentTypeError(f"{value!r} is not PREFIX=URL (e.g. /api=http://127.0.0.1:3000)")
    return prefix, url


def parser() -> argparse.ArgumentParser:
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


def _fail(problems: list[Problem]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_USAGE


def _run(coro: Coroutine[Any, Any, None], listen: str) -> int:
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


def raise_open_file_limit() -> None:
    """Each stream holds two descriptors (client and upstream): lift the soft limit to the hard one,
    as nginx's worker_rlimit_nofile would, so a default soft limit of 1,024 does not cap a server at
    about 500 streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _announce(line: str) -> None:
    print(line, flush=True)


def serve_overrides(args: argparse.Namespace) -> Overrides:
    extra = {"record": args.record} if args.record else {}
    return Overrides(listen=args.listen, routes=tuple(args.route), extra=extra)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = serve_overrides(args)
    try:
        config = load(args.config, overrides)
    except ConfigError as e:
        return _fail(e.problems)
    if not config.routes:
        return _fail([Problem(args.config or "command line", "routes",
                              "no routes: give --route PREFIX=URL or a config file with routes")])
    redactor = Redactor()
    formatter = setup(args.log_format or "text", args.log_level, redactor,
                      access=args.log_format or config.access_log)
    raise_open_file_limit()

    if args.workers > 1:
        return _supervise(args, config.listen)

    async def main() -> None:
        tap = TapOptions(width=args.tap_width, routes=tuple(args.tap_route), field=args.tap_field) if _tapping(args) \
            else None
        options = ServeOptions(args.config, overrides, watch=args.watch, tap=tap, reuse_port=args.reuse_port,
                               metrics_dir=os.environ.get(workers.MULTIPROC_ENV), log_format=args.log_format)
        await Service(options, config, redactor, formatter).run(_announce)

    return _run(main(), config.listen)


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
        status = await workers.supervise(worker_args, listen, args.workers, _announce)

    return _run(main(), listen) or status


def _rules(rules: Any, loc: str, templated: frozenset[str] | None) -> dict[str, Any]:
    """Header rules as written; a value that came from ``${…}`` is redacted, a literal one (such as
    ``anthropic-version: 2023-06-01``) is shown, unless its header is a credential (a key pasted into
    the file is still a key). With ``templated`` unknown, every value is redacted."""
    shown: dict[str, Any] = {}
    for kind in ("set", "add"):
        values = {name: ("<redacted>" if templated is None or f"{loc}.{kind}.{name}" in templated
                         or name.lower() in SECRET_HEADERS
                         else (value.get_secret_value() if hasattr(value, "get_secret_value") else value))
                  for name, value in getattr(rules, kind).items()}
        if values:
            shown[kind] = values
    if rules.remove:
        shown["remove"] = list(rules.remove)
    return shown


def _cors(policy: Any) -> str:
    if policy is None or not policy.enabled:
        return "off"
    fields = {k: v for k, v in dump_for_humans(policy).items() if k != "enabled"}
    return json.dumps(fields)


def route_table(snapshot: Snapshot, templated: frozenset[str] | None = None) -> str:
    """The routes as ``compile_config`` built them (what requests will use). Secrets are redacted:
    every value that came from ``${…}`` (``templated``: their key paths), or every injected value and
    token when that is unknown."""
    config = snapshot.config
    lines = [f"listen {config.listen}  public={str(config.public).lower()}  admin={snapshot.admin_prefix}  "
             f"max_body={snapshot.max_body}  access_log={snapshot.access_log}",
             f"allowed_hosts {', '.join(sorted(snapshot.allowed_hosts))}"]
    if config.inbound_auth is not None:
        count = len(config.inbound_auth.tokens)
        lines.append(f"inbound_auth header={config.inbound_auth.header} tokens={count} (redacted)")
    else:
        lines.append("inbound_auth none")
    lines.append(f"cors {_cors(config.cors)}")
    if snapshot.trusted_proxies:
        lines.append(f"trusted_proxies {', '.join(str(n) for n in snapshot.trusted_proxies)}")
    for i, (route, written) in enumerate(zip(snapshot.routes, config.routes, strict=True)):
        host = route.host or "*"
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        upstreams = ", ".join(str(u.with_user(None)) if u.user or u.password else str(u) for u in route.upstreams.urls)
        lines.append(f"[{i}] {route.label}: {host}{route.prefix} {methods} -> {upstreams}")
        lines.append(f"    strip_prefix={str(route.strip_prefix).lower()} stream={route.stream} "
                     f"websocket={str(route.websocket).lower()} connect={format_duration(route.timeouts.connect)} "
                     f"idle={format_duration(route.timeouts.idle)} heartbeat={format_duration(route.heartbeat)} "
                     f"compression={route.compression} cors={'on' if route.cors is not None else 'off'}"
                     + (f" record={record}" if (record := config.record_dir(written)) else ""))
        if route.resume is not None:
            scheme, sep, rest = route.resume.store.partition("://")
            store = f"{scheme}{sep}{rest.rpartition('@')[2]}"  # no password
            lines.append(f"    resume: store={store} ttl={format_duration(route.resume.ttl)} "
                         f"detach={format_duration(route.resume.detach)} max_bytes={route.resume.max_bytes}")
        if written.cors is not None:
            lines.append(f"    cors: {_cors(written.cors)}")
        for label, rules in (("request_headers", written.request_headers),
                             ("response_headers", written.response_headers)):
            shown = _rules(rules, f"routes[{i}].{label}", templated)
            if shown:
                lines.append(f"    {label}: {json.dumps(shown)}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    found = Expansion(allow_missing=args.allow_missing_env)
    try:
        config = load(args.file, found=found)
    except ConfigError as e:
        return _fail(e.problems)
    print(f"{args.file}: ok, {len(config.routes)} route{'s' if len(config.routes) != 1 else ''}")
    if found.needed:
        missing = f"; not set here, checked with placeholders: {', '.join(sorted(found.missing))}" \
            if found.missing else ""
        print(f"needs: {', '.join(sorted(found.needed))}{missing}")
    print(route_table(compile_config(config), frozenset(found.templated)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    redactor = Redactor()
    setup("text", "warning", redactor)

    async def mock_only() -> None:
        host, port = parse_listen(args.listen)
        await demo.serve_mock_until_stopped(host, port, _announce)

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

            def announce(line: str) -> None:
                _announce(upstream)
                _announce(line)
                _announce(instructions(line.split(" ")[3]))

            await service.run(announce)
        finally:
            await stop_upstream()

    async def resume() -> None:
        from . import demo_resume

        mock, port = await demo.start_mock(app=demo_resume.mock_app())
        relay = demo_resume.CuttingRelay(demo_resume.CUT_AFTER, lambda n: _announce(
            f"relay: dropped the page's stream after event {n}; EventSource reconnects by itself"))
        host, _ = parse_listen(args.listen)
        try:
            relay_port = await relay.start(host)
            overrides = demo_resume.overrides(args.listen, port)
            service = Service(ServeOptions(None, overrides), load(None, overrides), redactor)

            def announce(line: str) -> None:
                proxy_url = line.split(" ")[3]
                relay.target = (host, int(proxy_url.rpartition(":")[2]))
                _announce(f"mock LLM upstream on http://127.0.0.1:{port}")
                _announce(line)
                _announce(demo_resume.instructions(proxy_url, f"{proxy_url.rpartition(':')[0]}:{relay_port}"))

            await service.run(announce)
        finally:
            await relay.stop()
            await mock.cleanup()

    try:
        load(None, Overrides(listen=args.listen))
    except ConfigError as e:
        return _fail(e.problems)
    return _run(mock_only() if args.mock_only else main(), args.listen)


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay

    if args.record and not args.fallback:
        return _fail([Problem("command line", "--record", "records what --fallback answers: give --fallback URL")])
    problems = []
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        problems.append(Problem("command line", "--listen", str(e)))
    if args.fallback and (problem := replay.check_fallback(args.fallback)):
        problems.append(Problem("command line", "--fallback", problem))
    if problems:
        return _fail(problems)
    options = replay.ReplayOptions(
        Path(args.directory), speed=args.speed, ignore_fields=tuple(args.ignore_field), fallback=args.fallback,
        record=Path(args.record) if args.record else None, tap=args.tap)
    try:
        index = replay.load_index(options)
    except ConfigError as e:
        return _fail(e.problems)
    setup(args.log_format, args.log_level, Redactor())

    async def main() -> None:
        await replay.run(options, host, port, _announce, index)

    return _run(main(), args.listen)
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
