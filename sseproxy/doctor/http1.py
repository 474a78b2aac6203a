"""A small HTTP/1.1 client side, sans-io: the request's bytes, and a response parser that is fed bytes
as they come off the socket and returns the body's pieces (chunked, Content-Length or read to close).

The doctor writes its own because it must see how the bytes arrived: a client library would hide
which socket read carried which event.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # bounds the bytes held while a response head (or a trailer) is incomplete
MAX_LINE = 4 * 1024  # bounds a chunk-size line


class ProtocolError(ValueError):
    """The response is not well-formed HTTP/1.1."""


@dataclass(frozen=True)
class Head:
    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The header's value, several joined with ", " as HTTP allows; None when absent."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def request_bytes(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """One request as it goes on the wire; ``headers`` are sent in order, exactly as given."""
    for name, value in headers:
        if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
            raise ValueError(f"{name}: {value!r} is not a valid header")
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ProtocolError(f"bad header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return Head(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", tuple(headers))


class ResponseParser:
    """Fed the response's bytes as they arrive; ``feed`` returns the body bytes they completed
    (de-chunked, still content-encoded). ``head`` is set once the head is whole; ``done`` once the
    body has ended by its own framing. Interim 1xx responses are skipped, as a browser does."""

    def __init__(self, method: str = "GET"):
        self.head: Head | None = None
        self.done = False
        self.framing = ""  # "chunked", "length", "close" or "none", once the head is known
        self._method = method.upper()
        self._buf = bytearray()
        self._remaining = 0  # bytes left in this chunk, or in a Content-Length body
        self._state = "head"  # head, size, data, data_end, trailer, length, close, done

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while self._buf and self._state != "done":
            if not self._step(out):
                break
        if self._state == "done":
            self.done = True
        return out

    def eof(self) -> bool:
        """The connection closed: True where that ends the body properly (a close-delimited one)."""
        if self._state == "close":
            self._state = "done"
            self.done = True
        return self.done

    def _step(self, out: list[bytes]) -> bool:
        """Advance one state; False when more bytes are needed."""
        state = self._state
        if state == "head":
            return self._read_head()
        if state in ("size", "trailer"):
            end = self._buf.find(b"\r\n")
            if end < 0:
                limit = MAX_LINE if state == "size" else MAX_HEAD
                if len(self._buf) > limit:
                    raise ProtocolError(f"chunk {'size line' if state == 'size' else 'trailer'} too long")
                return False
            line = bytes(self._buf[:end])
            del self._buf[:end + 2]
            if state == "trailer":
                if not line:
                    self._state = "done"
                return True
            try:
                self._remaining = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line: {line[:40]!r}") from None
            self._state = "data" if self._remaining else "trailer"
            return True
        if state == "data_end":
            if len(self._buf) < 2:
                return False
            if self._buf[:2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            del self._buf[:2]
            self._state = "size"
            return True
        if state == "close":  # the body runs until the connection closes
            out.append(bytes(self._buf))
            self._buf.clear()
            return True
        # "data" (in a chunk) or "length" (a Content-Length body)
        take = min(self._remaining, len(self._buf))
        out.append(bytes(self._buf[:take]))
        del self._buf[:take]
        self._remaining -= take
        if self._remaining == 0:
            self._state = "data_end" if state == "data" else "done"
        return True

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise ProtocolError(f"response head over {MAX_HEAD} bytes")
            return False
        head = parse_head(bytes(self._buf[:end]))
        del self._buf[:end + 4]
        if 100 <= head.status < 200 and head.status != 101:
            return True  # interim response (100 Continue, 103 Early Hints): the real one follows
        self.head = head
        self._state = self._body_state(head)
        return True

    def _body_state(self, head: Head) -> str:
        if self._method == "HEAD" or head.status in (204, 304) or head.status == 101:
            self.framing = "none"
            return "done"
        codings = [c.strip().lower() for c in (head.get("Transfer-Encoding") or "").split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            self.framing = "chunked"
            return "size"
        length = head.get("Content-Length")
        if length is not None and not codings:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ProtocolError(f"bad Content-Length: {length!r}")
            self._remaining = int(values.pop())
            self.framing = "length"
            return "length" if self._remaining else "done"
        self.framing = "close"
        return "close"
