"""Recordings: one exchange as one JSON file, written whole, readable and editable by hand.

The format (SPEC, "Record and replay")::

    {"request": {"method", "path", "query", "headers": [[name, value], ...], "body"},
     "response": {"status", "headers": [[name, value], ...], "ttfb_ms",
                  "frames": [{"t": ms since the request started, "data": the frame's text}, ...] | "body",
                  "end": "ok" | "error"}}

A frame's ``data`` is the frame exactly as the client got it, its terminating blank line (or line
end) included, so a replay is byte for byte. Bodies and frame data are text, or ``{"base64": ...}``
when they are not UTF-8. Keys always come in this order; header pairs and frames take one line each,
so a diff of two recordings reads like a diff of two streams.

Pure data and pure functions, plus the two that touch files: ``write_atomic`` and ``load_dir``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from .errors import ConfigError, Problem

REDACTED = "<redacted>"
# Header values never written, whatever they hold (SPEC). Compared in lower case.
SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "x-api-key", "api-key", "proxy-authorization"})
SUFFIX = ".json"
# Temp files are ".<name>.<random>.tmp": they start with a dot and do not end in .json, so a
# loader (this one, or a shell glob) never sees a file that is still being written.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
SLUG_MAX = 80  # characters of the path kept in a file name
MIN_PART = 8   # a part of a secret this long is redacted on its own; shorter ones ("Bearer") are not

Headers = tuple[tuple[str, str], ...]
End = Literal["ok", "error"]


@dataclass(frozen=True)
class Frame:
    t: float       # ms since the request arrived
    data: bytes    # the frame as the client got it, terminator included


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str     # raw, without "?"
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    headers: Headers
    ttfb_ms: float
    frames: tuple[Frame, ...] | None   # a stream: its frames; None for a response that is not one
    body: bytes | None                 # not a stream: its body
    end: End = "ok"

    @property
    def streamed(self) -> bool:
        return self.frames is not None


@dataclass(frozen=True)
class Recording:
    request: RecordedRequest
    response: RecordedResponse

    def to_json(self) -> dict[str, Any]:
        req, resp = self.request, self.response
        response: dict[str, Any] = {"status": resp.status, "headers": [list(h) for h in resp.headers],
                                    "ttfb_ms": resp.ttfb_ms}
        if resp.frames is not None:
            response["frames"] = [{"t": f.t, "data": encode_body(f.data)} for f in resp.frames]
        else:
            response["body"] = encode_body(resp.body or b"")
        response["end"] = resp.end
        return {"request": {"method": req.method, "path": req.path, "query": req.query,
                            "headers": [list(h) for h in req.headers], "body": encode_body(req.body)},
                "response": response}

    @classmethod
    def from_json(cls, value: Any) -> Recording:
        """Parse a recording, leniently where a hand-written file may leave things out (query,
        headers, bodies, ttfb, end); raises ``RecordingError`` naming the key that is wrong."""
        root = _mapping(value, "")
        req = _mapping(root.get("request"), "request")
        resp = _mapping(root.get("response"), "response")
        if "frames" in resp and "body" in resp:
            raise RecordingError("response", 'has both "frames" and "body": a stream has frames, others a body')
        frames: tuple[Frame, ...] | None = None
        if "frames" in resp:
            frames = tuple(_frame(f, f"response.frames[{i}]") for i, f in enumerate(_list(resp["frames"],
                                                                                             "response.frames")))
        end = resp.get("end", "ok")
        if end not in ("ok", "error"):
            raise RecordingError("response.end", f'{end!r} is not "ok" or "error"')
        request = RecordedRequest(
            method=_str(req.get("method", "GET"), "request.method").upper(),
            path=_str(req.get("path"), "request.path"),
            query=_str(req.get("query", ""), "request.query").removeprefix("?"),
            headers=_headers(req.get("headers", []), "request.headers"),
            body=decode_body(req.get("body", ""), "request.body"),
        )
        if not request.path.startswith("/"):
            raise RecordingError("request.path", f"{request.path!r} must start with /")
        response = RecordedResponse(
            status=_int(resp.get("status", 200), "response.status"),
            headers=_headers(resp.get("headers", []), "response.headers"),
            ttfb_ms=_number(resp.get("ttfb_ms", 0), "response.ttfb_ms"),
            frames=frames,
            body=None if frames is not None else decode_body(resp.get("body", ""), "response.body"),
            end=end,
        )
        return cls(request, response)


class RecordingError(ValueError):
    def __init__(self, loc: str, message: str):
        super().__init__(f"{loc}: {message}" if loc else message)
        self.loc = loc
        self.message = message


def _mapping(value: Any, loc: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RecordingError(loc, "must be an object" if value is not None else "required")
    return value


def _list(value: Any, loc: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecordingError(loc, "must be a list")
    return value


def _str(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise RecordingError(loc, "must be a string" if value is not None else "required")
    return value


def _int(value: Any, loc: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 999:
        raise RecordingError(loc, f"{value!r} is not an HTTP status")
    return value


def _number(value: Any, loc: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RecordingError(loc, f"{value!r} is not a number of milliseconds >= 0")
    return float(value)


def _headers(value: Any, loc: str) -> Headers:
    out = []
    for i, pair in enumerate(_list(value, loc)):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordingError(f"{loc}[{i}]", "must be [name, value]")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _frame(value: Any, loc: str) -> Frame:
    frame = _mapping(value, loc)
    return Frame(t=_number(frame.get("t"), f"{loc}.t"), data=decode_body(frame.get("data"), f"{loc}.data"))


def encode_body(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def decode_body(value: Any, loc: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error:
            raise RecordingError(loc, "invalid base64") from None
    raise RecordingError(loc, 'must be text or {"base64": "..."}' if value is not None else "required")


class Redaction:
    """What a recording must never hold: every secret (injected values, inbound tokens) wherever it
    appears, and the values of the headers in ``SECRET_HEADERS``.

    An injected value is often a scheme and a credential (``Bearer sk-...``), and a body shows the
    credential alone (an API echoing the key it refused), so each whitespace-separated part of a
    secret of ``MIN_PART`` characters or more is a secret too. Secrets are replaced longest first,
    so one that contains another is never left half shown; their percent-encoded forms too (URLs)."""

    def __init__(self, secrets: Iterable[str] = ()):
        parts = {p for s in secrets if s for p in (s, *(part for part in s.split() if len(part) >= MIN_PART))}
        forms = {form for p in parts for form in (p, quote(p, safe=""), quote_plus(p))}
        self.secrets: tuple[str, ...] = tuple(sorted(forms, key=len, reverse=True))
        self._bytes = tuple(s.encode() for s in self.secrets)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return value

    def bytes(self, value: bytes) -> bytes:
        for secret in self._bytes:
            value = value.replace(secret, REDACTED.encode())
        return value

    def headers(self, headers: Headers) -> Headers:
        return tuple((name, REDACTED if name.lower() in SECRET_HEADERS else self.text(value))
                     for name, value in headers)

    def frames(self, frames: Sequence[Frame]) -> tuple[Frame, ...]:
        """Each frame redacted. A secret split between pieces (an unframed stream cut by reads)
        would survive frame-by-frame replacement, so the pieces it spans are joined first, at the
        later piece's time (no byte is replayed before it was recorded)."""
        if not self._bytes or not frames:
            return tuple(frames)
        joined = b"".join(f.data for f in frames)
        ends = list(_accumulate(len(f.data) for f in frames))
        joins: set[int] = set()  # frame i is joined onto the frame before it
        for secret in self._bytes:
            at = joined.find(secret)
            while at >= 0:
                first, last = bisect.bisect_right(ends, at), bisect.bisect_right(ends, at + len(secret) - 1)
                joins.update(range(first + 1, last + 1))
                at = joined.find(secret, at + 1)
        merged: list[Frame] = []
        for i, frame in enumerate(frames):
            if i in joins and merged:
                merged[-1] = Frame(frame.t, merged[-1].data + frame.data)
            else:
                merged.append(frame)
        return tuple(Frame(f.t, self.bytes(f.data)) for f in merged)

    def recording(self, rec: Recording) -> Recording:
        req, resp = rec.request, rec.response
        request = replace(req, path=self.text(req.path), query=self.text(req.query),
                          headers=self.headers(req.headers), body=self.bytes(req.body))
        response = replace(resp, headers=self.headers(resp.headers),
                           frames=self.frames(resp.frames) if resp.frames is not None else None,
                           body=self.bytes(resp.body) if resp.body is not None else None)
        return Recording(request, response)


