"""API keys: which keys are accepted, and whether an Authorization header carries one.

Why constant-time: comparing a guessed key with `==` leaks, through timing, how many leading
characters were right. Every configured key is compared (no early exit), so the time does not
say which key, if any, matched either.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from server.core.config import Settings


def load_api_keys(settings: Settings) -> tuple[bytes, ...]:
    """All accepted keys: `api_key`, the comma list `api_keys`, and the lines of
    `api_key_file`. Empty means the gateway is open (no authentication)."""
    keys: list[str] = []
    if settings.api_key:
        keys.append(settings.api_key)
    if settings.api_keys:
        keys += settings.api_keys.split(",")
    if settings.api_key_file is not None:
        keys += _read_key_file(settings.api_key_file)
    return tuple(dict.fromkeys(k.strip().encode() for k in keys if k.strip()))


def _read_key_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines]


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


def is_authorized(authorization: bytes | None, keys: tuple[bytes, ...]) -> bool:
    token = bearer_token(authorization)
    if token is None:
        return False
    matches = [hmac.compare_digest(token, key) for key in keys]  # all of them, no short cut
    return any(matches)
