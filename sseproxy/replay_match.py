"""Sans-io: which recording answers a request, whose turn it is, and what is nearest on a miss.

A request matches a recording by method, path, query and body. The query is compared as its
parameters in any order; a body that parses as JSON is compared as parsed JSON without the ignored
keys (at any depth, inside lists too); any other body byte for byte. Several recordings of one
request are served in turn, oldest first, and then again from the first: a UI test that runs a
flow twice, or a page that reloads, keeps getting answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any
from urllib.parse import parse_qsl

from .recording import Recording

NEAREST = 3          # file names offered on a miss
DIFFERENCES = 5      # differing fields named on a miss
_COMPARED = 4096     # characters of a body compared when ranking the nearest (bounds the time a miss takes)
_NOT_JSON = object()


@dataclass(frozen=True)
class Key:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: str | bytes  # canonical JSON text, or the bytes of a body that is not JSON


def strip_fields(value: Any, ignore: frozenset[str]) -> Any:
    """``value`` without the keys in ``ignore``, in every object at any depth."""
    if isinstance(value, dict):
        return {k: strip_fields(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [strip_fields(v, ignore) for v in value]
    return value


def parse_json(body: bytes) -> Any:
    if not body.strip():
        return _NOT_JSON
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def differences(a: Any, b: Any, path: str, limit: int = DIFFERENCES) -> list[str]:
    """Where two parsed JSON values differ, as paths like ``body.messages[1].content``."""
    out: list[str] = []
    _diff(a, b, path, out, limit)
    return out


def _diff(a: Any, b: Any, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted({*a, *b}, key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out, limit)
            if len(out) >= limit:
                return
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            if i >= len(a) or i >= len(b):
                out.append(f"{path}[{i}]")
            else:
                _diff(a[i], b[i], f"{path}[{i}]", out, limit)
            if len(out) >= limit:
                return
    elif a != b or type(a) is not type(b):
        out.append(path)


@dataclass(frozen=True)
class Miss:
    message: str
    nearest: list[str]


class Index:
    """The recordings of a directory, keyed by request, each key's recordings served in turn."""

    def __init__(self, recordings: Iterable[tuple[str, Recording]] = (), ignore_fields: Iterable[str] = ()):
        self.ignore = frozenset(ignore_fields)
        self._all: list[tuple[str, Key, Recording]] = []
        self._by_key: dict[Key, list[tuple[str, Recording]]] = {}
        self._turn: dict[Key, int] = {}
        for name, recording in sorted(recordings, key=lambda r: r[0]):
            self.add(name, recording)

    def __len__(self) -> int:
        return len(self._all)

    @property
    def requests(self) -> int:
        return len(self._by_key)

    @property
    def recordings(self) -> list[tuple[str, Recording]]:
        """Every recording held, by name, in the order they were added."""
        return [(name, recording) for name, _, recording in self._all]

    def key(self, method: str, path: str, query: str, body: bytes) -> Key:
        parsed = parse_json(body)
        canonical: str | bytes = body
        if parsed is not _NOT_JSON:
            try:
                canonical = json.dumps(strip_fields(parsed, self.ignore), sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False)
            except RecursionError:  # nested deeper than Python recurses: compared byte for byte
                canonical = body
        return Key(method.upper(), path, tuple(sorted(parse_qsl(query, keep_blank_values=True))), canonical)

    def add(self, name: str, recording: Recording) -> None:
        """One more recording; it takes its turn after those of the same request already held."""
        req = recording.request
        key = self.key(req.method, req.path, req.query, req.body)
        self._all.append((name, key, recording))
        self._by_key.setdefault(key, []).append((name, recording))

    def next(self, key: Key) -> tuple[str, Recording] | None:
        """The recording whose turn it is for this request, or ``None``."""
        served = self._by_key.get(key)
        if not served:
            return None
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return served[turn % len(served)]

    def miss(self, key: Key, method: str, path: str, query: str, body: bytes) -> Miss:
        """What to tell a request that matched nothing: the nearest recordings (same method and
        path first, then same path, then the most alike), and how the nearest differs."""
        target = f"{key.method} {path}?{query}"
        body_text = _text(key.body)

        def rank(entry: tuple[str, Key, Recording]) -> tuple[int, float, float, str]:
            _name, k, rec = entry
            tier = 0 if (k.method, k.path) == (key.method, key.path) else 1 if k.path == key.path else 2
            line = SequenceMatcher(None, target, f"{k.method} {rec.request.path}?{rec.request.query}").ratio()
            alike = SequenceMatcher(None, body_text, _text(k.body)).quick_ratio()
            return tier, -line, -alike, entry[0]

        ranked = sorted(self._all, key=rank)[:NEAREST]
        message = f"no recording matches {key.method} {path}" + (f"?{query}" if query else "")
        if ranked and (ranked[0][1].method, ranked[0][1].path) == (key.method, key.path):
            name, nearest, recording = ranked[0]
            fields = self._differences(key, nearest, body, recording.request.body)
            if fields:
                message += (f"; the nearest, {name}, differs in {', '.join(fields)} (a field that changes from "
                            "run to run can be left out of matching with --ignore-field NAME)")
        elif not self._all:
            message += "; the recordings directory is empty"
        return Miss(message, [name for name, _, _ in ranked])

    def _differences(self, key: Key, nearest: Key, body: bytes, recorded: bytes) -> list[str]:
        fields = [f"query.{k}" for k in sorted({k for k, _ in {*key.query} ^ {*nearest.query}})]
        mine, theirs = parse_json(body), parse_json(recorded)
        if isinstance(key.body, str) and isinstance(nearest.body, str):  # both parsed (and not too deep)
            fields += differences(strip_fields(mine, self.ignore), strip_fields(theirs, self.ignore), "body")
        elif key.body != nearest.body:
            fields.append("body")
        return fields[:DIFFERENCES]


def _text(body: str | bytes) -> str:
    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
    return text[:_COMPARED]