def _accumulate(sizes: Iterable[int]) -> Iterable[int]:
    total = 0
    for size in sizes:
        total += size
        yield total


def file_name(wall: float, seq: int, method: str, path: str) -> str:
    """``20261129T183012.123Z-0007-POST-v1_chat_completions.json``: sorts by time (UTC, ms), then
    by arrival within the process, and says what it holds."""
    ms = round(wall * 1000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
    slug = _SLUG.sub("_", path.strip("/"))[:SLUG_MAX].strip("._") or "root"
    verb = _SLUG.sub("_", method.upper()) or "GET"
    return f"{stamp}-{seq:04d}-{verb}-{slug}{SUFFIX}"


def dumps(rec: Recording) -> str:
    """The file's text: indented, keys in the order SPEC gives, one line per header and frame."""
    return _format(rec.to_json(), "") + "\n"


def _format(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict) and _nested(value):
        items = [f"{inner}{json.dumps(k)}: {_format(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and _nested(value):
        return "[\n" + ",\n".join(inner + _format(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _nested(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a container is laid out over lines: one that holds containers (a header pair or a
    frame, which hold only scalars, take one line; ``{"base64": ...}`` counts as a scalar)."""
    values = value.values() if isinstance(value, dict) else value
    return any(isinstance(v, dict | list) and not _is_base64(v) for v in values)


def _is_base64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"base64"}


def write_atomic(directory: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``directory/name`` whole or not at all: a temp file in the same directory,
    then ``os.replace``. A name already taken (another process, the same millisecond and sequence)
    gets ``-2``, ``-3``... No fsync: a recording is a development artefact, and the rename already
    guarantees that no reader sees a partial file."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMP_PREFIX}{name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        target = directory / name
        n = 1
        while target.exists():
            n += 1
            target = directory / f"{name.removesuffix(SUFFIX)}-{n}{SUFFIX}"
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def load_file(path: Path) -> Recording:
    """One recording; raises ``ConfigError`` naming the file and the key that is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(str(path), "", f"cannot read: {getattr(e, 'strerror', None) or e}")]) from None
    try:
        return Recording.from_json(json.loads(text))
    except json.JSONDecodeError as e:
        raise ConfigError([Problem(str(path), "", f"invalid JSON: {e}")]) from None
    except RecordingError as e:
        raise ConfigError([Problem(str(path), e.loc, e.message)]) from None


def is_recording_name(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(TEMP_PREFIX)


def load_dir(directory: Path) -> list[tuple[str, Recording]]:
    """Every recording in ``directory`` (not its subdirectories), oldest first (by name); raises
    ``ConfigError`` with one problem per bad file, all at once."""
    if not directory.is_dir():
        raise ConfigError([Problem(str(directory), "", "not a directory")])
    out: list[tuple[str, Recording]] = []
    problems: list[Problem] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if not is_recording_name(path.name) or not path.is_file():
            continue
        try:
            out.append((path.name, load_file(path)))
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return out
