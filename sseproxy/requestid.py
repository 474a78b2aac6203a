"""Request ids: the client's ``X-Request-Id`` when it is a sane token, else a new one (32
hex digits, as a uuid4's hex: 128 random bits from ``random``, not the OS's generator, which costs a
system call per request; an id names a request, it guards nothing).

The id goes upstream, back to the client, into the access log and onto every ``--tap`` line, so a
tap line, a log line and the upstream's own log can be matched. A client's id is kept only when it
is short and made of safe characters: it is written into logs and headers verbatim.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

HEADER = "X-Request-Id"
_SAFE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # bounds what a client can put in a log line


def request_id(headers: Mapping[str, str]) -> str:
    given = headers.get(HEADER, "").strip()
    return given if _SAFE.fullmatch(given) else f"{random.getrandbits(128):032x}"
