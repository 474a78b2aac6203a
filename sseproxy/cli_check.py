"""``sseproxy check``: validate a config and print the route table requests will use, with every
secret redacted."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_run import fail
from .config import dump_for_humans
from .errors import ConfigError
from .loader import Expansion, load
from .recording import SECRET_HEADERS
from .runtime import Snapshot, compile_config
from .units import format_duration


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
    """Print ``ok``, the variables the config needs and its route table; 2 with the problems found."""
    found = Expansion(allow_missing=args.allow_missing_env)
    try:
        config = load(args.file, found=found)
    except ConfigError as e:
        return fail(e.problems)
    print(f"{args.file}: ok, {len(config.routes)} route{'s' if len(config.routes) != 1 else ''}")
    if found.needed:
        missing = f"; not set here, checked with placeholders: {', '.join(sorted(found.missing))}" \
            if found.missing else ""
        print(f"needs: {', '.join(sorted(found.needed))}{missing}")
    print(route_table(compile_config(config), frozenset(found.templated)))
    return 0
