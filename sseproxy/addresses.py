"""Addresses as a config or a flag writes them: upstream URLs, host names, listen addresses.

Plain functions that raise ``ValueError`` naming the value, so that the config's models, the
command line and the workers check and parse an address the same way.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")  # RFC 1123, with '_' as container names use


def host_name_problem(host: str) -> str | None:
    """Why ``host`` (as ``urlsplit`` gives it: lower case, IPv6 without brackets) cannot be
    connected to, or None. Checked here because the resolver's refusal would be a 500 per request."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(unquote(host))
        except ValueError:
            return "not an IPv6 address"
        return None
    try:
        name = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return "not a valid internationalised name"
    name = name.removesuffix(".")
    labels = name.split(".")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return "it ends in a number but is not an IPv4 address"
        return None
    if len(name) > 253:
        return "longer than 253 characters"
    for label in labels:
        if not label:
            return "it has an empty label"
        if len(label) > 63:
            return "a label is longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return "labels are letters, digits, '-' and '_', and start and end with a letter or digit"
    return None


def check_upstream_url(value: object) -> str:
    """``value`` if it is an http(s) base URL whose host and port can be connected to."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an http(s) URL")
    if re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError("an upstream URL may not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an upstream is a base URL, without query or fragment")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as e:
        why = "out of range (0 to 65535)" if "out of range" in str(e) else "not a number"
        raise ValueError(f"{value!r}: the port is {why}") from None
    problem = host_name_problem(parts.hostname)
    if problem is not None:
        raise ValueError(f"{parts.hostname!r} is not a valid host name: {problem}")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; raises ``ValueError`` naming the value."""
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and int(port) > 65535:
        raise ValueError(f"{value!r}: port {int(port)} is out of range (0 to 65535)")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"{value!r} has no host (use 0.0.0.0:PORT to listen on every address)")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) can only be reached from this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
