"""Inbound auth: the client must present one of the configured tokens, compared in constant time."""

from __future__ import annotations

import hmac

from multidict import CIMultiDictProxy

from .errors import Unauthorized


def presented_token(header: str, value: str | None) -> str | None:
    """The token in the header: after ``Bearer`` for Authorization, the bare value otherwise."""
    if value is None:
        return None
    if header.lower() == "authorization":
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return value.strip()


def check(header: str, tokens: tuple[bytes, ...], headers: CIMultiDictProxy[str], route: str | None) -> None:
    """Raise 401 unless the request carries one of ``tokens`` in ``header``."""
    token = presented_token(header, headers.get(header))
    matched = False
    if token is not None:
        candidate = token.encode()
        for expected in tokens:  # every token is compared, so timing tells nothing about which matched
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        reason = "missing" if token is None else "wrong"
        raise Unauthorized(f"{reason} token in {header}", route=route,
                           headers={"WWW-Authenticate": "Bearer"})
